package fakehcloud

import (
	"context"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hcloud-k8s/hcloud-k8s/infra/disk"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakefactory"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakerescue"
	"github.com/hcloud-k8s/hcloud-k8s/infra/testenv"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// snapshot creates a snapshot of srv and waits until it is available.
func (e *testEnv) snapshot(t *testing.T, srv *hcloud.Server) *hcloud.Image {
	t.Helper()
	res, _, err := e.client.Server.CreateImage(ctx(t), srv, &hcloud.ServerCreateImageOpts{Type: hcloud.ImageTypeSnapshot})
	e.wait(t, res.Action, err)
	img, _, err := e.client.Image.GetByID(ctx(t), res.Image.ID)
	if err != nil || img.Status != hcloud.ImageStatusAvailable {
		t.Fatalf("snapshot: %+v, %v", img, err)
	}
	return img
}

func TestServerFromSnapshot(t *testing.T) {
	e := newEnv(t, Options{})
	arm := e.createServer(t, hcloud.ServerCreateOpts{Name: "build-arm", ServerType: &hcloud.ServerType{Name: "cax11"},
		Image: &hcloud.Image{Name: "debian-12"}, StartAfterCreate: hcloud.Ptr(false)})
	if got := e.machines.provisions(arm.ID); len(got) != 1 || got[0].arch != "arm" || got[0].image != arm.Image.ID {
		t.Fatalf("provisions of the build server = %+v, want one for arm and image %d", got, arm.Image.ID)
	}
	img := e.snapshot(t, arm)
	if view, _ := e.cloud.Image(img.ID); view.Digest != fakeDigest(arm.ID) {
		t.Errorf("snapshot digest %s, want %s", view.Digest, fakeDigest(arm.ID))
	}
	srv := e.createServer(t, hcloud.ServerCreateOpts{Name: "verify-arm", ServerType: &hcloud.ServerType{Name: "cax11"},
		Image: &hcloud.Image{ID: img.ID}})
	if got := e.machines.provisions(srv.ID); len(got) != 1 || got[0].arch != "arm" || got[0].image != img.ID {
		t.Fatalf("provisions = %+v, want one for arm and snapshot %d", got, img.ID)
	}
	if srv.Status != hcloud.ServerStatusRunning || srv.Image.ID != img.ID {
		t.Errorf("server from snapshot: status %s, image %+v", srv.Status, srv.Image)
	}
	// Provisioned before the boot.
	if ops := e.machines.ops(srv.ID); !slices.Equal(ops, []string{"create", "provision", "boot"}) {
		t.Errorf("machine calls %v", ops)
	}

	// The snapshot's content goes with it.
	_, err := e.client.Image.Delete(ctx(t), img)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(e.machines.ops(img.ID), "delete-image") {
		t.Error("deleting the snapshot kept its disk")
	}
	// So does a backup's, with its server.
	res, _, err := e.client.Server.CreateImage(ctx(t), arm, &hcloud.ServerCreateImageOpts{Type: hcloud.ImageTypeBackup})
	e.wait(t, res.Action, err)
	del, _, err := e.client.Server.DeleteWithResult(ctx(t), arm)
	e.wait(t, del.Action, err)
	if !slices.Contains(e.machines.ops(res.Image.ID), "delete-image") {
		t.Error("deleting the server kept its backup's disk")
	}
}

func TestImageDiskMustFitTheServerType(t *testing.T) {
	e := newEnv(t, Options{})
	big := e.createServer(t, hcloud.ServerCreateOpts{Name: "big", ServerType: &hcloud.ServerType{Name: "cpx22"},
		StartAfterCreate: hcloud.Ptr(false)})
	img := e.snapshot(t, big)
	if img.DiskSize != 80 {
		t.Fatalf("snapshot disk %v, want 80", img.DiskSize)
	}
	_, _, err := e.client.Server.Create(ctx(t), hcloud.ServerCreateOpts{Name: "small", ServerType: &hcloud.ServerType{Name: "cx23"},
		Image: &hcloud.Image{ID: img.ID}})
	wantAPIError(t, err, hcloud.ErrorCodeInvalidInput, http.StatusUnprocessableEntity)
	if !strings.Contains(err.Error(), "image disk is bigger than server type disk") {
		t.Errorf("error %v", err)
	}
	e.createServer(t, hcloud.ServerCreateOpts{Name: "same", ServerType: &hcloud.ServerType{Name: "cpx22"}, Image: &hcloud.Image{ID: img.ID}})
}

func TestCorruptImagesFault(t *testing.T) {
	e := newEnv(t, Options{Faults: Faults{CorruptImages: 1}})
	srv := e.createServer(t, hcloud.ServerCreateOpts{Name: "build", StartAfterCreate: hcloud.Ptr(false)})
	first, second := e.snapshot(t, srv), e.snapshot(t, srv)
	if view, _ := e.cloud.Image(first.ID); view.Digest != "sha256:corrupted-"+strconv.FormatInt(first.ID, 10) || !slices.Contains(e.machines.ops(first.ID), "corrupt") {
		t.Errorf("first snapshot: digest %s, ops %v; want it corrupted", view.Digest, e.machines.ops(first.ID))
	}
	if view, _ := e.cloud.Image(second.ID); view.Digest != fakeDigest(srv.ID) {
		t.Errorf("second snapshot: digest %s, want the disk's", view.Digest)
	}
}

// poolMachines adapts the rescue pool to Machines, as infra/stack does.
type poolMachines struct{ *fakerescue.Pool }

func (m poolMachines) Boot(id int64, r *Rescue) error {
	return m.Pool.Boot(id, (*fakerescue.Rescue)(r))
}

const talosDelay = 300 * time.Millisecond

// bootEnv is a cloud whose servers are the rescue pool's machines, whose
// disks boot the images of a factory.
type bootEnv struct {
	*testEnv
	pool    *fakerescue.Pool
	factory *fakefactory.Factory
}

func newBootEnv(t *testing.T, faults Faults) *bootEnv {
	t.Helper()
	testenv.NeedRoot(t)
	f := fakefactory.New(fakefactory.Options{Dir: t.TempDir(), Scale: fakefactory.QuickScale})
	t.Cleanup(func() { f.Close() })
	p := fakerescue.New(fakerescue.Options{Dir: t.TempDir(), DiskSize: 256 << 20, Identify: f.Identify, TalosBootDelay: talosDelay})
	c := New(Options{Machines: poolMachines{p}, ActionDuration: 10 * time.Millisecond, Faults: faults})
	url, err := c.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return &bootEnv{testEnv: &testEnv{cloud: c, client: newClient(url, DefaultToken, 5), url: url}, pool: p, factory: f}
}

// build makes a snapshot on a server of typ whose disk holds the factory's
// image of version and arch ("" for an untouched disk), as a build does.
func (e *bootEnv) build(t *testing.T, name, typ, version, arch string) *hcloud.Image {
	t.Helper()
	srv := e.createServer(t, hcloud.ServerCreateOpts{Name: name, ServerType: &hcloud.ServerType{Name: typ},
		StartAfterCreate: hcloud.Ptr(false)})
	if version != "" {
		raw, _, err := e.factory.Image(fakefactory.VanillaSchematic, version, arch)
		if err != nil {
			t.Fatal(err)
		}
		path, err := e.pool.DiskPath(srv.ID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := disk.Copy(path, raw, 256<<20); err != nil {
			t.Fatal(err)
		}
	}
	img := e.snapshot(t, srv)
	del, _, err := e.client.Server.DeleteWithResult(ctx(t), srv)
	e.wait(t, del.Action, err)
	return img
}

// talosVersion asks the server's Talos API for its version until it
// answers or patience ends.
func talosVersion(ip string, patience time.Duration) (talos.VersionInfo, error) {
	deadline := time.Now().Add(patience)
	for {
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		v, err := talos.APIVersion(c, net.JoinHostPort(ip, "50000"))
		cancel()
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			return v, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// eventTime returns when the pool first logged kind for server id.
func (e *bootEnv) eventTime(id int64, kind fakerescue.EventKind) (time.Time, bool) {
	for _, ev := range e.pool.Events() {
		if ev.Server == id && ev.Kind == kind {
			return ev.Time, true
		}
	}
	return time.Time{}, false
}

// TestBootFromSnapshot drives the create-from-snapshot with hcloud-go: a
// server created from a snapshot of a Talos image of its architecture
// answers on :50000 after the boot delay; any other snapshot never does.
func TestBootFromSnapshot(t *testing.T) {
	e := newBootEnv(t, Faults{})
	key, _, err := e.client.SSHKey.Create(ctx(t), hcloud.SSHKeyCreateOpts{Name: "lease", PublicKey: newPublicKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, typ     string
		version, arch string // the image the build wrote; "" for none
		corrupt       bool   // the snapshot keeps a damaged disk
		want          string // the version answered; "" if nothing listens
	}{
		{name: "amd64", typ: "cx23", version: "v1.13.9", arch: "amd64", want: "v1.13.9"},
		{name: "arm64", typ: "cax11", version: "v1.13.0", arch: "arm64", want: "v1.13.0"},
		{name: "arm64-on-x86", typ: "cx23", version: "v1.13.9", arch: "arm64"},
		{name: "corrupted", typ: "cx23", version: "v1.13.9", arch: "amd64", corrupt: true},
		{name: "not-talos", typ: "cax11"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.corrupt {
				e.cloud.SetFaults(Faults{CorruptImages: 1})
			}
			img := e.build(t, "build-"+tt.name, tt.typ, tt.version, tt.arch)
			res, _, err := e.client.Server.Create(ctx(t), hcloud.ServerCreateOpts{
				Name: "verify-" + tt.name, ServerType: &hcloud.ServerType{Name: tt.typ}, Image: &hcloud.Image{ID: img.ID},
				SSHKeys: []*hcloud.SSHKey{key},
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := e.client.Action.WaitFor(ctx(t), append([]*hcloud.Action{res.Action}, res.NextActions...)...); err != nil {
				t.Fatal(err)
			}
			ip := res.Server.PublicNet.IPv4.IP.String()
			if tt.want == "" {
				time.Sleep(3 * talosDelay)
				if _, ok := e.eventTime(res.Server.ID, fakerescue.EventNoBoot); !ok {
					t.Error("no no-boot event")
				}
				if c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, "50000"), time.Second); err == nil {
					c.Close()
					t.Fatal("the Talos API listens")
				}
				return
			}
			v, err := talosVersion(ip, 10*time.Second)
			if err != nil || v.Tag != tt.want || v.Arch != tt.arch {
				t.Fatalf("Version = %+v, %v; want %s %s", v, err, tt.want, tt.arch)
			}
			booted, _ := e.eventTime(res.Server.ID, fakerescue.EventBoot)
			up, _ := e.eventTime(res.Server.ID, fakerescue.EventTalos)
			if up.Sub(booted) < talosDelay {
				t.Errorf("the Talos API came up %v after the boot, before the delay %v", up.Sub(booted), talosDelay)
			}

			srv := e.getServer(t, res.Server.ID)
			a, _, err := e.client.Server.Poweroff(ctx(t), srv)
			e.wait(t, a, err)
			if _, err := talosVersion(ip, 0); status.Code(err) != codes.Unavailable {
				t.Fatalf("after poweroff: %v, want unavailable", err)
			}
			a, _, err = e.client.Server.Poweron(ctx(t), srv)
			e.wait(t, a, err)
			if v, err := talosVersion(ip, 10*time.Second); err != nil || v.Tag != tt.want {
				t.Fatalf("after poweron: %+v, %v", v, err)
			}
			del, _, err := e.client.Server.DeleteWithResult(ctx(t), srv)
			e.wait(t, del.Action, err)
			if _, err := talosVersion(ip, 0); status.Code(err) != codes.Unavailable {
				t.Fatalf("after delete: %v, want unavailable", err)
			}
		})
	}
}
