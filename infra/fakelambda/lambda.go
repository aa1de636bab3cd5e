// Package fakelambda is a stand-in for AWS Lambda for tests and local runs: it
// runs functions' bootstrap binaries under the AWS Lambda Runtime Interface
// Emulator (RIE) behind the Lambda Invoke API, so that aws-sdk-go-v2's Lambda
// client (AWS_ENDPOINT_URL_LAMBDA pointing here) and the AWS CLI invoke them
// as they would in AWS.
//
// RIE serves one invocation at a time and crashes on overlapping ones, so
// every function gets a pool of RIE processes (its concurrency). On top of
// RIE the emulator adds what only the Lambda service does: the Event
// invocation queue with retries, Lambda's error shapes and headers, log
// tails, payload limits, and records of every attempt. For tests of resumable
// work it can kill an execution mid-way (KillOn, Kill).
//
// It serves only Invoke (functions are configured in Options, not over the
// API) and has no IAM, throttling, memory limits, destinations or event
// source mappings, and no Event queue beyond its own in-process one.
package fakelambda

import (
	"context"
	"errors"
	"fmt"
	"go/build"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Defaults, as in AWS unless noted.
const (
	DefaultTimeout    = 3 * time.Second
	DefaultMemoryMB   = 128
	DefaultPoolSize   = 2                      // emulator's choice: enough to see concurrency
	DefaultMaxRetries = 2                      // Event invocations: two more attempts
	DefaultRetryDelay = 200 * time.Millisecond // AWS waits about 1 and then 2 minutes
	DefaultRegion     = "eu-central-1"
	DefaultAccountID  = "123456789012"

	// MaxSyncPayload and MaxEventPayload are Lambda's request size quotas.
	MaxSyncPayload  = 6 * 1024 * 1024
	MaxEventPayload = 1024 * 1024 // raised from 256 KB in 2025
)

// Function configures one function.
type Function struct {
	// Bootstrap is the function's executable (Go, aws-lambda-go, -tags lambda.norpc).
	Bootstrap string
	// Env is the function's environment. The emulator's AWS_LAMBDA_*, AWS_REGION
	// and credential variables take precedence; AWS_ENDPOINT_URL_LAMBDA defaults
	// to the emulator's own URL.
	Env map[string]string
	// Timeout in whole seconds, 1s to 15m. Zero means DefaultTimeout.
	Timeout time.Duration
	// MemoryMB is reported to the function; it is not enforced.
	MemoryMB int
	// PoolSize is the maximum number of concurrent executions, each an RIE process.
	PoolSize int
	// MaxRetries is how often a failed Event invocation is retried, 0 to 2.
	// Nil means DefaultMaxRetries.
	MaxRetries *int
	// RetryDelay is the wait before the first retry; the second waits twice as long.
	RetryDelay time.Duration
}

// Options configures an Emulator.
type Options struct {
	Functions map[string]Function
	// Addr is the loopback address Start listens on; default 127.0.0.1:0.
	Addr string
	// RIE is the aws-lambda-rie binary; default: PATH, then $GOPATH/bin.
	RIE       string
	Region    string
	AccountID string
	// MaxSyncPayload and MaxEventPayload override the request size quotas.
	MaxSyncPayload  int
	MaxEventPayload int
	Logger          *slog.Logger
}

// function is a validated Function with its pool.
type function struct {
	name       string
	bootstrap  string
	env        map[string]string
	timeout    time.Duration
	memoryMB   int
	maxRetries int
	retryDelay time.Duration
	poolSize   int
	pool       *pool
}

// Emulator is a local Lambda service.
type Emulator struct {
	opts  Options
	log   *slog.Logger
	funcs map[string]*function

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	srv    *http.Server
	url    string
	wg     sync.WaitGroup // running handlers and Event invocations

	mu        sync.Mutex
	started   bool
	closed    bool
	active    int           // invocations queued, running or waiting to retry
	idle      chan struct{} // closed while active == 0
	records   []Invocation
	requests  []Request
	killRules map[string][]*killRule
}

// New returns an emulator for opts. Start validates the options.
func New(opts Options) *Emulator {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.Region == "" {
		opts.Region = DefaultRegion
	}
	if opts.AccountID == "" {
		opts.AccountID = DefaultAccountID
	}
	if opts.MaxSyncPayload == 0 {
		opts.MaxSyncPayload = MaxSyncPayload
	}
	if opts.MaxEventPayload == 0 {
		opts.MaxEventPayload = MaxEventPayload
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	idle := make(chan struct{})
	close(idle)
	return &Emulator{
		opts:      opts,
		log:       opts.Logger,
		ctx:       ctx,
		cancel:    cancel,
		idle:      idle,
		killRules: map[string][]*killRule{},
	}
}

// Start validates the options, listens on Addr and returns the endpoint URL
// (for AWS_ENDPOINT_URL_LAMBDA). RIE processes start lazily, on invocation.
func (e *Emulator) Start() (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started || e.closed {
		return "", errors.New("lambda emulator already started or closed")
	}
	rie, err := findRIE(e.opts.RIE)
	if err != nil {
		return "", err
	}
	host, _, err := net.SplitHostPort(e.opts.Addr)
	if err != nil {
		return "", fmt.Errorf("listen address %q: %w", e.opts.Addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("listen address %q: only loopback IPs allowed", e.opts.Addr)
	}
	funcs := map[string]*function{}
	for name, f := range e.opts.Functions {
		fn, err := newFunction(name, f)
		if err != nil {
			return "", err
		}
		funcs[name] = fn
	}
	ln, err := net.Listen("tcp", e.opts.Addr)
	if err != nil {
		return "", fmt.Errorf("listen on %s: %w", e.opts.Addr, err)
	}
	e.url = "http://" + ln.Addr().String()
	for _, fn := range funcs {
		fn.pool = newPool(startOptions{
			rie:       rie,
			fn:        fn,
			env:       e.environment(fn),
			log:       e.log,
			matchKill: e.matchKill,
		})
	}
	e.funcs = funcs
	e.srv = &http.Server{Handler: e.routes(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := e.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			e.log.Error("lambda emulator stopped serving", "err", err)
		}
	}()
	e.started = true
	e.log.Info("lambda emulator listening", "url", e.url, "functions", slices.Sorted(maps.Keys(funcs)))
	return e.url, nil
}

// URL is the endpoint URL Start returned.
func (e *Emulator) URL() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.url
}

// Close stops the API, drops queued Event invocations, kills every process
// the emulator started (each RIE and its runtime, by process group) and waits
// for them.
func (e *Emulator) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	started := e.started
	e.mu.Unlock()

	e.cancel()
	if !started {
		return nil
	}
	err := e.srv.Close()
	for _, fn := range e.funcs {
		fn.pool.close()
	}
	e.wg.Wait()
	if err != nil {
		return fmt.Errorf("close lambda api: %w", err)
	}
	return nil
}

func newFunction(name string, f Function) (*function, error) {
	fn := &function{
		name:       name,
		env:        maps.Clone(f.Env),
		timeout:    f.Timeout,
		memoryMB:   f.MemoryMB,
		maxRetries: DefaultMaxRetries,
		retryDelay: f.RetryDelay,
	}
	if !functionName.MatchString(name) {
		return nil, fmt.Errorf("function %q: invalid name", name)
	}
	if fn.timeout == 0 {
		fn.timeout = DefaultTimeout
	}
	if fn.timeout < time.Second || fn.timeout > 15*time.Minute || fn.timeout%time.Second != 0 {
		return nil, fmt.Errorf("function %s: timeout %s is not whole seconds from 1s to 15m", name, fn.timeout)
	}
	if fn.memoryMB == 0 {
		fn.memoryMB = DefaultMemoryMB
	}
	if f.MaxRetries != nil {
		fn.maxRetries = *f.MaxRetries
	}
	if fn.maxRetries < 0 || fn.maxRetries > 2 {
		return nil, fmt.Errorf("function %s: max retries %d not in 0..2", name, fn.maxRetries)
	}
	if fn.retryDelay == 0 {
		fn.retryDelay = DefaultRetryDelay
	}
	fn.poolSize = f.PoolSize
	if fn.poolSize == 0 {
		fn.poolSize = DefaultPoolSize
	}
	if fn.poolSize < 0 {
		return nil, fmt.Errorf("function %s: pool size %d", name, fn.poolSize)
	}
	bootstrap, err := filepath.Abs(f.Bootstrap)
	if err != nil {
		return nil, fmt.Errorf("function %s: bootstrap path: %w", name, err)
	}
	st, err := os.Stat(bootstrap)
	if err != nil {
		return nil, fmt.Errorf("function %s: bootstrap: %w", name, err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return nil, fmt.Errorf("function %s: bootstrap %s is not an executable file", name, bootstrap)
	}
	fn.bootstrap = bootstrap
	return fn, nil
}

// environment is what each RIE process of fn gets; RIE hands it on to the runtime.
func (e *Emulator) environment(fn *function) []string {
	env := map[string]string{
		"PATH":                    os.Getenv("PATH"),
		"TZ":                      ":UTC",
		"LANG":                    "en_US.UTF-8",
		"AWS_ENDPOINT_URL_LAMBDA": e.url,
	}
	maps.Copy(env, fn.env)
	maps.Copy(env, map[string]string{
		"AWS_LAMBDA_FUNCTION_NAME":        fn.name,
		"AWS_LAMBDA_FUNCTION_TIMEOUT":     strconv.Itoa(int(fn.timeout / time.Second)),
		"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": strconv.Itoa(fn.memoryMB),
		"AWS_LAMBDA_FUNCTION_VERSION":     "$LATEST",
		"AWS_LAMBDA_LOG_GROUP_NAME":       "/aws/lambda/" + fn.name,
		"AWS_REGION":                      e.opts.Region,
		"AWS_DEFAULT_REGION":              e.opts.Region,
		// Dummy credentials: the emulator accepts any signature.
		"AWS_ACCESS_KEY_ID":     "AKIDLOCALLAMBDA",
		"AWS_SECRET_ACCESS_KEY": "local-lambda-secret",
		"AWS_SESSION_TOKEN":     "local-lambda-session",
	})
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// findRIE resolves the aws-lambda-rie binary: explicit path, PATH, $GOPATH/bin.
func findRIE(path string) (string, error) {
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			return "", fmt.Errorf("aws-lambda-rie: %w", err)
		}
		return path, nil
	}
	if p, err := exec.LookPath("aws-lambda-rie"); err == nil {
		return p, nil
	}
	for _, dir := range filepath.SplitList(build.Default.GOPATH) {
		p := filepath.Join(dir, "bin", "aws-lambda-rie")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("aws-lambda-rie not found in PATH or $GOPATH/bin; go install github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie@latest")
}
