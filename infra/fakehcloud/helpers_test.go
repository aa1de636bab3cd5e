package fakehcloud

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
	"golang.org/x/crypto/ssh"
)

// call is one Machines call a fakeMachines saw.
type call struct {
	op     string
	id     int64
	rescue *Rescue
	arch   string // of a provision
	image  int64  // of a provision
}

// fakeMachines records the calls the cloud makes and hands out addresses and
// per-server digests.
type fakeMachines struct {
	mu    sync.Mutex
	calls []call
}

func (m *fakeMachines) record(op string, id int64, rescue *Rescue) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, call{op: op, id: id, rescue: rescue})
}

func (m *fakeMachines) Create(id int64, diskBytes int64) (string, error) {
	if diskBytes <= 0 {
		return "", fmt.Errorf("disk size %d", diskBytes)
	}
	m.record("create", id, nil)
	return fmt.Sprintf("127.88.0.%d", id%250+1), nil
}

func (m *fakeMachines) Provision(id int64, arch string, image int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, call{op: "provision", id: id, arch: arch, image: image})
	return nil
}

func (m *fakeMachines) Boot(id int64, rescue *Rescue) error {
	m.record("boot", id, rescue)
	return nil
}

func (m *fakeMachines) Halt(id int64) error {
	m.record("halt", id, nil)
	return nil
}

func (m *fakeMachines) SaveImage(id, _ int64) (string, error) {
	m.record("save", id, nil)
	return fakeDigest(id), nil
}

func (m *fakeMachines) CorruptImage(image int64) (string, error) {
	m.record("corrupt", image, nil)
	return fmt.Sprintf("sha256:corrupted-%d", image), nil
}

func (m *fakeMachines) DeleteImage(image int64) error {
	m.record("delete-image", image, nil)
	return nil
}

func (m *fakeMachines) Delete(id int64) error {
	m.record("delete", id, nil)
	return nil
}

func fakeDigest(id int64) string { return fmt.Sprintf("sha256:disk-of-%d", id) }

// ops returns the operations recorded for server id, in order.
func (m *fakeMachines) ops(id int64) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, c := range m.calls {
		if c.id == id {
			out = append(out, c.op)
		}
	}
	return out
}

// provisions returns the Provision calls for server id.
func (m *fakeMachines) provisions(id int64) []call {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []call
	for _, c := range m.calls {
		if c.id == id && c.op == "provision" {
			out = append(out, c)
		}
	}
	return out
}

// boots returns the rescue argument of every Boot of server id.
func (m *fakeMachines) boots(id int64) []*Rescue {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Rescue
	for _, c := range m.calls {
		if c.id == id && c.op == "boot" {
			out = append(out, c.rescue)
		}
	}
	return out
}

// testEnv is a started cloud, a fake behind it and a client in front.
type testEnv struct {
	cloud    *Cloud
	machines *fakeMachines
	client   *hcloud.Client
	url      string
}

func newEnv(t *testing.T, opts Options) *testEnv {
	t.Helper()
	m := &fakeMachines{}
	opts.Machines = m
	if opts.ActionDuration == 0 {
		opts.ActionDuration = 10 * time.Millisecond
	}
	c := New(opts)
	url, err := c.Start()
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return &testEnv{cloud: c, machines: m, client: newClient(url, DefaultToken, 5), url: url}
}

func newClient(url, token string, retries int) *hcloud.Client {
	return hcloud.NewClient(
		hcloud.WithEndpoint(url),
		hcloud.WithToken(token),
		hcloud.WithPollOpts(hcloud.PollOpts{BackoffFunc: hcloud.ConstantBackoff(2 * time.Millisecond)}),
		hcloud.WithRetryOpts(hcloud.RetryOpts{BackoffFunc: hcloud.ConstantBackoff(time.Millisecond), MaxRetries: retries}),
	)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// newPublicKey returns a fresh authorized_keys line.
func newPublicKey(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(ssh.MarshalAuthorizedKey(sp))
}

// createServer creates a server and waits for its create (and start) actions.
func (e *testEnv) createServer(t *testing.T, opts hcloud.ServerCreateOpts) *hcloud.Server {
	t.Helper()
	if opts.ServerType == nil {
		opts.ServerType = &hcloud.ServerType{Name: "cx23"}
	}
	if opts.Image == nil {
		opts.Image = &hcloud.Image{Name: "debian-12"}
	}
	res, _, err := e.client.Server.Create(ctx(t), opts)
	if err != nil {
		t.Fatalf("create server %s: %v", opts.Name, err)
	}
	if err := e.client.Action.WaitFor(ctx(t), append([]*hcloud.Action{res.Action}, res.NextActions...)...); err != nil {
		t.Fatalf("wait for create of %s: %v", opts.Name, err)
	}
	return e.getServer(t, res.Server.ID)
}

func (e *testEnv) getServer(t *testing.T, id int64) *hcloud.Server {
	t.Helper()
	s := e.listedServer(t, id)
	if s == nil {
		t.Fatalf("server %d is not listed", id)
	}
	return s
}

// listedServer finds server id in the server list, nil if it is not there:
// the cloud serves no GET /servers/{id}, which nothing but a test would call.
func (e *testEnv) listedServer(t *testing.T, id int64) *hcloud.Server {
	t.Helper()
	all, err := e.client.Server.All(ctx(t))
	if err != nil {
		t.Fatalf("list servers: %v", err)
	}
	for _, s := range all {
		if s.ID == id {
			return s
		}
	}
	return nil
}

func (e *testEnv) wait(t *testing.T, a *hcloud.Action, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("start action: %v", err)
	}
	if err := e.client.Action.WaitFor(ctx(t), a); err != nil {
		t.Fatalf("wait for %s: %v", a.Command, err)
	}
}

// wantAPIError checks that err is an API error with code and HTTP status.
func wantAPIError(t *testing.T, err error, code hcloud.ErrorCode, status int) {
	t.Helper()
	var apiErr hcloud.Error
	if !errors.As(err, &apiErr) {
		t.Fatalf("error = %v, want API error %s", err, code)
	}
	if apiErr.Code != code {
		t.Fatalf("error code = %s (%v), want %s", apiErr.Code, err, code)
	}
	if got := apiErr.Response().StatusCode; got != status {
		t.Fatalf("status of %s = %d, want %d", code, got, status)
	}
}

// eventually polls cond until it holds or a second passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func hasOp(ops []string, op string) bool { return slices.Contains(ops, op) }
