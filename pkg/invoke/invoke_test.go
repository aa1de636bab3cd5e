package invoke

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/lambda/types"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
)

type fakeAPI struct {
	in     *lambda.InvokeInput
	status int32
	err    error
}

func (f *fakeAPI) Invoke(_ context.Context, in *lambda.InvokeInput, _ ...func(*lambda.Options)) (*lambda.InvokeOutput, error) {
	f.in = in
	return &lambda.InvokeOutput{StatusCode: f.status}, f.err
}

// The end-to-end tests invoke through the Lambda emulator; this one pins
// down the request and the answers that count as failures.
func TestContinue(t *testing.T) {
	tests := []struct {
		name   string
		status int32
		err    error
		want   string
	}{
		{name: "queued", status: 202},
		{name: "ran synchronously", status: 200, want: "status 200, want 202"},
		{name: "throttled", err: errors.New("TooManyRequestsException"), want: "invoke stack-builder: TooManyRequestsException"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api := &fakeAPI{status: tt.status, err: tt.err}
			err := Function{API: api, Name: "stack-builder"}.Continue(context.Background(),
				build.Request{Version: "v1.13.9", Arch: "arm64", Force: true})
			if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if *api.in.FunctionName != "stack-builder" || api.in.InvocationType != types.InvocationTypeEvent ||
				string(api.in.Payload) != `{"version":"v1.13.9","arch":"arm64","force":true}` {
				t.Errorf("request = %s %s %s", *api.in.FunctionName, api.in.InvocationType, api.in.Payload)
			}
		})
	}
}
