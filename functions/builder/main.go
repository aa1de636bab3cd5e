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
	"flag"
	"io"
	"log/slog"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/function"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/invoke"
)

var version = "dev"

func main() { function.Main(run) }

func run(ctx context.Context, logger *slog.Logger) error {
	s, err := function.Load(ctx, version)
	if err != nil {
		return err
	}
	deps := build.Deps{Cloud: s.Cloud, Factory: s.Factory, Schematics: s.Schematics, Logger: logger}
	opts := build.OptionsFrom(s.Config, s.Schematics.Configured())
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
	api, err := invoke.NewAPI(ctx)
	if err != nil {
		return err
	}
	deps.Continuer = invoke.Function{API: api, Name: os.Getenv("AWS_LAMBDA_FUNCTION_NAME")}
	opts.Deployment = build.DeploymentID(os.Getenv("AWS_LAMBDA_FUNCTION_NAME"), os.Getenv("AWS_REGION"))
	deps.Owner = func(ctx context.Context) string {
		if lc, ok := lambdacontext.FromContext(ctx); ok {
			return lc.AwsRequestID
		}
		return "unknown"
	}
	lambda.StartWithOptions(build.New(deps, opts).HandlePayload, lambda.WithContext(ctx))
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
