package fakelambda

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/lambda/types"

	"github.com/hcloud-k8s/hcloud-k8s/infra/testenv"
)

// testBootstrap is testdata/fn built for Lambda by TestMain, unless rieErr
// says why the emulator cannot run here.
var (
	testBootstrap string
	rieErr        error
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if _, rieErr = findRIE(""); rieErr != nil {
		return m.Run() // each test skips (needRIE)
	}
	dir, err := os.MkdirTemp("", "lambda-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	testBootstrap = filepath.Join(dir, "bootstrap")
	build := exec.Command("go", "build", "-tags", "lambda.norpc", "-o", testBootstrap, "./testdata/fn")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build test function: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// fnResponse mirrors testdata/fn's response.
type fnResponse struct {
	Message     string `json:"message"`
	Function    string `json:"function"`
	RequestID   string `json:"request_id"`
	Deadline    string `json:"deadline"`
	RemainingMS int64  `json:"remaining_ms"`
	Memory      string `json:"memory"`
	Endpoint    string `json:"endpoint"`
	Custom      string `json:"custom"`
	PID         int    `json:"pid"`
}

// needRIE skips t when the Lambda Runtime Interface Emulator is not
// installed (make tools installs it); in CI it fails t.
func needRIE(t *testing.T) {
	t.Helper()
	testenv.Need(t, rieErr == nil, fmt.Sprintf("lambda tests need RIE: %v", rieErr))
}

// fnFunction is the test function with f's settings.
func fnFunction(f Function) Function {
	f.Bootstrap = testBootstrap
	return f
}

// startEmulator starts an emulator for fns and returns it with an SDK client.
func startEmulator(t *testing.T, fns map[string]Function) (*Emulator, *awslambda.Client) {
	t.Helper()
	needRIE(t)
	e := New(Options{Functions: fns})
	url, err := e.Start()
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return e, newClient(url)
}

// newClient is the real SDK client, as the functions build it.
func newClient(url string) *awslambda.Client {
	return awslambda.NewFromConfig(aws.Config{
		Region:       "eu-central-1",
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""),
		BaseEndpoint: aws.String(url),
	})
}

func invoke(t *testing.T, c *awslambda.Client, name, payload string, opts ...func(*awslambda.InvokeInput)) *awslambda.InvokeOutput {
	t.Helper()
	in := &awslambda.InvokeInput{FunctionName: aws.String(name), Payload: []byte(payload)}
	for _, o := range opts {
		o(in)
	}
	out, err := c.Invoke(t.Context(), in)
	if err != nil {
		t.Fatalf("invoke %s %s: %v", name, payload, err)
	}
	return out
}

func asEvent(in *awslambda.InvokeInput)  { in.InvocationType = types.InvocationTypeEvent }
func withTail(in *awslambda.InvokeInput) { in.LogType = types.LogTypeTail }

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

func waitIdle(t *testing.T, e *Emulator) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := e.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processGone reports whether pid no longer runs (absent or a zombie).
func processGone(pid int) bool {
	p, err := readProc(pid)
	if errors.Is(err, os.ErrNotExist) {
		return true
	}
	return err == nil && (p.state == 'Z' || p.state == 'X')
}
