package fakelambda

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RIE writes its own log lines ("rapid") to stderr in this shape; the
// function's output and the START/END/REPORT lines carry no such prefix.
var rapidLine = regexp.MustCompile(`^\d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2},\d{3} \[(\w+)\] \(rapid\) (.*)$`)

var (
	reportDuration = regexp.MustCompile(`\tDuration: ([0-9.]+) ms`)
	// rapid names why the runtime died, e.g. "Runtime exited with error: exit status 4".
	exitReason = regexp.MustCompile(`(Runtime exited (?:with error: .*?|without providing a reason))(?:\s+\w+=|$)`)
)

const (
	// startAttempts bounds retries when a picked port was taken meanwhile.
	startAttempts = 3
	startTimeout  = 10 * time.Second
	// drainTimeout bounds the wait for the last log lines of an invocation.
	drainTimeout = 2 * time.Second
)

// attempt is the state of one invocation attempt while an instance serves it.
// The instance's reader goroutine fills it; fields are guarded by instance.mu.
type attempt struct {
	id       string
	logs     []string
	errored  bool // the runtime posted to /runtime/invocation/<id>/error
	exit     string
	duration float64 // RIE's REPORT duration in ms, if seen
	reported chan struct{}
	killed   bool
}

// instance is one RIE process (one execution environment). It serves one
// invocation at a time: RIE crashes on overlapping invokes.
type instance struct {
	fn     string
	cmd    *exec.Cmd
	url    string
	client *http.Client
	log    *slog.Logger
	// matchKill consumes the first KillOn rule of fn matching line and
	// returns its channel, or nil.
	matchKill func(fn, line string) chan struct{}
	exited    chan struct{} // closed once the RIE process is reaped
	drained   chan struct{} // closed once its output reached EOF

	mu     sync.Mutex
	cur    *attempt
	killed bool
}

// startOptions is what an instance needs to start.
type startOptions struct {
	rie       string
	fn        *function
	env       []string
	log       *slog.Logger
	matchKill func(fn, line string) chan struct{}
}

// startInstance starts RIE on two fresh loopback ports and waits until both
// listen. A port picked as free can be taken before RIE binds it; RIE then
// exits and another pair is tried.
func startInstance(ctx context.Context, o startOptions) (*instance, error) {
	var lastErr error
	for range startAttempts {
		inst, err := tryStart(ctx, o)
		if err == nil {
			return inst, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("start rie for %s: %w", o.fn.name, lastErr)
}

func tryStart(ctx context.Context, o startOptions) (*instance, error) {
	invokePort, err := freePort()
	if err != nil {
		return nil, err
	}
	runtimePort, err := freePort()
	if err != nil {
		return nil, err
	}
	invokeAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(invokePort))
	runtimeAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(runtimePort))

	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pipe: %w", err)
	}
	// Debug level makes rapid log the runtime's /error call, the only sign
	// of a handled function error: RIE answers 200 without Lambda's headers.
	cmd := exec.Command(o.rie, "--log-level", "debug",
		"--runtime-interface-emulator-address", invokeAddr,
		"--runtime-api-address", runtimeAddr,
		o.fn.bootstrap)
	cmd.Dir = filepath.Dir(o.fn.bootstrap)
	cmd.Env = o.env
	// One pipe for stdout and stderr keeps function output, rapid's lines and
	// START/END/REPORT in the order they were written.
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("exec %s: %w", o.rie, err)
	}
	pw.Close()

	inst := &instance{
		fn:  o.fn.name,
		cmd: cmd,
		url: "http://" + invokeAddr + "/2015-03-31/functions/function/invocations",
		// No proxy from the environment; no idle connections to a dead RIE.
		client:    &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
		log:       o.log.With("function", o.fn.name, "pid", cmd.Process.Pid),
		matchKill: o.matchKill,
		exited:    make(chan struct{}),
		drained:   make(chan struct{}),
	}
	go inst.read(pr)
	go func() {
		err := cmd.Wait()
		inst.log.Debug("rie exited", "state", err)
		close(inst.exited)
	}()

	if err := inst.awaitListening(ctx, invokeAddr, runtimeAddr); err != nil {
		inst.stop()
		return nil, err
	}
	inst.log.Debug("rie started", "invoke", invokeAddr, "runtime", runtimeAddr)
	return inst, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (i *instance) awaitListening(ctx context.Context, addrs ...string) error {
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for _, addr := range addrs {
		for {
			conn, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				conn.Close()
				break
			}
			select {
			case <-i.exited:
				return fmt.Errorf("rie exited before listening on %s: %s", addr, i.cmd.ProcessState)
			case <-deadline.C:
				return fmt.Errorf("rie not listening on %s after %s", addr, startTimeout)
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
			}
		}
	}
	return nil
}

// read consumes RIE's output until EOF, attributing lines to the attempt
// being served. Since one RIE runs one invoke at a time, every line written
// while an attempt is current belongs to it.
func (i *instance) read(r io.ReadCloser) {
	defer close(i.drained)
	defer r.Close()
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if line = strings.TrimRight(line, "\r\n"); line != "" || err == nil {
			i.handle(line)
		}
		if err != nil {
			return
		}
	}
}

func (i *instance) handle(line string) {
	if m := rapidLine.FindStringSubmatch(line); m != nil {
		i.handleRapid(line, m[1], m[2])
		return
	}
	i.mu.Lock()
	cur := i.cur
	var fired chan struct{}
	if cur != nil {
		cur.logs = append(cur.logs, line)
		if strings.HasPrefix(line, "REPORT RequestId: "+cur.id) {
			if m := reportDuration.FindStringSubmatch(line); m != nil {
				cur.duration, _ = strconv.ParseFloat(m[1], 64)
			}
			close(cur.reported)
		}
		// Checked under the lock so the kill hits the attempt that logged.
		if fired = i.matchKill(i.fn, line); fired != nil {
			cur.killed = true
			i.killed = true
		}
	}
	i.mu.Unlock()
	if cur == nil {
		i.log.Debug(line, "source", "function")
		return
	}
	i.log.Debug(line, "source", "function", "request_id", cur.id)
	if fired != nil {
		i.log.Info("killing execution on matching log line", "request_id", cur.id, "line", line)
		i.stop()
		go func() {
			<-i.exited
			close(fired)
		}()
	}
}

// handleRapid records the signals rapid logs about the current attempt.
// Debug lines exist only because we asked for them and are not recorded:
// an attempt's log holds what RIE prints at its default level.
func (i *instance) handleRapid(line, level, msg string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	cur := i.cur
	if level == "DEBUG" {
		if cur != nil && strings.Contains(msg, "/runtime/invocation/"+cur.id+"/error") {
			cur.errored = true
		}
		i.log.Debug(msg, "source", "rapid")
		return
	}
	if cur == nil {
		i.log.Debug(msg, "source", "rapid", "level", level)
		return
	}
	cur.logs = append(cur.logs, line)
	if m := exitReason.FindStringSubmatch(msg); m != nil {
		cur.exit = m[1]
	}
}

// kill SIGKILLs RIE and the runtime below it; with busyOnly, only while it
// serves an attempt, which then ends as a runtime exit. It reports whether
// an attempt was running.
func (i *instance) kill(busyOnly bool) bool {
	i.mu.Lock()
	running := i.cur != nil
	if busyOnly && !running {
		i.mu.Unlock()
		return false
	}
	i.killed = true
	if running {
		i.cur.killed = true
	}
	i.mu.Unlock()
	i.stop()
	return running
}

// stop ends the process tree unless RIE is already gone.
func (i *instance) stop() {
	select {
	case <-i.exited:
	default:
		killTree(i.cmd.Process.Pid)
	}
}

// dead reports whether the instance was killed or its RIE exited.
func (i *instance) dead() bool {
	i.mu.Lock()
	killed := i.killed
	i.mu.Unlock()
	select {
	case <-i.exited:
		return true
	default:
		return killed
	}
}

// outcome is how RIE answered one attempt, already in Lambda's terms.
type outcome struct {
	payload  []byte
	errType  string // empty on success
	errMsg   string
	timedOut bool
	killed   bool // by KillOn, Kill or Close
	internal bool // RIE misbehaved: the emulator's failure, not the function's
	logs     []string
	duration time.Duration
}

// invoke runs one attempt on this instance and maps RIE's answer onto what
// Lambda would return. It reports whether the instance may serve again.
func (i *instance) invoke(ctx context.Context, id string, payload []byte, clientContext string, fnTimeout time.Duration) (outcome, bool) {
	att := &attempt{id: id, reported: make(chan struct{})}
	i.mu.Lock()
	i.cur = att
	i.mu.Unlock()
	defer func() {
		i.mu.Lock()
		i.cur = nil
		i.mu.Unlock()
	}()

	start := time.Now()
	// RIE enforces the function timeout itself; this only guards against a hung RIE.
	ctx, cancel := context.WithTimeout(ctx, fnTimeout+10*time.Second)
	defer cancel()
	status, body, err := i.post(ctx, id, payload, clientContext)
	wall := time.Since(start)

	out := outcome{payload: body}
	crashed := err != nil || i.dead()
	healthy := !crashed && status == http.StatusOK && !bytes.HasPrefix(body, []byte("Task timed out after "))
	if healthy {
		select {
		case <-att.reported:
		case <-time.After(drainTimeout):
			i.log.Warn("no REPORT line from rie; replacing it", "request_id", id)
			healthy = false
		}
		// Output lags behind the response: a KillOn match may show up only
		// now. Every line the attempt logged counts, so it failed after all.
		if i.dead() {
			healthy, crashed = false, true
		}
	}
	if !healthy {
		i.stop()
		i.awaitGone()
	}

	i.mu.Lock()
	defer i.mu.Unlock()
	out.logs = append([]string(nil), att.logs...)
	out.killed = att.killed
	out.duration = wall
	if att.duration > 0 {
		out.duration = time.Duration(att.duration * float64(time.Millisecond))
	}
	// Lambda's own errors get a payload of Lambda's shape; RIE's differ.
	synthesize := func(typ, format string, args ...any) {
		out.errType = typ
		out.errMsg = fmt.Sprintf("RequestId: %s Error: ", id) + fmt.Sprintf(format, args...)
		out.payload = errorPayload(out.errType, out.errMsg)
	}
	switch {
	case crashed:
		reason := att.exit
		if reason == "" {
			reason = "Runtime exited with error: " + i.exitState()
		}
		synthesize("Runtime.ExitError", "%s", reason)
	case status == http.StatusOK && bytes.HasPrefix(body, []byte("Task timed out after ")):
		out.timedOut = true
		synthesize("Sandbox.Timedout", "%s", body)
	case status == http.StatusOK && att.errored:
		out.errType, out.errMsg = parseError(body)
	case status == http.StatusOK:
	case status == http.StatusBadGateway && len(bytes.TrimSpace(body)) == 0:
		// The runtime died during init.
		reason := att.exit
		if reason == "" {
			reason = "Runtime exited without providing a reason"
		}
		synthesize("Runtime.ExitError", "%s", reason)
	case status == http.StatusBadGateway:
		// The runtime died: the body is its last reported error (a Go
		// panic) or RIE's Runtime.ExitError, both in Lambda's shape.
		out.errType, out.errMsg = parseError(body)
	default:
		out.internal = true
		synthesize("ServiceException", "runtime interface emulator answered %d: %s", status, body)
	}
	return out, healthy
}

// awaitGone waits, bounded, until RIE is reaped and its output drained, so
// that the attempt's log is complete.
func (i *instance) awaitGone() {
	timeout := time.After(drainTimeout)
	for _, ch := range []chan struct{}{i.exited, i.drained} {
		select {
		case <-ch:
		case <-timeout:
			i.log.Warn("rie did not go away in time")
			return
		}
	}
}

// exitState describes how RIE ended, e.g. "signal: killed".
func (i *instance) exitState() string {
	select {
	case <-i.exited:
		return i.cmd.ProcessState.String()
	default:
		return "signal: killed"
	}
}

func (i *instance) post(ctx context.Context, id string, payload []byte, clientContext string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, i.url, bytes.NewReader(payload))
	if err != nil {
		return 0, nil, fmt.Errorf("build rie request: %w", err)
	}
	req.Header.Set("X-Amzn-RequestId", id)
	if clientContext != "" {
		req.Header.Set("X-Amz-Client-Context", clientContext)
	}
	resp, err := i.client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("invoke rie: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, fmt.Errorf("read rie response: %w", err)
	}
	return resp.StatusCode, body, nil
}
