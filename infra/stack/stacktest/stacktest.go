// Package stacktest is the one harness of the tests on the local world
// (infra/stack): it starts the world for a test, builds the functions'
// bootstraps once per test binary, deploys them under the Lambda emulator,
// invokes them as Lambda's clients do and waits until they are idle, all
// with one set of fast timings. Tests that start the local world are the
// end-to-end tier: -short skips them and they need root (infra/testenv).
package stacktest

import (
	"cmp"
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/lambda/types"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakelambda"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
	"github.com/hcloud-k8s/hcloud-k8s/infra/testenv"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
)

// Timings is the Builder's configuration in every test on the local world:
// its steps and waits cut from minutes to seconds, to match the world's
// quick actions and boots (infra/stack's defaults). A test sets on top only
// what it tests.
func Timings() map[string]string {
	return map[string]string{
		"STEP_TIMEOUT":    "2s",
		"INSTALL_TIMEOUT": "30s",
		"SNAPSHOT_WAIT":   "5s",
		"LEASE_TTL":       "3s",
		"VERIFY_TIMEOUT":  "20s",
	}
}

// Cloud returns the client a function in the test's own process uses on
// st: it polls the world's quick actions and retries its faults every few
// milliseconds, where the real API needs a second.
func Cloud(st *stack.Stack) *cloud.Client {
	return cloud.New(cloud.Options{Token: st.Token, Endpoint: st.HCloudURL,
		PollInterval: 50 * time.Millisecond, RetryBase: 10 * time.Millisecond})
}

// Start starts the local world with o for t and stops it when t ends. It
// skips t in -short mode and without root (testenv.NeedLocalWorld).
func Start(t testing.TB, o stack.Options) *stack.Stack {
	t.Helper()
	testenv.NeedLocalWorld(t)
	st, err := stack.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// Function is a function to deploy on the local world.
type Function struct {
	// Package is its main package, e.g. "./functions/builder".
	Package string
	// Env is its configuration on top of the stack's and Timings; ""
	// unsets a variable.
	Env map[string]string
	// Timeout is the function's timeout; default one minute.
	Timeout  time.Duration
	PoolSize int
}

// World is the local world with functions deployed under the Lambda
// emulator.
type World struct {
	Stack  *stack.Stack
	Lambda *fakelambda.Emulator
	// API is an aws-sdk-go-v2 client of the emulator, as the functions'
	// own clients are.
	API *awslambda.Client

	t testing.TB
}

// Deploy runs fns on st under the Lambda emulator, which it stops when t
// ends. Every function gets the stack's configuration, Timings and its Env,
// as template.yaml's Globals give both functions the same configuration.
func Deploy(t testing.TB, st *stack.Stack, fns map[string]Function) *World {
	t.Helper()
	lambdaFns := make(map[string]fakelambda.Function, len(fns))
	for name, fn := range fns {
		env := Timings()
		maps.Copy(env, fn.Env)
		lambdaFns[name] = fakelambda.Function{Bootstrap: Bootstrap(t, fn.Package), Env: env,
			Timeout: cmp.Or(fn.Timeout, time.Minute), PoolSize: fn.PoolSize}
	}
	emu, err := st.StartLambda(lambdaFns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	return &World{Stack: st, Lambda: emu, API: stack.LambdaClient(emu), t: t}
}

// Invoke invokes fn synchronously with payload and returns its response;
// failed is the message of its function error, "" if it has none.
func (w *World) Invoke(fn, payload string) (out []byte, failed string) {
	w.t.Helper()
	res, err := w.API.Invoke(context.Background(), &awslambda.InvokeInput{
		FunctionName: aws.String(fn), Payload: []byte(payload)})
	if err != nil {
		w.t.Fatalf("invoke %s %s: %v", fn, payload, err)
	}
	if res.FunctionError == nil {
		return res.Payload, ""
	}
	var e struct {
		ErrorMessage string `json:"errorMessage"`
	}
	json.Unmarshal(res.Payload, &e) // a payload of another shape still fails
	return res.Payload, cmp.Or(e.ErrorMessage, *res.FunctionError)
}

// InvokeAsync invokes fn with payload as an Event, as the functions invoke
// the Builder.
func (w *World) InvokeAsync(fn, payload string) {
	w.t.Helper()
	if _, err := w.API.Invoke(context.Background(), &awslambda.InvokeInput{
		FunctionName: aws.String(fn), Payload: []byte(payload), InvocationType: types.InvocationTypeEvent,
	}); err != nil {
		w.t.Fatalf("invoke %s %s as an event: %v", fn, payload, err)
	}
}

// WaitIdle waits until no invocation runs or waits for a retry, for three
// minutes at most.
func (w *World) WaitIdle() {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := w.Lambda.WaitIdle(ctx); err != nil {
		w.t.Fatalf("lambda not idle: %v", err)
	}
}

// LocalEnv is the environment of a local run (make invoke) of bootstrap on
// st: the stack's configuration, Timings, the prebuilt bootstrap and AWS
// settings that reach nothing real.
func LocalEnv(st *stack.Stack, bootstrap string) map[string]string {
	env := st.Env()
	maps.Copy(env, Timings())
	maps.Copy(env, map[string]string{
		"BOOTSTRAP":                 bootstrap,
		"AWS_ACCESS_KEY_ID":         "local",
		"AWS_SECRET_ACCESS_KEY":     "local",
		"AWS_REGION":                "eu-central-1",
		"AWS_EC2_METADATA_DISABLED": "true",
	})
	return env
}

// Make runs make with args as a user would (stack.RunMake), for two
// minutes at most, and returns stdout, stderr and make's exit status.
func Make(t testing.TB, env map[string]string, args ...string) (stdout, stderr string, exit int) {
	t.Helper()
	return run(t, func(ctx context.Context) (string, string, int, error) { return stack.RunMake(ctx, env, args...) })
}

// Run runs a command or a script of the module (e.g. scripts/invoke) with
// args as a user would (stack.Run), for two minutes at most, and returns
// stdout, stderr and its exit status.
func Run(t testing.TB, env map[string]string, name string, args ...string) (stdout, stderr string, exit int) {
	t.Helper()
	return run(t, func(ctx context.Context) (string, string, int, error) { return stack.Run(ctx, env, name, args...) })
}

func run(t testing.TB, f func(context.Context) (string, string, int, error)) (stdout, stderr string, exit int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stdout, stderr, exit, err := f(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return stdout, stderr, exit
}

// bootstraps are the functions' bootstraps of this test binary, by main
// package; Main removes them.
var bootstraps struct {
	mu    sync.Mutex
	main  bool   // Main runs the tests
	dir   string // holds them
	built map[string]built
}

type built struct {
	path string
	err  error
}

// Main runs the tests of a package that deploys functions and then
// removes their bootstraps: its TestMain is os.Exit(stacktest.Main(m)).
func Main(m *testing.M) int {
	bootstraps.mu.Lock()
	bootstraps.main = true
	bootstraps.mu.Unlock()
	code := m.Run()
	if bootstraps.dir != "" {
		os.RemoveAll(bootstraps.dir)
	}
	return code
}

// Bootstrap returns the bootstrap of a function's main package (e.g.
// "./functions/builder") for this machine, built on first use, once per
// test binary: a test that does not start the local world builds nothing.
func Bootstrap(t testing.TB, pkg string) string {
	t.Helper()
	bootstraps.mu.Lock()
	defer bootstraps.mu.Unlock()
	if !bootstraps.main {
		t.Fatal("stacktest.Bootstrap: the package's TestMain must run its tests with stacktest.Main, which removes the bootstraps")
	}
	b, ok := bootstraps.built[pkg]
	if !ok {
		if bootstraps.dir == "" {
			dir, err := os.MkdirTemp("", "hcloud-k8s-bootstraps-")
			if err != nil {
				t.Fatal(err)
			}
			bootstraps.dir, bootstraps.built = dir, map[string]built{}
		}
		b.path, b.err = stack.BuildBootstrap(pkg, filepath.Join(bootstraps.dir, filepath.Base(pkg)))
		bootstraps.built[pkg] = b
	}
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}
