// Package function is what the Builder and the Poller share around their
// handlers: logging (Lambda's JSON logger in Lambda, JSON on stderr
// outside), signals, and the configuration with its tokens read from their
// secrets, mapped to the options of pkg/build and pkg/poll.
package function

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/aws/aws-lambda-go/lambdacontext"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/config"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/secret"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// InLambda tells whether the process runs as a Lambda function rather than
// from the command line.
func InLambda() bool { return os.Getenv("AWS_LAMBDA_RUNTIME_API") != "" }

// Main sets up logging and signal handling and runs run. An error ends the
// process with status 1.
func Main(run func(ctx context.Context, logger *slog.Logger) error) {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if InLambda() {
		logger = lambdacontext.NewLogger()
	}
	slog.SetDefault(logger)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, logger)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// Setup is what both functions start from.
type Setup struct {
	Config  config.Config
	Factory *talos.Factory
	// Schematics are the configured IDs plus the customization's, which
	// is resolved when first needed: a factory that does not answer
	// cannot keep a function from starting, or from cleaning up.
	Schematics *build.SchematicSet
	Cloud      *cloud.Client
}

// Load reads and validates the configuration, with the tokens from their
// secrets, and makes the Hetzner and factory clients; it asks neither.
// version goes into the Hetzner client's User-Agent.
func Load(ctx context.Context, version string) (Setup, error) {
	secrets, err := secret.NewReader(ctx)
	if err != nil {
		return Setup{}, err
	}
	cfg, err := config.Load(ctx, secrets)
	if err != nil {
		return Setup{}, err
	}
	factory := &talos.Factory{BaseURL: cfg.FactoryURL}
	return Setup{
		Config: cfg, Factory: factory, Schematics: SchematicSet(cfg, factory),
		Cloud: cloud.New(cloud.Options{Token: cfg.HCloudToken, Endpoint: cfg.HCloudEndpoint, Version: version}),
	}, nil
}

// Print writes v as indented JSON to stdout: a command-line run's result.
func Print(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
