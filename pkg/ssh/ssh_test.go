package ssh

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	xssh "golang.org/x/crypto/ssh"
)

// testServer is a minimal SSH server: root with one authorized key, exec
// requests run under bash.
type testServer struct {
	t    *testing.T
	ln   net.Listener
	cfg  *xssh.ServerConfig
	wg   sync.WaitGroup
	addr string
}

func newTestServer(t *testing.T, addr string, authorized xssh.PublicKey) *testServer {
	t.Helper()
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	hostSigner, err := xssh.NewSignerFromKey(hostPriv)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &xssh.ServerConfig{
		PublicKeyCallback: func(c xssh.ConnMetadata, k xssh.PublicKey) (*xssh.Permissions, error) {
			if c.User() == "root" && bytes.Equal(k.Marshal(), authorized.Marshal()) {
				return nil, nil
			}
			return nil, errors.New("denied")
		},
	}
	cfg.AddHostKey(hostSigner)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{t: t, ln: ln, cfg: cfg, addr: ln.Addr().String()}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(s.close)
	return s
}

func (s *testServer) close() {
	s.ln.Close()
	s.wg.Wait()
}

func (s *testServer) serve() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer conn.Close()
			_, chans, reqs, err := xssh.NewServerConn(conn, s.cfg)
			if err != nil {
				return
			}
			go xssh.DiscardRequests(reqs)
			for nc := range chans {
				ch, creqs, err := nc.Accept()
				if err != nil {
					continue
				}
				go handleSession(ch, creqs)
			}
		}()
	}
}

func handleSession(ch xssh.Channel, reqs <-chan *xssh.Request) {
	defer ch.Close()
	for req := range reqs {
		if req.Type != "exec" {
			req.Reply(false, nil)
			continue
		}
		n := binary.BigEndian.Uint32(req.Payload)
		cmd := exec.Command("bash", "-c", string(req.Payload[4:4+n]))
		cmd.Stdin, cmd.Stdout, cmd.Stderr = ch, ch, ch.Stderr()
		req.Reply(true, nil)
		status := 0
		if err := cmd.Run(); err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				status = ee.ExitCode()
			} else {
				status = 255
			}
		}
		b := make([]byte, 4)
		binary.BigEndian.PutUint32(b, uint32(status))
		ch.SendRequest("exit-status", false, b)
		return
	}
}

func publicKey(t *testing.T, k *Key) xssh.PublicKey {
	t.Helper()
	pk, _, _, _, err := xssh.ParseAuthorizedKey([]byte(k.AuthorizedKey()))
	if err != nil {
		t.Fatal(err)
	}
	return pk
}

// logSink collects log records' messages with their stream attribute.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (l *logSink) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	stream := ""
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "stream" {
			stream = a.Value.String()
		}
		return true
	})
	l.lines = append(l.lines, stream+": "+r.Message)
	return nil
}
func (l *logSink) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logSink) WithGroup(string) slog.Handler      { return l }

func TestKey(t *testing.T) {
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(k.AuthorizedKey(), "ssh-ed25519 AAAA") || strings.Contains(k.AuthorizedKey(), "\n") {
		t.Errorf("AuthorizedKey = %q", k.AuthorizedKey())
	}
	if len(k.Fingerprint()) != 47 {
		t.Errorf("Fingerprint = %q, want aa:bb:... MD5", k.Fingerprint())
	}
	k2, _ := NewKey()
	if k2.AuthorizedKey() == k.AuthorizedKey() {
		t.Error("two keys are equal")
	}
}

func TestRun(t *testing.T) {
	key, _ := NewKey()
	srv := newTestServer(t, "127.0.0.1:0", publicKey(t, key))
	sink := &logSink{}
	d := &Dialer{Key: key, Addr: srv.addr, Logger: slog.New(sink)}
	ctx := context.Background()
	c, err := d.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	tests := []struct {
		cmd     string
		stdout  string
		status  int // 0 = success
		tail    string
		logLine string
	}{
		{cmd: "echo hello; echo world", stdout: "hello\nworld\n"},
		{cmd: "echo logged; echo too", logLine: "stdout: too"},
		{cmd: "echo oops >&2; exit 3", status: 3, tail: "oops", logLine: "stderr: oops"},
		{cmd: "set -euo pipefail; false | cat; echo not reached", status: 1},
		{cmd: "printf 'no newline'", logLine: "stdout: no newline"},
	}
	defer func() {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		if slices.Contains(sink.lines, "stdout: hello") {
			t.Errorf("captured stdout was logged: %q", sink.lines)
		}
	}()
	for _, tt := range tests {
		var out bytes.Buffer
		var w io.Writer // captured output is not logged
		if tt.stdout != "" {
			w = &out
		}
		err := c.Run(ctx, tt.cmd, w)
		if out.String() != tt.stdout {
			t.Errorf("%q: stdout %q, want %q", tt.cmd, out.String(), tt.stdout)
		}
		var ee *ExitError
		switch {
		case tt.status == 0 && err != nil:
			t.Errorf("%q: %v", tt.cmd, err)
		case tt.status != 0 && (!errors.As(err, &ee) || ee.Status != tt.status || ee.Tail != tt.tail):
			t.Errorf("%q: err = %#v, want exit %d tail %q", tt.cmd, err, tt.status, tt.tail)
		}
		if tt.logLine != "" {
			sink.mu.Lock()
			found := false
			for _, l := range sink.lines {
				found = found || l == tt.logLine
			}
			sink.mu.Unlock()
			if !found {
				t.Errorf("%q: log lacks %q: %q", tt.cmd, tt.logLine, sink.lines)
			}
		}
	}
}

func TestRunStdin(t *testing.T) {
	key, _ := NewKey()
	srv := newTestServer(t, "127.0.0.1:0", publicKey(t, key))
	c, err := (&Dialer{Key: key, Addr: srv.addr}).Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tests := []struct {
		name, cmd, stdin, stdout string
		status                   int
	}{
		{"script", "bash -s", "echo one\necho two\n", "one\ntwo\n", 0},
		{"script fails", "bash -s", "set -euo pipefail\necho before\nfalse | cat\necho after\n", "before\n", 1},
		{"data", "wc -c", "12345", "5\n", 0},
		{"no stdin", "cat", "", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdin io.Reader
			if tt.stdin != "" {
				stdin = strings.NewReader(tt.stdin)
			}
			var out bytes.Buffer
			err := c.RunStdin(context.Background(), tt.cmd, stdin, &out)
			var ee *ExitError
			if tt.status == 0 && err != nil || tt.status != 0 && (!errors.As(err, &ee) || ee.Status != tt.status) {
				t.Errorf("err = %v, want exit status %d", err, tt.status)
			}
			if out.String() != tt.stdout {
				t.Errorf("stdout %q, want %q", out.String(), tt.stdout)
			}
		})
	}
}

func TestRunStopsWithContext(t *testing.T) {
	key, _ := NewKey()
	srv := newTestServer(t, "127.0.0.1:0", publicKey(t, key))
	c, err := (&Dialer{Key: key, Addr: srv.addr}).Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.Run(ctx, "sleep 5", nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Run returned after %s", d)
	}
}

// freeAddr returns a loopback address nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestDialWaitsForBoot(t *testing.T) {
	key, _ := NewKey()
	addr := freeAddr(t)
	go func() {
		time.Sleep(700 * time.Millisecond) // the machine is still booting
		newTestServer(t, addr, publicKey(t, key))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := (&Dialer{Key: key, Addr: addr, MaxBackoff: 200 * time.Millisecond}).Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestDialGivesUpWithContext(t *testing.T) {
	key, _ := NewKey()
	other, _ := NewKey()
	srv := newTestServer(t, "127.0.0.1:0", publicKey(t, other)) // our key is not authorized
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := (&Dialer{Key: key, Addr: srv.addr}).Dial(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Errorf("err = %v, want deadline with the last auth error", err)
	}
}

// TestHostKeyNotPinned: nothing tells a rescue system's host key (the
// local ones make a new one at every boot), so the same address answering
// with another key is accepted; what lets us in is that the host
// authorizes our key (TestDialGivesUpWithContext).
func TestHostKeyNotPinned(t *testing.T) {
	key, _ := NewKey()
	srv := newTestServer(t, "127.0.0.1:0", publicKey(t, key))
	d := &Dialer{Key: key, Addr: srv.addr}
	c, err := d.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	srv.close()
	newTestServer(t, srv.addr, publicKey(t, key)) // rebooted: same address, another host key
	if c, err = d.Dial(context.Background()); err != nil {
		t.Fatalf("after a new host key: %v", err)
	}
	c.Close()
}

// A host that refuses our key (the system before a reset) is retried until
// the rescue system, with another host key, comes up.
func TestRefusingHostThenRescueSystem(t *testing.T) {
	key, _ := NewKey()
	other, _ := NewKey()
	before := newTestServer(t, "127.0.0.1:0", publicKey(t, other))
	d := &Dialer{Key: key, Addr: before.addr, MaxBackoff: 100 * time.Millisecond}
	go func() {
		time.Sleep(500 * time.Millisecond)
		before.close()
		newTestServer(t, before.addr, publicKey(t, key))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
