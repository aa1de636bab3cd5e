package cloud

import (
	"context"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
)

func start(t *testing.T, f fakehcloud.Faults) (*Client, *fakehcloud.Cloud) {
	t.Helper()
	emu := fakehcloud.New(fakehcloud.Options{Faults: f, Seed: 3, ActionDuration: 20 * time.Millisecond})
	url, err := emu.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	return New(Options{Token: fakehcloud.DefaultToken, Endpoint: url, PollInterval: 50 * time.Millisecond,
		RetryBase: 10 * time.Millisecond, MaxRetries: 8}), emu
}

// TestLifecycleThroughFaults drives a server through what a build does
// while the API answers 503 unavailable and 423 locked now and then:
// hcloud-go retries neither, the client's transport does.
func TestLifecycleThroughFaults(t *testing.T) {
	c, emu := start(t, fakehcloud.Faults{Transient: 0.3, TransientErrors: []fakehcloud.Fault{fakehcloud.FaultUnavailable}, Locked: 0.3})
	ctx := context.Background()
	key, err := c.CreateSSHKey(ctx, "k", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEbWUwSzv9S5TvhhYk6kZ5MwdmZ2qzK7W0ClPXiGwD9D", nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := c.CreateServer(ctx, CreateServerOpts{Name: "s", ServerType: "cx23", Location: "fsn1", Image: "debian-12",
		Labels: map[string]string{"step": "install"}})
	if err != nil {
		t.Fatal(err)
	}
	if srv.Status != hcloud.ServerStatusOff {
		t.Errorf("created server is %s, want off", srv.Status)
	}
	for _, step := range []func() error{
		func() error { return c.EnableRescue(ctx, srv, key) },
		func() error { return c.Boot(ctx, srv) },
		func() error { return c.PowerOff(ctx, srv) },
		func() error { return c.SetServerLabels(ctx, srv, map[string]string{"step": "snapshot"}) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	// create_image is the one call whose `locked` comes back to the caller
	// (see retryTransport); the builder asks again after looking for it.
	var img *hcloud.Image
	for img == nil {
		if img, err = c.CreateSnapshot(ctx, srv, "d", map[string]string{"os": "talos"}); err != nil && !IsLocked(err) {
			t.Fatal(err)
		}
	}
	snaps, err := c.Snapshots(ctx, "os=talos")
	if err != nil || len(snaps) != 1 || snaps[0].ID != img.ID {
		t.Fatalf("snapshots = %v, %v", snaps, err)
	}
	if err := c.DeleteServer(ctx, srv); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteServer(ctx, srv); err != nil {
		t.Errorf("deleting a deleted server: %v", err)
	}
	if got, err := c.ServerByName(ctx, "s"); got != nil || err != nil {
		t.Errorf("ServerByName after delete = %v, %v", got, err)
	}
	var retried int
	for _, r := range emu.Requests() {
		if r.Status == 503 || r.Status == 423 {
			retried++
		}
	}
	if retried == 0 {
		t.Error("no fault was injected")
	}
}

// TestCreateImageLockedIsNotRetried: a create_image answered `locked` comes
// back at once, while other server actions are retried through it.
func TestCreateImageLockedIsNotRetried(t *testing.T) {
	c, emu := start(t, fakehcloud.Faults{})
	ctx := context.Background()
	srv, err := c.CreateServer(ctx, CreateServerOpts{Name: "s", ServerType: "cx23", Location: "fsn1", Image: "debian-12"})
	if err != nil {
		t.Fatal(err)
	}
	emu.SetFaults(fakehcloud.Faults{Locked: 1})
	if _, err := c.CreateSnapshot(ctx, srv, "d", nil); !IsLocked(err) {
		t.Fatalf("create_image = %v, want locked", err)
	}
	if n := emu.CountRequests("POST", "/v1/servers/*/actions/create_image"); n != 1 {
		t.Errorf("%d create_image requests, want 1", n)
	}
	if err := c.PowerOff(ctx, srv); !IsLocked(err) {
		t.Fatalf("poweroff = %v, want locked after the retries", err)
	}
	if n := emu.CountRequests("POST", "/v1/servers/*/actions/poweroff"); n != 9 {
		t.Errorf("%d poweroff requests, want 9 (1 + MaxRetries)", n)
	}
}

func TestErrorClasses(t *testing.T) {
	c, _ := start(t, fakehcloud.Faults{Unavailable: []fakehcloud.Placement{{ServerType: "cax11", Location: "fsn1"}}})
	ctx := context.Background()
	create := func(name, typ, loc string) error {
		_, err := c.CreateServer(ctx, CreateServerOpts{Name: name, ServerType: typ, Location: loc, Image: "debian-12"})
		return err
	}
	if err := create("a", "cax11", "fsn1"); !IsNoCapacity(err) {
		t.Errorf("out of stock: %v", err)
	}
	if err := create("b", "cax11", "ash"); !IsNoCapacity(err) {
		t.Errorf("not sold in the location: %v", err)
	}
	if err := create("c", "cx23", "fsn1"); err != nil {
		t.Fatal(err)
	}
	if err := create("c", "cx23", "fsn1"); !IsConflict(err) || IsNoCapacity(err) {
		t.Errorf("same name: %v", err)
	}
	if err := create("d", "cx22", "fsn1"); err == nil || IsNoCapacity(err) || IsLimitExceeded(err) {
		t.Errorf("removed type: %v", err)
	}
	if err := create("e", "cpx11", "fsn1"); !IsNoCapacity(err) {
		t.Errorf("a type no longer sold in the location: %v", err)
	}
}

// TestServerLimit: the project's server quota is neither a capacity
// problem (no other location helps) nor retried.
func TestServerLimit(t *testing.T) {
	c, emu := start(t, fakehcloud.Faults{ServerLimit: 1})
	ctx := context.Background()
	if _, err := c.CreateServer(ctx, CreateServerOpts{Name: "a", ServerType: "cx23", Location: "fsn1", Image: "debian-13"}); err != nil {
		t.Fatal(err)
	}
	_, err := c.CreateServer(ctx, CreateServerOpts{Name: "b", ServerType: "cx23", Location: "nbg1", Image: "debian-13"})
	if !IsLimitExceeded(err) || IsNoCapacity(err) || IsConflict(err) {
		t.Errorf("over the quota: %v", err)
	}
	if n := emu.CountRequests("POST", "/v1/servers"); n != 2 {
		t.Errorf("%d server creates, want 2 (the quota is not retried)", n)
	}
}

// TestCreateServerWithKeyGetsNoRootPassword: the key passed at create is
// what keeps Hetzner from mailing a root password.
func TestCreateServerWithKeyGetsNoRootPassword(t *testing.T) {
	c, emu := start(t, fakehcloud.Faults{})
	ctx := context.Background()
	key, err := c.CreateSSHKey(ctx, "k", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEbWUwSzv9S5TvhhYk6kZ5MwdmZ2qzK7W0ClPXiGwD9D", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateServer(ctx, CreateServerOpts{Name: "a", ServerType: "cax11", Location: "fsn1", Image: "debian-13",
		SSHKeys: []*hcloud.SSHKey{key}}); err != nil {
		t.Fatal(err)
	}
	if n := emu.RootPasswords(); n != 0 {
		t.Errorf("%d root passwords issued", n)
	}
	if _, err := c.CreateServer(ctx, CreateServerOpts{Name: "b", ServerType: "cax11", Location: "fsn1", Image: "debian-13"}); err != nil {
		t.Fatal(err)
	}
	if n := emu.RootPasswords(); n != 1 {
		t.Errorf("a key-less create: %d root passwords, want 1", n)
	}
}

func TestServerTypes(t *testing.T) {
	c, _ := start(t, fakehcloud.Faults{})
	ts, err := c.ServerTypes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	disks := map[string]int{}
	for _, st := range ts {
		disks[st.Name] = st.Disk
	}
	want := map[string]int{"cx23": 40, "cpx11": 40, "cpx22": 80, "cax11": 40, "cax21": 80}
	for name, disk := range want {
		if disks[name] != disk {
			t.Errorf("%s: %d GB disk, want %d", name, disks[name], disk)
		}
	}
}
