// Command fn is the test function for package fakelambda: a Go Lambda built with
// -tags lambda.norpc whose behaviour is chosen by the payload.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/lambda/types"
)

// request selects a behaviour. Unused fields are ignored by each action.
type request struct {
	Action   string          `json:"action"`
	Message  string          `json:"message,omitempty"`
	Sleep    string          `json:"sleep,omitempty"`    // sleep, log: pause (per line for log)
	Lines    int             `json:"lines,omitempty"`    // log: number of lines
	Function string          `json:"function,omitempty"` // invoke: target, empty = self
	Payload  json.RawMessage `json:"payload,omitempty"`  // invoke: payload for the target
	Hops     int             `json:"hops,omitempty"`     // chain: self-invocations still to make
}

// response reports what the function saw.
type response struct {
	Message     string `json:"message,omitempty"`
	Function    string `json:"function"`
	RequestID   string `json:"request_id"`
	Deadline    string `json:"deadline,omitempty"`
	RemainingMS int64  `json:"remaining_ms"`
	Memory      string `json:"memory"`
	Endpoint    string `json:"endpoint"`
	Custom      string `json:"custom,omitempty"`
	PID         int    `json:"pid"`
}

func handle(ctx context.Context, req request) (response, error) {
	lc, _ := lambdacontext.FromContext(ctx)
	resp := response{
		Message:  req.Message,
		Function: lambdacontext.FunctionName,
		Memory:   os.Getenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
		Endpoint: os.Getenv("AWS_ENDPOINT_URL_LAMBDA"),
		Custom:   os.Getenv("CUSTOM"),
		PID:      os.Getpid(),
	}
	if lc != nil {
		resp.RequestID = lc.AwsRequestID
	}
	if dl, ok := ctx.Deadline(); ok {
		resp.Deadline = dl.UTC().Format(time.RFC3339Nano)
		resp.RemainingMS = time.Until(dl).Milliseconds()
	}
	pause, err := parseSleep(req.Sleep)
	if err != nil {
		return resp, err
	}

	switch req.Action {
	case "echo":
		return resp, nil
	case "error":
		return resp, errors.New(req.Message)
	case "panic":
		panic(req.Message)
	case "exit":
		fmt.Println("exiting")
		os.Exit(3)
	case "sleep":
		fmt.Printf("deadline %s, sleeping %s\n", resp.Deadline, pause)
		time.Sleep(pause) // deliberately ignores ctx: the runtime must be stopped from outside
		return resp, nil
	case "log":
		for i := 1; i <= req.Lines; i++ {
			fmt.Printf("line %d\n", i)
			time.Sleep(pause)
		}
		return resp, nil
	case "invoke":
		target := req.Function
		if target == "" {
			target = lambdacontext.FunctionName
		}
		return resp, invokeEvent(ctx, target, req.Payload)
	case "chain":
		fmt.Printf("hop %d\n", req.Hops)
		if req.Hops <= 0 {
			return resp, nil
		}
		next, err := json.Marshal(request{Action: "chain", Hops: req.Hops - 1})
		if err != nil {
			return resp, err
		}
		return resp, invokeEvent(ctx, lambdacontext.FunctionName, next)
	}
	return resp, fmt.Errorf("unknown action %q", req.Action)
}

func parseSleep(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("parse sleep: %w", err)
	}
	return d, nil
}

// invokeEvent invokes a function asynchronously through AWS_ENDPOINT_URL_LAMBDA,
// the way the real functions reach Lambda.
func invokeEvent(ctx context.Context, function string, payload []byte) error {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return fmt.Errorf("load aws config: %w", err)
	}
	out, err := awslambda.NewFromConfig(cfg).Invoke(ctx, &awslambda.InvokeInput{
		FunctionName:   aws.String(function),
		InvocationType: types.InvocationTypeEvent,
		Payload:        payload,
	})
	if err != nil {
		return fmt.Errorf("invoke %s: %w", function, err)
	}
	fmt.Printf("invoked %s: status %d\n", function, out.StatusCode)
	return nil
}

func main() {
	// Lets tests exercise a runtime that dies during init.
	if msg := os.Getenv("FN_EXIT_AT_INIT"); msg != "" {
		fmt.Println(msg)
		os.Exit(4)
	}
	lambda.Start(handle)
}
