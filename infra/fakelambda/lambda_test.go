package fakelambda

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/lambda/types"
)

func TestRequestResponse(t *testing.T) {
	t.Parallel()
	// One execution only, so every case also proves the pool recovered
	// from the one before.
	e, c := startEmulator(t, map[string]Function{
		"fn": fnFunction(Function{Timeout: time.Second, MemoryMB: 256, PoolSize: 1, Env: map[string]string{"CUSTOM": "x"}}),
	})

	tests := []struct {
		name        string
		payload     string
		wantErrType string // empty: success
		wantErrMsg  string // substring
		wantTimeout bool
	}{
		{name: "echo", payload: `{"action":"echo","message":"hi"}`},
		{name: "handled error", payload: `{"action":"error","message":"boom"}`, wantErrType: "errorString", wantErrMsg: "boom"},
		{name: "panic", payload: `{"action":"panic","message":"oops"}`, wantErrType: "string", wantErrMsg: "oops"},
		{name: "runtime exit", payload: `{"action":"exit"}`, wantErrType: "Runtime.ExitError", wantErrMsg: "Error: Runtime exited with error: exit status 3"},
		{name: "timeout", payload: `{"action":"sleep","sleep":"3s"}`, wantErrType: "Sandbox.Timedout", wantErrMsg: "Error: Task timed out after 1.00 seconds", wantTimeout: true},
		{name: "echo after failures", payload: `{"action":"echo","message":"again"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := invoke(t, c, "fn", tt.payload)
			id, _ := awsmiddleware.GetRequestIDMetadata(out.ResultMetadata)
			if out.StatusCode != 200 || aws.ToString(out.ExecutedVersion) != "$LATEST" {
				t.Errorf("status %d, version %q; want 200, $LATEST", out.StatusCode, aws.ToString(out.ExecutedVersion))
			}
			recs := e.Invocations("fn")
			rec := recs[len(recs)-1]
			if rec.RequestID != id || rec.Type != RequestResponse || rec.Attempt != 1 || string(rec.Payload) != tt.payload {
				t.Errorf("record %+v does not match request %s", rec, id)
			}
			if rec.TimedOut != tt.wantTimeout {
				t.Errorf("TimedOut = %v, want %v", rec.TimedOut, tt.wantTimeout)
			}
			if want := int64(math.Ceil(float64(rec.Duration) / float64(time.Millisecond))); rec.BilledMS != max(want, 1) {
				t.Errorf("billed %d ms for %s", rec.BilledMS, rec.Duration)
			}

			if tt.wantErrType == "" {
				if out.FunctionError != nil {
					t.Fatalf("function error %q: %s", *out.FunctionError, out.Payload)
				}
				resp := decode[fnResponse](t, out.Payload)
				if resp.Function != "fn" || resp.Memory != "256" || resp.Custom != "x" || resp.Endpoint != e.URL() {
					t.Errorf("environment not passed on: %+v", resp)
				}
				if resp.RequestID != id {
					t.Errorf("function saw request id %q, API answered %q", resp.RequestID, id)
				}
				if resp.RemainingMS <= 500 || resp.RemainingMS > 1000 {
					t.Errorf("remaining %d ms of a 1 s timeout", resp.RemainingMS)
				}
				if rec.Failed() || string(rec.Result) != string(out.Payload) {
					t.Errorf("record result %s, error %q", rec.Result, rec.ErrorType)
				}
				return
			}
			if aws.ToString(out.FunctionError) != "Unhandled" {
				t.Fatalf("FunctionError = %v, want Unhandled (payload %s)", out.FunctionError, out.Payload)
			}
			got := decode[functionError](t, out.Payload)
			if got.ErrorType != tt.wantErrType || !strings.Contains(got.ErrorMessage, tt.wantErrMsg) {
				t.Errorf("payload %s; want type %s, message with %q", out.Payload, tt.wantErrType, tt.wantErrMsg)
			}
			if rec.ErrorType != got.ErrorType || rec.ErrorMessage != got.ErrorMessage {
				t.Errorf("record error %q %q, payload %s", rec.ErrorType, rec.ErrorMessage, out.Payload)
			}
		})
	}
	if n := len(e.Invocations("fn")); n != len(tests) {
		t.Errorf("%d records, want %d", n, len(tests))
	}
}

func TestInitFailure(t *testing.T) {
	t.Parallel()
	_, c := startEmulator(t, map[string]Function{
		"fn": fnFunction(Function{Env: map[string]string{"FN_EXIT_AT_INIT": "init boom"}}),
	})
	out := invoke(t, c, "fn", `{"action":"echo"}`, withTail)
	got := decode[functionError](t, out.Payload)
	if aws.ToString(out.FunctionError) != "Unhandled" || got.ErrorType != "Runtime.ExitError" ||
		!strings.Contains(got.ErrorMessage, "exit status 4") {
		t.Errorf("function error %v, payload %s", out.FunctionError, out.Payload)
	}
	tail, err := base64.StdEncoding.DecodeString(aws.ToString(out.LogResult))
	if err != nil || !strings.Contains(string(tail), "init boom") {
		t.Errorf("log tail %q (%v) lacks the init output", tail, err)
	}
}

func TestLogs(t *testing.T) {
	t.Parallel()
	e, c := startEmulator(t, map[string]Function{"fn": fnFunction(Function{})})

	tests := []struct {
		name      string
		lines     int
		wantWhole bool // the whole log fits into the 4 KB tail
	}{
		{name: "short", lines: 3, wantWhole: true},
		{name: "longer than the tail", lines: 600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := invoke(t, c, "fn", fmt.Sprintf(`{"action":"log","lines":%d}`, tt.lines), withTail)
			id, _ := awsmiddleware.GetRequestIDMetadata(out.ResultMetadata)
			tail, err := base64.StdEncoding.DecodeString(aws.ToString(out.LogResult))
			if err != nil {
				t.Fatal(err)
			}
			if len(tail) > 4096 {
				t.Errorf("tail is %d bytes", len(tail))
			}
			last := fmt.Sprintf("line %d\n", tt.lines)
			if !strings.Contains(string(tail), last) || !strings.Contains(string(tail), "REPORT RequestId: "+id) {
				t.Errorf("tail lacks %q or the REPORT line:\n%s", last, tail)
			}
			if got := strings.Contains(string(tail), "START RequestId: "+id); got != tt.wantWhole {
				t.Errorf("tail has START line: %v, want %v", got, tt.wantWhole)
			}

			logs := e.Logs(id)
			var lines []string
			for _, l := range logs {
				if strings.HasPrefix(l, "line ") {
					lines = append(lines, l)
				}
			}
			if len(lines) != tt.lines || lines[0] != "line 1" {
				t.Errorf("recorded %d function lines starting %q, want %d", len(lines), lines[0], tt.lines)
			}
			for _, l := range logs {
				if strings.Contains(l, "[DEBUG]") {
					t.Errorf("debug line recorded: %s", l)
				}
			}
		})
	}
}

func TestEventRunsInBackground(t *testing.T) {
	t.Parallel()
	e, c := startEmulator(t, map[string]Function{"fn": fnFunction(Function{})})

	start := time.Now()
	out := invoke(t, c, "fn", `{"action":"sleep","sleep":"500ms"}`, asEvent)
	if elapsed := time.Since(start); out.StatusCode != 202 || elapsed > 400*time.Millisecond {
		t.Fatalf("status %d after %s; want 202 at once", out.StatusCode, elapsed)
	}
	if n := len(e.Invocations("fn")); n != 0 {
		t.Fatalf("%d finished invocations right after queueing", n)
	}
	waitIdle(t, e)
	recs := e.Invocations("fn")
	if len(recs) != 1 || recs[0].Type != Event || recs[0].Failed() || recs[0].Duration < 500*time.Millisecond {
		t.Fatalf("records %+v; want one successful Event of at least 500ms", recs)
	}
	id, _ := awsmiddleware.GetRequestIDMetadata(out.ResultMetadata)
	if recs[0].RequestID != id {
		t.Errorf("request id %q, API answered %q", recs[0].RequestID, id)
	}
}

func TestEventRetries(t *testing.T) {
	t.Parallel()
	const delay = 50 * time.Millisecond
	tests := []struct {
		name       string
		maxRetries *int
		timeout    time.Duration
		payload    string
		want       int
	}{
		{name: "error, default retries", payload: `{"action":"error","message":"boom"}`, want: 3},
		{name: "error, no retries", maxRetries: new(0), payload: `{"action":"error","message":"boom"}`, want: 1},
		{name: "timeout, one retry", maxRetries: new(1), timeout: time.Second, payload: `{"action":"sleep","sleep":"2s"}`, want: 2},
		{name: "success", payload: `{"action":"echo"}`, want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, c := startEmulator(t, map[string]Function{
				"fn": fnFunction(Function{MaxRetries: tt.maxRetries, Timeout: tt.timeout, RetryDelay: delay}),
			})
			out := invoke(t, c, "fn", tt.payload, asEvent)
			id, _ := awsmiddleware.GetRequestIDMetadata(out.ResultMetadata)
			waitIdle(t, e)
			recs := e.Invocations("fn")
			if len(recs) != tt.want {
				t.Fatalf("%d attempts, want %d", len(recs), tt.want)
			}
			for i, rec := range recs {
				if rec.RequestID != id || rec.Attempt != i+1 {
					t.Errorf("attempt %d: request %s attempt %d", i+1, rec.RequestID, rec.Attempt)
				}
				if i > 0 {
					if gap := rec.Start.Sub(recs[i-1].End); gap < time.Duration(i)*delay {
						t.Errorf("retry %d after %s, want >= %s", i, gap, time.Duration(i)*delay)
					}
				}
			}
		})
	}
}

func TestConcurrency(t *testing.T) {
	t.Parallel()
	e, c := startEmulator(t, map[string]Function{"fn": fnFunction(Function{PoolSize: 2})})

	const calls = 5
	var wg sync.WaitGroup
	pids := make([]int, calls)
	start := time.Now()
	for i := range calls {
		wg.Go(func() {
			out := invoke(t, c, "fn", `{"action":"sleep","sleep":"300ms"}`)
			if out.FunctionError != nil {
				t.Errorf("call %d: %s", i, out.Payload)
				return
			}
			pids[i] = decode[fnResponse](t, out.Payload).PID
		})
	}
	wg.Wait()
	if elapsed := time.Since(start); elapsed < 900*time.Millisecond {
		t.Errorf("5 calls of 300ms on 2 executions took %s", elapsed)
	}
	slices.Sort(pids)
	if distinct := slices.Compact(pids); len(distinct) > 2 {
		t.Errorf("runtimes %v; want at most 2", distinct)
	}

	recs := e.Invocations("fn")
	peak := 0
	for _, a := range recs {
		overlap := 0
		for _, b := range recs {
			if !b.Start.After(a.Start) && b.End.After(a.Start) {
				overlap++
			}
		}
		peak = max(peak, overlap)
	}
	if len(recs) != calls || peak != 2 {
		t.Errorf("%d records with peak concurrency %d; want %d with 2", len(recs), peak, calls)
	}
}

func TestKillOn(t *testing.T) {
	t.Parallel()
	e, c := startEmulator(t, map[string]Function{"fn": fnFunction(Function{PoolSize: 1, RetryDelay: 20 * time.Millisecond})})

	t.Run("sync", func(t *testing.T) {
		killed := e.KillOn("fn", func(line string) bool { return line == "line 3" })
		out := invoke(t, c, "fn", `{"action":"log","lines":20,"sleep":"30ms"}`)
		select {
		case <-killed:
		case <-time.After(5 * time.Second):
			t.Fatal("KillOn channel not closed")
		}
		got := decode[functionError](t, out.Payload)
		if aws.ToString(out.FunctionError) != "Unhandled" || got.ErrorType != "Runtime.ExitError" ||
			!strings.HasSuffix(got.ErrorMessage, "Error: Runtime exited with error: signal: killed") {
			t.Fatalf("function error %v, payload %s", out.FunctionError, out.Payload)
		}
		recs := e.Invocations("fn")
		rec := recs[len(recs)-1]
		if !rec.Killed || !slices.Contains(rec.Logs, "line 3") || slices.Contains(rec.Logs, "line 20") {
			t.Errorf("killed %v, logs %q", rec.Killed, rec.Logs)
		}
		if out := invoke(t, c, "fn", `{"action":"echo"}`); out.FunctionError != nil {
			t.Errorf("next invocation failed: %s", out.Payload)
		}
	})

	t.Run("event retried", func(t *testing.T) {
		killed := e.KillOn("fn", func(line string) bool { return line == "line 2" })
		before := len(e.Invocations("fn"))
		invoke(t, c, "fn", `{"action":"log","lines":3}`, asEvent)
		waitIdle(t, e)
		<-killed
		recs := e.Invocations("fn")[before:]
		if len(recs) != 2 || !recs[0].Killed || recs[0].ErrorType != "Runtime.ExitError" || recs[1].Failed() || recs[1].Attempt != 2 {
			t.Fatalf("attempts %+v; want a killed one, then a successful retry", recs)
		}
		if !slices.Contains(recs[1].Logs, "line 3") {
			t.Errorf("retry logs %q", recs[1].Logs)
		}
	})
}

func TestKill(t *testing.T) {
	t.Parallel()
	e, c := startEmulator(t, map[string]Function{"fn": fnFunction(Function{Timeout: 10 * time.Second})})
	if n := e.Kill("fn"); n != 0 {
		t.Fatalf("killed %d executions with nothing running", n)
	}

	start := time.Now()
	done := make(chan *awslambda.InvokeOutput)
	go func() {
		out, err := c.Invoke(t.Context(), &awslambda.InvokeInput{
			FunctionName: aws.String("fn"), Payload: []byte(`{"action":"sleep","sleep":"8s"}`),
		})
		if err != nil {
			t.Error(err)
		}
		done <- out
	}()
	eventually(t, "a running execution to kill", func() bool { return e.Kill("fn") == 1 })
	out := <-done
	if out == nil {
		return
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("killed invocation returned after %s", elapsed)
	}
	if got := decode[functionError](t, out.Payload); got.ErrorType != "Runtime.ExitError" {
		t.Errorf("payload %s", out.Payload)
	}
}

func TestAPIErrors(t *testing.T) {
	t.Parallel()
	e, c := startEmulator(t, map[string]Function{"fn": fnFunction(Function{})})

	tests := []struct {
		name    string
		in      awslambda.InvokeInput
		check   func(error) bool
		wantErr string
	}{
		{
			name:    "unknown function",
			in:      awslambda.InvokeInput{FunctionName: aws.String("nope")},
			check:   func(err error) bool { var nf *types.ResourceNotFoundException; return errors.As(err, &nf) },
			wantErr: "Function not found: arn:aws:lambda:eu-central-1:123456789012:function:nope",
		},
		{
			name:  "unknown qualifier",
			in:    awslambda.InvokeInput{FunctionName: aws.String("fn"), Qualifier: aws.String("live")},
			check: func(err error) bool { var nf *types.ResourceNotFoundException; return errors.As(err, &nf) },
		},
		{
			name:  "sync payload over 6 MB",
			in:    awslambda.InvokeInput{FunctionName: aws.String("fn"), Payload: jsonOfSize(MaxSyncPayload + 1)},
			check: func(err error) bool { var tl *types.RequestTooLargeException; return errors.As(err, &tl) },
		},
		{
			name: "event payload over 1 MB",
			in: awslambda.InvokeInput{FunctionName: aws.String("fn"), InvocationType: types.InvocationTypeEvent,
				Payload: jsonOfSize(MaxEventPayload + 1)},
			check: func(err error) bool { var tl *types.RequestTooLargeException; return errors.As(err, &tl) },
		},
		{
			name:  "payload not JSON",
			in:    awslambda.InvokeInput{FunctionName: aws.String("fn"), Payload: []byte("{nope")},
			check: func(err error) bool { var ic *types.InvalidRequestContentException; return errors.As(err, &ic) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Invoke(t.Context(), &tt.in)
			if err == nil || !tt.check(err) {
				t.Fatalf("error %v (%T)", err, err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q lacks %q", err, tt.wantErr)
			}
		})
	}
	if n := len(e.Invocations("")); n != 0 {
		t.Errorf("%d invocations ran", n)
	}
}

func jsonOfSize(n int) []byte {
	return []byte(`"` + strings.Repeat("x", n-2) + `"`)
}

func TestFunctionNames(t *testing.T) {
	t.Parallel()
	e, c := startEmulator(t, map[string]Function{"fn": fnFunction(Function{})})
	for _, name := range []string{
		"fn",
		"fn:$LATEST",
		"123456789012:function:fn",
		"arn:aws:lambda:eu-central-1:123456789012:function:fn",
	} {
		out := invoke(t, c, name, `{}`, func(in *awslambda.InvokeInput) { in.InvocationType = types.InvocationTypeDryRun })
		if out.StatusCode != 204 {
			t.Errorf("%s: status %d, want 204", name, out.StatusCode)
		}
	}
	reqs := e.Requests()
	if len(reqs) != 4 || reqs[3].Function != "arn:aws:lambda:eu-central-1:123456789012:function:fn" || reqs[3].Type != DryRun {
		t.Errorf("request log %+v", reqs)
	}
	if n := len(e.Invocations("")); n != 0 {
		t.Errorf("dry runs ran %d invocations", n)
	}
}

func TestChainedEventInvokes(t *testing.T) {
	t.Parallel()
	e, c := startEmulator(t, map[string]Function{
		"a": fnFunction(Function{}),
		"b": fnFunction(Function{}),
	})

	t.Run("other function", func(t *testing.T) {
		out := invoke(t, c, "a", `{"action":"invoke","function":"arn:aws:lambda:eu-central-1:123456789012:function:b",
			"payload":{"action":"echo","message":"from a"}}`)
		if out.FunctionError != nil {
			t.Fatalf("a failed: %s", out.Payload)
		}
		waitIdle(t, e)
		recs := e.Invocations("b")
		if len(recs) != 1 || recs[0].Type != Event || recs[0].Failed() {
			t.Fatalf("b ran %+v", recs)
		}
		if got := decode[fnResponse](t, recs[0].Result); got.Message != "from a" {
			t.Errorf("b answered %s", recs[0].Result)
		}
	})

	t.Run("self", func(t *testing.T) {
		before := len(e.Invocations("a"))
		invoke(t, c, "a", `{"action":"chain","hops":3}`, asEvent)
		waitIdle(t, e)
		recs := e.Invocations("a")[before:]
		if len(recs) != 4 {
			t.Fatalf("%d links ran, want 4", len(recs))
		}
		// A link finishes after starting the next one, usually after it.
		slices.SortFunc(recs, func(a, b Invocation) int { return a.Start.Compare(b.Start) })
		for i, rec := range recs {
			if rec.Failed() || !slices.Contains(rec.Logs, fmt.Sprintf("hop %d", 3-i)) {
				t.Errorf("link %d: error %q, logs %q", i, rec.ErrorType, rec.Logs)
			}
		}
	})
}

func TestCloseEndsProcesses(t *testing.T) {
	t.Parallel()
	needRIE(t)
	e := New(Options{Functions: map[string]Function{"fn": fnFunction(Function{Timeout: 30 * time.Second})}})
	url, err := e.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() }) // on early failure; Close is idempotent
	c := newClient(url)
	// One idle execution and one busy with a long sleep.
	invoke(t, c, "fn", `{"action":"echo"}`)
	invoke(t, c, "fn", `{"action":"sleep","sleep":"20s"}`, asEvent)
	invoke(t, c, "fn", `{"action":"echo"}`)

	pool := e.funcs["fn"].pool
	var pids []int
	eventually(t, "two executions, one of them busy", func() bool {
		pool.mu.Lock()
		defer pool.mu.Unlock()
		pids = pids[:0]
		for inst := range pool.all {
			pids = append(pids, inst.cmd.Process.Pid)
			for _, p := range descendants(inst.cmd.Process.Pid) {
				pids = append(pids, p.pid)
			}
		}
		return len(pool.all) == 2 && len(pool.idle) == 1 && len(pids) >= 4
	})

	start := time.Now()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("close took %s", elapsed)
	}
	for _, pid := range pids {
		eventually(t, fmt.Sprintf("process %d to end", pid), func() bool { return processGone(pid) })
	}
	if _, err := c.Invoke(t.Context(), &awslambda.InvokeInput{FunctionName: aws.String("fn")}); err == nil {
		t.Error("invoke after close succeeded")
	}
}

func TestStartValidates(t *testing.T) {
	t.Parallel()
	needRIE(t)
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"missing bootstrap", Options{Functions: map[string]Function{"fn": {Bootstrap: "/nonexistent/bootstrap"}}}, "bootstrap"},
		{"fractional timeout", Options{Functions: map[string]Function{"fn": fnFunction(Function{Timeout: 1500 * time.Millisecond})}}, "timeout"},
		{"too many retries", Options{Functions: map[string]Function{"fn": fnFunction(Function{MaxRetries: new(3)})}}, "max retries"},
		{"bad name", Options{Functions: map[string]Function{"f:n": fnFunction(Function{})}}, "invalid name"},
		{"not loopback", Options{Addr: "0.0.0.0:0"}, "loopback"},
		{"no rie", Options{RIE: "/nonexistent/aws-lambda-rie"}, "aws-lambda-rie"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := New(tt.opts)
			defer e.Close()
			if _, err := e.Start(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Start() error %v, want one about %q", err, tt.want)
			}
		})
	}
}

func TestRIEFailsToStart(t *testing.T) {
	t.Parallel()
	needRIE(t)
	e := New(Options{
		RIE:       "/bin/false", // exits at once, never listens
		Functions: map[string]Function{"fn": fnFunction(Function{RetryDelay: 10 * time.Millisecond})},
	})
	url, err := e.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	c := newClient(url)

	_, err = c.Invoke(t.Context(), &awslambda.InvokeInput{FunctionName: aws.String("fn"), Payload: []byte(`{}`)})
	var se *types.ServiceException
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "rie exited before listening") {
		t.Fatalf("error %v; want ServiceException about RIE", err)
	}
	if out := invoke(t, c, "fn", `{}`, asEvent); out.StatusCode != 202 {
		t.Fatalf("event status %d", out.StatusCode)
	}
	waitIdle(t, e)
	if n := len(e.Invocations("")); n != 0 {
		t.Errorf("%d invocations recorded without an execution environment", n)
	}
}
