// Package ssh runs commands on a freshly booted rescue system: a throw-away
// ed25519 key per phase, patient dialing while the machine boots, the host
// key pinned to the first one seen, and output streamed into the logs.
package ssh

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	xssh "golang.org/x/crypto/ssh"
)

// Key is a throw-away ed25519 key pair. The private half lives only in
// memory: it is never stored, so a phase that needs SSH makes a new one.
type Key struct {
	signer xssh.Signer
}

// NewKey generates a key pair.
func NewKey() (*Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ssh key: %w", err)
	}
	signer, err := xssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, fmt.Errorf("generate ssh key: %w", err)
	}
	return &Key{signer: signer}, nil
}

// AuthorizedKey returns the public key in authorized_keys format, as the
// Hetzner API takes it.
func (k *Key) AuthorizedKey() string {
	return strings.TrimSpace(string(xssh.MarshalAuthorizedKey(k.signer.PublicKey())))
}

// Fingerprint returns the MD5 fingerprint Hetzner shows for the key.
func (k *Key) Fingerprint() string {
	return xssh.FingerprintLegacyMD5(k.signer.PublicKey())
}

// Dialer connects to one host as root with one key. It pins the host key
// of the first host it logs into, so a later reconnect in the same phase
// cannot land on a different machine.
type Dialer struct {
	Key  *Key
	Addr string // host:port
	// MaxBackoff caps the wait between attempts; the default is 2 s.
	MaxBackoff time.Duration
	// AttemptTimeout bounds one TCP connect plus handshake; default 10 s.
	AttemptTimeout time.Duration
	Logger         *slog.Logger

	mu     sync.Mutex
	pinned xssh.PublicKey
}

// Dial connects, retrying with backoff until the host answers or ctx ends:
// a rescue system takes about 80 s to boot on real Hetzner.
func (d *Dialer) Dial(ctx context.Context) (*Client, error) {
	maxBackoff := d.MaxBackoff
	if maxBackoff <= 0 {
		maxBackoff = 2 * time.Second
	}
	backoff := 100 * time.Millisecond
	var last error // of an attempt that ctx did not cut short
	for attempt := 1; ; attempt++ {
		c, err := d.dialOnce(ctx)
		if err == nil {
			return c, nil
		}
		var mismatch *HostKeyMismatchError
		if errors.As(err, &mismatch) {
			return nil, err
		}
		if !ended(ctx) || last == nil {
			last = err
		}
		d.logger().DebugContext(ctx, "ssh not ready", "addr", d.Addr, "attempt", attempt, "error", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("ssh %s after %d attempts: %w (last error: %v)", d.Addr, attempt, ctx.Err(), last)
		case <-time.After(backoff):
		}
		backoff = min(backoff*3/2, maxBackoff)
	}
}

// ended tells whether ctx is done or past its deadline: a dial cut short by
// the deadline can return before ctx's own timer marks it done.
func ended(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	deadline, ok := ctx.Deadline()
	return ok && !time.Now().Before(deadline)
}

// HostKeyMismatchError means the host presented another key than the one
// pinned earlier in the phase.
type HostKeyMismatchError struct {
	Addr      string
	Want, Got string
}

func (e *HostKeyMismatchError) Error() string {
	return fmt.Sprintf("ssh %s: host key changed from %s to %s", e.Addr, e.Want, e.Got)
}

func (d *Dialer) dialOnce(ctx context.Context) (*Client, error) {
	timeout := d.AttemptTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var nd net.Dialer
	conn, err := nd.DialContext(actx, "tcp", d.Addr)
	if err != nil {
		return nil, err
	}
	// Bound the handshake: a booting host may accept and then stall.
	_ = conn.SetDeadline(time.Now().Add(timeout))
	stop := context.AfterFunc(actx, func() { conn.Close() })
	defer stop()
	var seen xssh.PublicKey
	cfg := &xssh.ClientConfig{
		User: "root",
		Auth: []xssh.AuthMethod{xssh.PublicKeys(d.Key.signer)},
		HostKeyCallback: func(_ string, _ net.Addr, key xssh.PublicKey) error {
			seen = key
			return d.checkHostKey(key)
		},
		Timeout: timeout,
	}
	sc, chans, reqs, err := xssh.NewClientConn(conn, d.Addr, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	d.pin(seen)
	_ = conn.SetDeadline(time.Time{})
	return &Client{c: xssh.NewClient(sc, chans, reqs), addr: d.Addr, logger: d.logger()}, nil
}

// checkHostKey accepts any key until one is pinned, then only that one.
func (d *Dialer) checkHostKey(key xssh.PublicKey) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pinned != nil && !bytes.Equal(d.pinned.Marshal(), key.Marshal()) {
		return &HostKeyMismatchError{Addr: d.Addr, Want: xssh.FingerprintSHA256(d.pinned), Got: xssh.FingerprintSHA256(key)}
	}
	return nil
}

// pin remembers the key of the first host we logged into: a host that
// refused our key (say, the system before a reset) pins nothing.
func (d *Dialer) pin(key xssh.PublicKey) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pinned == nil {
		d.pinned = key
	}
}

func (d *Dialer) logger() *slog.Logger {
	if d.Logger != nil {
		return d.Logger
	}
	return slog.Default()
}

// Client is one SSH connection.
type Client struct {
	c      *xssh.Client
	addr   string
	logger *slog.Logger
}

// Close closes the connection.
func (c *Client) Close() error { return c.c.Close() }

// ExitError is a command that ran and exited non-zero. Tail holds the last
// lines of its stderr for the error message.
type ExitError struct {
	Status int
	Tail   string
}

func (e *ExitError) Error() string {
	if e.Tail == "" {
		return fmt.Sprintf("exit status %d", e.Status)
	}
	return fmt.Sprintf("exit status %d: %s", e.Status, e.Tail)
}

// Run runs cmd and logs every line of its stderr, and of its stdout unless
// stdout is given to capture it, as it comes. It returns *ExitError when the
// command exits non-zero; when ctx ends the session is closed and ctx's error
// returned.
func (c *Client) Run(ctx context.Context, cmd string, stdout io.Writer) error {
	return c.RunStdin(ctx, cmd, nil, stdout)
}

// RunStdin is Run with stdin, if not nil, as the command's standard input;
// its end closes the command's input. A script given this way to "bash -s"
// runs under bash whatever root's login shell is.
func (c *Client) RunStdin(ctx context.Context, cmd string, stdin io.Reader, stdout io.Writer) error {
	s, err := c.c.NewSession()
	if err != nil {
		return fmt.Errorf("ssh %s: new session: %w", c.addr, err)
	}
	defer s.Close()
	tail := &tailWriter{max: 512}
	errLog := c.lineLogger(ctx, "stderr")
	defer errLog.Close()
	s.Stderr = io.MultiWriter(errLog, tail)
	s.Stdin = stdin
	s.Stdout = stdout
	if stdout == nil {
		outLog := c.lineLogger(ctx, "stdout")
		defer outLog.Close()
		s.Stdout = outLog
	}
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	err = s.Run(cmd)
	if ctx.Err() != nil {
		return fmt.Errorf("ssh %s: %w", c.addr, ctx.Err())
	}
	var exit *xssh.ExitError
	switch {
	case errors.As(err, &exit):
		return &ExitError{Status: exit.ExitStatus(), Tail: tail.String()}
	case err != nil:
		return fmt.Errorf("ssh %s: %w", c.addr, err)
	}
	return nil
}

// lineLogger returns a writer that logs each complete line it is given.
func (c *Client) lineLogger(ctx context.Context, stream string) io.WriteCloser {
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.logger.InfoContext(ctx, sc.Text(), "stream", stream)
		}
		_, _ = io.Copy(io.Discard, pr) // keep the writer unblocked past an overlong line
	}()
	return &pipeCloser{pw: pw, done: done}
}

type pipeCloser struct {
	pw   *io.PipeWriter
	done chan struct{}
}

func (p *pipeCloser) Write(b []byte) (int, error) { return p.pw.Write(b) }

func (p *pipeCloser) Close() error {
	err := p.pw.Close()
	<-p.done
	return err
}

// tailWriter keeps the last max bytes written, for error messages.
type tailWriter struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailWriter) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(b), nil
}

func (t *tailWriter) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}
