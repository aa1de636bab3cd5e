// Command poller is the Poller Lambda function: on a schedule it keeps the
// project's Talos snapshots in step with the releases of siderolabs/talos
// (payload: any scheduled event, or {"dry_run":true}). Before the stack is
// deleted, {"teardown":true} deletes this deployment's build servers and
// lease keys and reports what remains. Outside Lambda it polls (or tears
// down) once and prints the report:
//
//	poller [-dry-run] [-teardown]
package main

import (
	"context"
	"encoding/json"
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

// errNoBuilder refuses a poll that may start builds when no Builder can be
// invoked; a dry run or a teardown needs none.
var errNoBuilder = errors.New("BUILDER_FUNCTION_NAME: is required to start builds (a dry run or a teardown needs none)")

// errLocalBuilder refuses the same in a local run that would invoke a
// deployed function: `sam local` resolves the template's
// ${AWS::StackName}-builder to local-builder, a name in the real account.
var errLocalBuilder = errors.New("a local run (AWS_SAM_LOCAL=true) starts builds only through a local Lambda " +
	"endpoint (AWS_ENDPOINT_URL_LAMBDA), never in an AWS account; use a dry run, or run the Builder locally")

func run(ctx context.Context, logger *slog.Logger) error {
	inLambda := function.InLambda()
	fs := flag.NewFlagSet("poller", flag.ContinueOnError)
	dryRun := fs.Bool("dry-run", false, "report the plan (or the teardown) without acting")
	teardown := fs.Bool("teardown", false, "delete this deployment's build servers and lease keys; snapshots are kept")
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
	opts, err := function.PollOptions(cfg, s.Schematics.Configured())
	if err != nil {
		return err
	}
	if inLambda && !function.LocalRun() {
		// The deployment is named after its Builder, which the Builder
		// knows as its own name; a local or command-line run acts as no
		// deployment, as an operator's would.
		opts.Deployment = build.DeploymentID(cfg.BuilderFunctionName, os.Getenv("AWS_REGION"))
	}
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
	noBuilder := errNoBuilder
	switch {
	case cfg.BuilderFunctionName == "":
	case function.LocalRun() && os.Getenv("AWS_ENDPOINT_URL_LAMBDA") == "":
		noBuilder = errLocalBuilder
	default:
		api, err := invoke.NewAPI(ctx)
		if err != nil {
			return err
		}
		fn := invoke.Function{API: api, Name: cfg.BuilderFunctionName}
		deps.Builder = poll.InvokerFunc(func(ctx context.Context, r build.Request) error { return fn.Async(ctx, r) })
	}
	poller := poll.New(deps, opts)
	if inLambda {
		lambda.StartWithOptions(handler(poller, deps.Builder != nil, noBuilder), lambda.WithContext(ctx))
		return nil
	}
	var rep any
	switch {
	case *teardown:
		rep, err = poller.Teardown(ctx, *dryRun)
	case !*dryRun && deps.Builder == nil:
		return noBuilder
	default:
		rep, err = poller.Run(ctx, *dryRun)
	}
	if encErr := function.Print(rep); encErr != nil {
		return encErr
	}
	return err
}

// handler is the Lambda handler: a teardown, a dry run, or a poll, which
// is refused before anything is read when it could not start its builds.
func handler(p *poll.Poller, canBuild bool, noBuilder error) func(context.Context, json.RawMessage) (any, error) {
	return func(ctx context.Context, payload json.RawMessage) (any, error) {
		teardown, dryRun, err := poll.ParseTeardown(payload)
		if err != nil {
			return nil, err
		}
		if teardown {
			return p.Teardown(ctx, dryRun)
		}
		if dryRun, err = poll.ParsePayload(payload); err != nil {
			return nil, err
		}
		if !dryRun && !canBuild {
			return nil, noBuilder
		}
		return p.Run(ctx, dryRun)
	}
}
