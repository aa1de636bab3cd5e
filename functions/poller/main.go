// Command poller is the Poller Lambda function: on a schedule it keeps the
// project's Talos snapshots in step with the releases of siderolabs/talos
// (payload: any scheduled event, or {"dry_run":true}). Outside Lambda it
// polls once and prints the report:
//
//	poller [-dry-run]
package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"os"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/function"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/invoke"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/poll"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/release"
)

var version = "dev"

func main() { function.Main(run) }

func run(ctx context.Context, logger *slog.Logger) error {
	inLambda := function.InLambda()
	fs := flag.NewFlagSet("poller", flag.ContinueOnError)
	dryRun := fs.Bool("dry-run", false, "report the plan without acting")
	if !inLambda {
		if err := fs.Parse(os.Args[1:]); err != nil {
			return err
		}
	}
	s, err := function.Load(ctx, version)
	if err != nil {
		return err
	}
	cfg := s.Config
	opts, err := poll.OptionsFrom(cfg, s.Schematics.Configured())
	if err != nil {
		return err
	}
	// The deployment is named after its Builder, which the Builder knows
	// as its own name.
	opts.Deployment = build.DeploymentID(cfg.BuilderFunctionName, os.Getenv("AWS_REGION"))
	releases, err := release.New(release.Options{BaseURL: cfg.GitHubAPIURL, Token: cfg.GitHubToken, Logger: logger})
	if err != nil {
		return err
	}
	deps := poll.Deps{
		Releases:   releases,
		Cloud:      s.Cloud,
		Factory:    s.Factory,
		Schematics: s.Schematics,
		Logger:     logger,
	}
	if inLambda || !*dryRun {
		if cfg.BuilderFunctionName == "" {
			return errors.New("BUILDER_FUNCTION_NAME: is required to start builds (a dry run needs none)")
		}
		api, err := invoke.NewAPI(ctx)
		if err != nil {
			return err
		}
		fn := invoke.Function{API: api, Name: cfg.BuilderFunctionName}
		deps.Builder = poll.InvokerFunc(func(ctx context.Context, r build.Request) error { return fn.Async(ctx, r) })
	}
	poller := poll.New(deps, opts)
	if inLambda {
		lambda.StartWithOptions(poller.HandlePayload, lambda.WithContext(ctx))
		return nil
	}
	rep, err := poller.Run(ctx, *dryRun)
	if encErr := function.Print(rep); encErr != nil {
		return encErr
	}
	return err
}
