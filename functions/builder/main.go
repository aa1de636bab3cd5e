// Command builder is the Builder Lambda function: it turns a build request
// into labelled Talos snapshots on Hetzner Cloud. Outside Lambda it runs one
// request from flags or a JSON payload on stdin and follows its own
// continuations until done:
//
//	builder -version v1.13.9 [-arch amd64] [-schematic <64 hex>] [-force]
//	echo '{"version":"v1.13.9"}' | builder
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/config"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/invoke"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/secret"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

var version = "dev"

func main() {
	inLambda := os.Getenv("AWS_LAMBDA_RUNTIME_API") != ""
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if inLambda {
		logger = lambdacontext.NewLogger()
	}
	slog.SetDefault(logger)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, inLambda, logger); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(ctx context.Context, inLambda bool, logger *slog.Logger) error {
	secrets, err := secret.NewReader(ctx)
	if err != nil {
		return err
	}
	cfg, err := config.Load(ctx, secrets)
	if err != nil {
		return err
	}
	factory := &talos.Factory{BaseURL: cfg.FactoryURL}
	schematics, err := build.Schematics(ctx, cfg, factory)
	if err != nil {
		return err
	}
	deps := build.Deps{
		Cloud:   cloud.New(cloud.Options{Token: cfg.HCloudToken, Endpoint: cfg.HCloudEndpoint, Version: version}),
		Factory: factory,
		Logger:  logger,
	}
	if !inLambda {
		req, err := requestFromArgs(os.Args[1:], os.Stdin)
		if err != nil {
			return err
		}
		resp, err := build.New(deps, build.OptionsFrom(cfg, schematics)).RunUntilDone(ctx, req)
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if encErr := enc.Encode(resp); encErr != nil {
			return encErr
		}
		return err
	}
	api, err := invoke.NewAPI(ctx)
	if err != nil {
		return err
	}
	deps.Continuer = invoke.Function{API: api, Name: os.Getenv("AWS_LAMBDA_FUNCTION_NAME")}
	deps.Owner = func(ctx context.Context) string {
		if lc, ok := lambdacontext.FromContext(ctx); ok {
			return lc.AwsRequestID
		}
		return "unknown"
	}
	lambda.StartWithOptions(build.New(deps, build.OptionsFrom(cfg, schematics)).HandlePayload, lambda.WithContext(ctx))
	return nil
}

// requestFromArgs reads the request from flags, or from a JSON payload on
// stdin when no version flag is given.
func requestFromArgs(args []string, stdin io.Reader) (build.Request, error) {
	fs := flag.NewFlagSet("builder", flag.ContinueOnError)
	var r build.Request
	fs.StringVar(&r.Version, "version", "", "Talos version, e.g. v1.13.9")
	fs.StringVar(&r.Arch, "arch", "", "amd64 or arm64 (default: every configured one)")
	fs.StringVar(&r.Schematic, "schematic", "", "Image Factory schematic ID (default: the configured ones)")
	fs.BoolVar(&r.Force, "force", false, "rebuild even when the snapshot exists")
	if err := fs.Parse(args); err != nil {
		return r, err
	}
	if r.Version != "" {
		return r, nil
	}
	payload, err := io.ReadAll(io.LimitReader(stdin, build.MaxRequestBytes+1))
	if err != nil {
		return r, err
	}
	return build.ParseRequest(payload)
}
