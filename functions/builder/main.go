// Command builder is the Builder Lambda function: it turns a build request
// into labelled Talos snapshots on Hetzner Cloud. Outside Lambda it runs one
// request from flags or a JSON payload on stdin and follows its own
// continuations until done:
//
//	builder -version v1.13.9 [-arch amd64] [-schematic <64 hex>] [-force]
//	echo '{"version":"v1.13.9"}' | builder
//
// Under `sam local invoke` or `make invoke` (AWS_SAM_LOCAL=true) it is a
// Lambda function that follows its continuations in the same way, in the
// one invocation: there is no deployed Builder to continue in.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/function"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/invoke"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/metrics"
)

var version = "dev"

func main() { function.Main(run) }

func run(ctx context.Context, logger *slog.Logger) error {
	s, err := function.Load(ctx, version)
	if err != nil {
		return err
	}
	deps := build.Deps{Cloud: s.Cloud, Factory: s.Factory, Schematics: s.Schematics, Logger: logger}
	opts := function.BuildOptions(s.Config, s.Schematics.Configured())
	if !function.InLambda() {
		req, err := requestFromArgs(os.Args[1:], os.Stdin)
		if err != nil {
			return err
		}
		resp, err := build.New(deps, opts).RunUntilDone(ctx, req)
		if encErr := function.Print(resp); encErr != nil {
			return encErr
		}
		return err
	}
	// Metrics are log lines (pkg/metrics): CloudWatch Logs extracts them
	// from the function's log group, by the function's name.
	deps.Metrics = metrics.New(os.Getenv("AWS_LAMBDA_FUNCTION_NAME"))
	deps.Owner = func(ctx context.Context) string {
		if lc, ok := lambdacontext.FromContext(ctx); ok {
			return lc.AwsRequestID
		}
		return "unknown"
	}
	if function.LocalRun() {
		lambda.StartWithOptions(localHandler(build.New(deps, opts)), lambda.WithContext(ctx))
		return nil
	}
	api, err := invoke.NewAPI(ctx)
	if err != nil {
		return err
	}
	deps.Continuer = invoke.Function{API: api, Name: os.Getenv("AWS_LAMBDA_FUNCTION_NAME")}
	// A deployment is named after its Builder (build.DeploymentID); a local
	// or command-line run acts as no deployment, as an operator's would.
	opts.Deployment = build.DeploymentID(os.Getenv("AWS_LAMBDA_FUNCTION_NAME"), os.Getenv("AWS_REGION"))
	// Only the deployed Builder announces: a local or command-line run
	// must not start the automation of the account its credentials name.
	if deps.Announcer, err = function.Announcer(ctx, s.Config); err != nil {
		return err
	}
	lambda.StartWithOptions(build.New(deps, opts).HandlePayload, lambda.WithContext(ctx))
	return nil
}

// localMargin is how long before the local invocation's deadline a local
// run stops, so that its response still reaches the caller.
const localMargin = 5 * time.Second

// localHandler handles a request the way the command line does: it follows
// the build's continuations in this process instead of invoking a function
// named AWS_LAMBDA_FUNCTION_NAME, which locally is the template's logical
// id (sam local) and would name a function in a real AWS account. The
// steps are budgeted as on the command line, without the invocation's
// deadline, which only ends the run: a step of a new invocation would get
// the whole function timeout, and the remaining time of this one would
// make every later hop fail as "too short".
func localHandler(b *build.Builder) func(context.Context, json.RawMessage) (build.Response, error) {
	return func(ctx context.Context, payload json.RawMessage) (build.Response, error) {
		r, err := build.ParseRequest(payload)
		if err != nil {
			return build.Response{}, err
		}
		lctx, cancel := function.WithoutDeadline(ctx, localMargin)
		defer cancel()
		resp, err := b.RunUntilDone(lctx, r)
		if cause := context.Cause(lctx); errors.Is(cause, function.ErrLocalTimeUp) {
			return resp, cause
		}
		return resp, err
	}
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
