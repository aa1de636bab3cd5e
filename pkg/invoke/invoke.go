// Package invoke starts Lambda functions asynchronously: the Builder its own
// continuations, the Poller the builds it plans.
package invoke

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/lambda/types"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
)

// API is the part of the Lambda client used here.
type API interface {
	Invoke(ctx context.Context, in *lambda.InvokeInput, opts ...func(*lambda.Options)) (*lambda.InvokeOutput, error)
}

// NewAPI returns a Lambda client configured from the environment (region,
// credentials, and AWS_ENDPOINT_URL_LAMBDA for a local emulator).
func NewAPI(ctx context.Context) (API, error) {
	cfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	return lambda.NewFromConfig(cfg), nil
}

// Function is a Lambda function to invoke.
type Function struct {
	API  API
	Name string // name or ARN
}

// Async queues an invocation with payload encoded as JSON. Lambda answers
// 202 once it holds the event; the function runs later.
func (f Function) Async(ctx context.Context, payload any) error {
	b, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("invoke %s: %w", f.Name, err)
	}
	out, err := f.API.Invoke(ctx, &lambda.InvokeInput{
		FunctionName:   aws.String(f.Name),
		InvocationType: types.InvocationTypeEvent,
		Payload:        b,
	})
	if err != nil {
		return fmt.Errorf("invoke %s: %w", f.Name, err)
	}
	if out.StatusCode != 202 {
		return fmt.Errorf("invoke %s: status %d, want 202", f.Name, out.StatusCode)
	}
	return nil
}

// Continue has the Builder go on with r in a new invocation.
func (f Function) Continue(ctx context.Context, r build.Request) error {
	return f.Async(ctx, r)
}
