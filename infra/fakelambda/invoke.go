package fakelambda

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
)

// InvocationType is the X-Amz-Invocation-Type of an invocation.
type InvocationType string

// Invocation types.
const (
	RequestResponse InvocationType = "RequestResponse"
	Event           InvocationType = "Event"
	DryRun          InvocationType = "DryRun"
)

// Invocation records one attempt of one invocation. Retries of an Event
// invocation keep its request ID and count up Attempt, as in Lambda.
type Invocation struct {
	RequestID string
	Function  string
	Type      InvocationType
	Attempt   int // 1 for the first
	Payload   []byte
	Start     time.Time
	End       time.Time
	// Duration is RIE's REPORT duration when it printed one, else wall time.
	Duration time.Duration
	// BilledMS is Duration rounded up to the millisecond, as for provided runtimes.
	BilledMS int64
	// Result is the function's response, or the error payload on failure.
	Result       []byte
	ErrorType    string // empty on success
	ErrorMessage string
	TimedOut     bool
	Killed       bool // by KillOn, Kill or Close
	// Logs are RIE's output lines while it served this attempt: the
	// function's stdout and stderr, START/END/REPORT and rapid's own lines.
	Logs []string
}

// Failed reports whether the attempt ended in a function error.
func (inv Invocation) Failed() bool { return inv.ErrorType != "" }

// Request records one call of the Invoke API.
type Request struct {
	Time      time.Time
	RequestID string
	Function  string // as named by the caller: name, ARN or partial ARN
	Type      InvocationType
	Status    int
}

var errClosed = errors.New("lambda emulator closed")

// run executes one attempt on a pooled instance and records it.
func (e *Emulator) run(fn *function, id string, typ InvocationType, attempt int, payload []byte, clientContext string) (Invocation, error) {
	rec := Invocation{RequestID: id, Function: fn.name, Type: typ, Attempt: attempt, Payload: payload}
	inst, err := fn.pool.acquire(e.ctx)
	if err != nil {
		if e.ctx.Err() != nil {
			return rec, errClosed
		}
		return rec, fmt.Errorf("invoke %s: %w", fn.name, err)
	}
	rec.Start = time.Now()
	out, reusable := inst.invoke(e.ctx, id, payload, clientContext, fn.timeout)
	// The end is taken before the instance goes back to the pool: a waiting
	// invocation's start must not precede it.
	rec.End = time.Now()
	fn.pool.release(inst, reusable)
	rec.Duration = out.duration
	rec.BilledMS = max(1, int64(math.Ceil(float64(out.duration)/float64(time.Millisecond))))
	rec.Result = out.payload
	rec.ErrorType = out.errType
	rec.ErrorMessage = out.errMsg
	rec.TimedOut = out.timedOut
	rec.Killed = out.killed
	rec.Logs = out.logs

	e.mu.Lock()
	e.records = append(e.records, rec)
	e.mu.Unlock()
	if out.internal {
		return rec, fmt.Errorf("invoke %s: %s", fn.name, out.errMsg)
	}
	return rec, nil
}

// runEvent is Lambda's asynchronous invocation: attempts with retries after
// a function error, timeout or runtime exit.
func (e *Emulator) runEvent(fn *function, id string, payload []byte) {
	defer e.end()
	for attempt := 1; ; attempt++ {
		rec, err := e.run(fn, id, Event, attempt, payload, "")
		switch {
		case errors.Is(err, errClosed):
			return
		case err != nil:
			// Lambda retries after its own failures, too.
			e.log.Error("event invocation attempt failed", "request_id", id, "attempt", attempt, "err", err)
		case !rec.Failed():
			return
		}
		if attempt > fn.maxRetries {
			return
		}
		select {
		case <-time.After(fn.retryDelay * time.Duration(attempt)):
		case <-e.ctx.Done():
			return
		}
	}
}

// begin counts an invocation as active; it fails once the emulator closed.
func (e *Emulator) begin() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	if e.active == 0 {
		e.idle = make(chan struct{})
	}
	e.active++
	e.wg.Add(1)
	return true
}

func (e *Emulator) end() {
	e.mu.Lock()
	e.active--
	if e.active == 0 {
		close(e.idle)
	}
	e.mu.Unlock()
	e.wg.Done()
}

// WaitIdle waits until no invocation is queued, running or waiting for a
// retry. Chains of Event invocations count as long as one link is pending.
func (e *Emulator) WaitIdle(ctx context.Context) error {
	e.mu.Lock()
	idle := e.idle
	e.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for idle lambda emulator: %w", ctx.Err())
	}
}

// Invocations returns the finished attempts of fn (all functions if fn is
// empty) in the order they finished.
func (e *Emulator) Invocations(fn string) []Invocation {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Invocation
	for _, rec := range e.records {
		if fn == "" || rec.Function == fn {
			out = append(out, rec)
		}
	}
	return out
}

// Logs returns the log lines of every finished attempt of a request.
func (e *Emulator) Logs(requestID string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, rec := range e.records {
		if rec.RequestID == requestID {
			out = append(out, rec.Logs...)
		}
	}
	return out
}

// Requests returns the Invoke API calls received so far.
func (e *Emulator) Requests() []Request {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.requests)
}

type killRule struct {
	match func(line string) bool
	done  chan struct{}
}

// KillOn arms a one-shot crash: the execution of fn serving the first
// invocation that logs a line for which match returns true is SIGKILLed
// (RIE and runtime), as if the runtime died. Lines are checked as they
// appear. That attempt ends as Runtime.ExitError and Event retries apply.
// The channel closes once the killed RIE has exited. match runs with the
// emulator's locks held: keep it a quick predicate that does not call back.
func (e *Emulator) KillOn(fn string, match func(line string) bool) <-chan struct{} {
	rule := &killRule{match: match, done: make(chan struct{})}
	e.mu.Lock()
	e.killRules[fn] = append(e.killRules[fn], rule)
	e.mu.Unlock()
	return rule.done
}

// Kill SIGKILLs every execution of fn that serves an invocation and reports
// how many it killed.
func (e *Emulator) Kill(fn string) int {
	e.mu.Lock()
	f := e.funcs[fn]
	e.mu.Unlock()
	if f == nil {
		return 0
	}
	return f.pool.kill()
}

// matchKill consumes the first KillOn rule of fn that matches line.
func (e *Emulator) matchKill(fn, line string) chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	rules := e.killRules[fn]
	for i, r := range rules {
		if r.match(line) {
			e.killRules[fn] = slices.Delete(rules, i, i+1)
			return r.done
		}
	}
	return nil
}

// newRequestID returns a random UUID (version 4), Lambda's request ID format.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Redeliver runs an Event invocation of fn again, with its request ID and
// payload, as Lambda may: "it's possible for it to receive the same event
// from Lambda multiple times because the queue itself is eventually
// consistent" (AWS Lambda docs, error handling for asynchronous
// invocation).
func (e *Emulator) Redeliver(fn, requestID string) error {
	f := e.funcs[fn]
	if f == nil {
		return fmt.Errorf("redeliver: no function %s", fn)
	}
	var payload []byte
	e.mu.Lock()
	i := slices.IndexFunc(e.records, func(r Invocation) bool {
		return r.Function == fn && r.RequestID == requestID && r.Type == Event
	})
	if i >= 0 {
		payload = e.records[i].Payload
	}
	e.mu.Unlock()
	if i < 0 {
		return fmt.Errorf("redeliver: no event invocation %s of %s", requestID, fn)
	}
	if !e.begin() {
		return errClosed
	}
	go e.runEvent(f, requestID, payload)
	return nil
}
