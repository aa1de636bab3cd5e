// Command poller is the Poller Lambda function: on a schedule it keeps the
// project's Talos snapshots in step with the releases of siderolabs/talos
// (payload: any scheduled event, or {"dry_run":true}). Outside Lambda it
// polls once and prints the report:
//
//	poller [-dry-run]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
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
	"github.com/hcloud-k8s/hcloud-k8s/pkg/poll"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/release"
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
	fs := flag.NewFlagSet("poller", flag.ContinueOnError)
	dryRun := fs.Bool("dry-run", false, "report the plan without acting")
	if !inLambda {
		if err := fs.Parse(os.Args[1:]); err != nil {
			return err
		}
	}
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
	opts, err := poll.OptionsFrom(cfg, schematics)
	if err != nil {
		return err
	}
	releases, err := release.New(release.Options{BaseURL: cfg.GitHubAPIURL, Token: cfg.GitHubToken, Logger: logger})
	if err != nil {
		return err
	}
	deps := poll.Deps{
		Releases: releases,
		Cloud:    cloud.New(cloud.Options{Token: cfg.HCloudToken, Endpoint: cfg.HCloudEndpoint, Version: version}),
		Factory:  factory,
		Logger:   logger,
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
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if encErr := enc.Encode(rep); encErr != nil {
		return encErr
	}
	return err
}
