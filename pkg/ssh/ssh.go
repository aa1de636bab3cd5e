// Package ssh runs commands on a freshly booted rescue system: a throw-away
// ed25519 key per phase, patient dialing while the machine boots, and
// output streamed into the logs.
//
// Host keys are not checked. The API tells nothing about a rescue system's
// host key, so there is nothing to check it against (the same in
// apricote/hcloud-upload-image, hcloudimages/client.go: "There is no way to
// get the host key of the rescue system beforehand"), and each install
// dials its freshly booted rescue system once, so there is no earlier key
// to pin to either. What protects the write instead:
//   - Our key authenticates us, and only to the system Hetzner booted with
//     its public half: the pair is made per install and the private half
//     never leaves memory. A machine in the middle cannot pass our login on
//     to the real host, because the signature covers the session identifier
//     (RFC 4252, section 7), so it cannot write the server's disk; the
//     commands it would receive carry no secret.
//   - The written disk is read back and checked against the Talos layout.
//     That catches mistakes, not a machine in the middle, which could answer
//     the check falsely: at worst it makes the build snapshot a disk that was
//     never written (the server's own system image), never one of its own.
//   - The snapshot is taken by Hetzner, through the API over TLS, of the
//     server's own disk.
package ssh

import (
	"bufio"
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

	"github.com/hcloud-k8s/hcloud-k8s/pkg/backoff"
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

// Dialer connects to one host as root with one key. It accepts any host
// key: see the package documentation for why and what protects the write.
type Dialer struct {
	Key  *Key
	Addr string // host:port
	// MaxBackoff caps the wait between attempts; the default is 2 s.
	MaxBackoff time.Duration
	// AttemptTimeout bounds one TCP connect plus handshake; default 10 s.
	AttemptTimeout time.Duration
	Logger         *slog.Logger
}

// Dial connects, retrying with backoff until the host answers or ctx ends:
// a rescue system takes about 80 s to boot on real Hetzner.
func (d *Dialer) Dial(ctx context.Context) (*Client, error) {
	maxBackoff := d.MaxBackoff
	if maxBackoff <= 0 {
		maxBackoff = 2 * time.Second
	}
	wait := backoff.Exponential{Initial: 100 * time.Millisecond, Factor: 1.5, Max: maxBackoff}
	var last error // of an attempt that ctx did not cut short
	for attempt := 1; ; attempt++ {
		c, err := d.dialOnce(ctx)
		if err == nil {
			return c, nil
		}
		if !ended(ctx) || last == nil {
			last = err
		}
		d.logger().DebugContext(ctx, "ssh not ready", "addr", d.Addr, "attempt", attempt, "error", err)
		if err := wait.Wait(ctx); err != nil {
			return nil, fmt.Errorf("ssh %s after %d attempts: %w (last error: %v)", d.Addr, attempt, err, last)
		}
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
	cfg := &xssh.ClientConfig{
		User: "root",
		Auth: []xssh.AuthMethod{xssh.PublicKeys(d.Key.signer)},
		// Nothing to check the rescue system's key against; see the
		// package documentation.
		HostKeyCallback: xssh.InsecureIgnoreHostKey(),
		Timeout:         timeout,
	}
	sc, chans, reqs, err := xssh.NewClientConn(conn, d.Addr, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return &Client{c: xssh.NewClient(sc, chans, reqs), addr: d.Addr, logger: d.logger()}, nil
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
