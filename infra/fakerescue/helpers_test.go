package fakerescue_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakerescue"
	"github.com/hcloud-k8s/hcloud-k8s/infra/testenv"
)

const testDiskSize = 64 << 20

// newPool returns a pool with small, fast defaults that the test closes;
// without root it skips the test.
func newPool(t *testing.T, opts fakerescue.Options) *fakerescue.Pool {
	t.Helper()
	testenv.NeedRoot(t)
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.DiskSize == 0 {
		opts.DiskSize = testDiskSize
	}
	if opts.BootDelay == 0 {
		opts.BootDelay = 20 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	p := fakerescue.New(opts)
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close pool: %v", err)
		}
	})
	return p
}

// newKey returns a client key and its authorized_keys line.
func newKey(t *testing.T) (ssh.Signer, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return signer, string(ssh.MarshalAuthorizedKey(signer.PublicKey()))
}

// machine is a booted rescue machine with a logged-in client.
type machine struct {
	id      int64
	ip      string
	signer  ssh.Signer
	client  *ssh.Client
	hostKey ssh.PublicKey
}

// bootRescue creates machine id, boots it into rescue and logs in.
func bootRescue(t *testing.T, p *fakerescue.Pool, id int64) *machine {
	t.Helper()
	signer, authorized := newKey(t)
	ip, err := p.Create(id, 40e9)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := p.Boot(id, &fakerescue.Rescue{AuthorizedKeys: []string{authorized}}); err != nil {
		t.Fatalf("boot: %v", err)
	}
	m := &machine{id: id, ip: ip, signer: signer}
	m.client, m.hostKey = dial(t, ip, "root", signer, 5*time.Second)
	return m
}

// dial logs in, retrying until the rescue system listens or patience ends.
func dial(t *testing.T, ip, user string, signer ssh.Signer, patience time.Duration) (*ssh.Client, ssh.PublicKey) {
	t.Helper()
	c, key, err := tryDial(ip, user, signer, patience)
	if err != nil {
		t.Fatalf("dial %s: %v", ip, err)
	}
	t.Cleanup(func() { c.Close() })
	return c, key
}

func tryDial(ip, user string, signer ssh.Signer, patience time.Duration) (*ssh.Client, ssh.PublicKey, error) {
	var hostKey ssh.PublicKey
	cfg := &ssh.ClientConfig{
		User: user,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			hostKey = key
			return nil
		},
		Timeout: time.Second,
	}
	deadline := time.Now().Add(patience)
	for {
		c, err := ssh.Dial("tcp", net.JoinHostPort(ip, "22"), cfg)
		if err == nil {
			return c, hostKey, nil
		}
		if time.Now().After(deadline) || !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, nil, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// run runs cmd in a new session with stdin.
func run(c *ssh.Client, cmd string, stdin []byte) (stdout, stderr string, err error) {
	s, err := c.NewSession()
	if err != nil {
		return "", "", err
	}
	defer s.Close()
	var out, errOut bytes.Buffer
	s.Stdout, s.Stderr = &out, &errOut
	if stdin != nil {
		s.Stdin = bytes.NewReader(stdin)
	}
	err = s.Run(cmd)
	return out.String(), errOut.String(), err
}

// mustRun runs cmd and fails the test unless it exits 0. It returns stdout
// without the trailing newline.
func mustRun(t *testing.T, c *ssh.Client, cmd string, stdin []byte) string {
	t.Helper()
	out, errOut, err := run(c, cmd, stdin)
	if err != nil {
		t.Fatalf("%s: %v (stderr %q)", cmd, err, errOut)
	}
	return strings.TrimSuffix(out, "\n")
}

// exitStatus returns the exit status of a command that failed, or fails.
func exitStatus(t *testing.T, err error) int {
	t.Helper()
	var ee *ssh.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("want an exit status, got %v", err)
	}
	return ee.ExitStatus()
}

// listening reports whether something accepts TCP connections on ip:22.
func listening(ip string) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, "22"), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
