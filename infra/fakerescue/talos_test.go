package fakerescue_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hcloud-k8s/hcloud-k8s/infra/disk"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakefactory"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakerescue"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

const talosDelay = 300 * time.Millisecond

// talosPool returns a pool whose disks boot the images of a small factory.
func talosPool(t *testing.T, opts fakerescue.Options) (*fakerescue.Pool, *fakefactory.Factory) {
	t.Helper()
	f := fakefactory.New(fakefactory.Options{Dir: t.TempDir(), Scale: fakefactory.QuickScale})
	t.Cleanup(func() { f.Close() })
	opts.Identify = f.Identify
	if opts.TalosBootDelay == 0 {
		opts.TalosBootDelay = talosDelay
	}
	return newPool(t, opts), f
}

// writeImage puts the factory's image of version and arch on machine id's
// disk, as a build does.
func writeImage(t *testing.T, p *fakerescue.Pool, f *fakefactory.Factory, id int64, version, arch string) {
	t.Helper()
	raw, _, err := f.Image(fakefactory.VanillaSchematic, version, arch)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := disk.Copy(diskPath(t, p, id), raw, testDiskSize); err != nil {
		t.Fatal(err)
	}
}

// overwrite writes b at the start of the file path, keeping its size.
func overwrite(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
}

func talosAddr(ip string) string { return net.JoinHostPort(ip, "50000") }

// waitVersion asks the Talos API at ip for its version until it listens or
// patience ends.
func waitVersion(ip string, patience time.Duration) (talos.VersionInfo, error) {
	deadline := time.Now().Add(patience)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		v, err := talos.APIVersion(ctx, talosAddr(ip))
		cancel()
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			return v, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// listensTalos reports whether something accepts TCP connections on ip:50000.
func listensTalos(ip string) bool {
	c, err := net.DialTimeout("tcp", talosAddr(ip), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// waitEvent waits for an event of kind for server id and returns it.
func waitEvent(t *testing.T, p *fakerescue.Pool, id int64, kind fakerescue.EventKind) fakerescue.Event {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		events := p.Events()
		if i := slices.IndexFunc(events, func(e fakerescue.Event) bool { return e.Server == id && e.Kind == kind }); i >= 0 {
			return events[i]
		}
	}
	t.Fatalf("no %s event for machine %d", kind, id)
	return fakerescue.Event{}
}

func TestBootFromDisk(t *testing.T) {
	t.Parallel()
	p, f := talosPool(t, fakerescue.Options{})
	tests := []struct {
		name          string
		machineArch   string // "" leaves the machine unprovisioned
		version, arch string // the image on the disk; "" for none
		corrupt       bool   // overwrite the start of the disk after writing
		want          string // the version answered; "" when nothing listens
		unimplemented bool   // Version answers Unimplemented (Talos < v1.13.0-beta.0)
		noBoot        string // part of the no-boot event's detail
	}{
		{name: "amd64 image on x86", machineArch: "x86", version: "v1.13.9", arch: "amd64", want: "v1.13.9"},
		{name: "arm64 image on arm", machineArch: "arm", version: "v1.13.9", arch: "arm64", want: "v1.13.9"},
		{name: "v1.12 listens without telling its version", machineArch: "x86", version: "v1.12.8", arch: "amd64", unimplemented: true},
		{name: "arm64 image on x86", machineArch: "x86", version: "v1.13.9", arch: "arm64", noBoot: "arm64 image on an x86 machine"},
		{name: "amd64 image on arm", machineArch: "arm", version: "v1.13.9", arch: "amd64", noBoot: "amd64 image on an arm machine"},
		{name: "corrupted image", machineArch: "x86", version: "v1.13.9", arch: "amd64", corrupt: true, noBoot: "holds no Talos image"},
		{name: "empty disk", machineArch: "x86", noBoot: "holds no Talos image"},
		{name: "never provisioned", version: "v1.13.9", arch: "amd64", noBoot: "never provisioned"},
	}
	for i, tt := range tests {
		id := int64(i + 1)
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ip, err := p.Create(id, 0)
			if err != nil {
				t.Fatal(err)
			}
			if tt.machineArch != "" {
				if err := p.Provision(id, tt.machineArch, 0); err != nil {
					t.Fatal(err)
				}
			}
			if tt.version != "" {
				writeImage(t, p, f, id, tt.version, tt.arch)
			}
			if tt.corrupt {
				overwrite(t, diskPath(t, p, id), bytes.Repeat([]byte{0xa5}, 1024))
			}
			booted := time.Now()
			if err := p.Boot(id, nil); err != nil {
				t.Fatal(err)
			}
			if tt.noBoot != "" {
				if e := waitEvent(t, p, id, fakerescue.EventNoBoot); !strings.Contains(e.Detail, tt.noBoot) {
					t.Errorf("no-boot event %q, want it to say %q", e.Detail, tt.noBoot)
				}
				time.Sleep(2 * talosDelay)
				if listensTalos(ip) {
					t.Error("the Talos API listens")
				}
				return
			}
			v, err := waitVersion(ip, 10*time.Second)
			if took := time.Since(booted); took < talosDelay {
				t.Errorf("the Talos API answered %v after boot, before the boot delay %v", took, talosDelay)
			}
			if tt.unimplemented {
				if status.Code(err) != codes.Unimplemented {
					t.Fatalf("Version = %+v, %v; want Unimplemented", v, err)
				}
				return
			}
			want := talos.VersionInfo{Tag: tt.want, OS: "linux", Arch: tt.arch, Platform: "hcloud", Mode: "cloud"}
			if err != nil || v != want {
				t.Fatalf("Version = %+v, %v; want %+v", v, err, want)
			}
			if e := waitEvent(t, p, id, fakerescue.EventTalos); e.Detail != tt.want+" "+talosAddr(ip) {
				t.Errorf("talos event %q", e.Detail)
			}
		})
	}
}

// leafCert returns the certificate the Talos API at ip presents.
func leafCert(t *testing.T, ip string) []byte {
	t.Helper()
	c, err := tls.Dial("tcp", talosAddr(ip), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Raw
}

func TestPowerStopsTalos(t *testing.T) {
	t.Parallel()
	p, f := talosPool(t, fakerescue.Options{TalosBootDelay: 20 * time.Millisecond})
	ip, err := p.Create(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Provision(1, "x86", 0); err != nil {
		t.Fatal(err)
	}
	writeImage(t, p, f, 1, "v1.13.9", "amd64")
	up := func() {
		t.Helper()
		if err := p.Boot(1, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := waitVersion(ip, 10*time.Second); err != nil {
			t.Fatalf("after boot: %v", err)
		}
	}
	up()
	first := leafCert(t, ip)
	conn, err := tls.Dial("tcp", talosAddr(ip), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	if err := p.Halt(1); err != nil {
		t.Fatal(err)
	}
	if listensTalos(ip) {
		t.Fatal("the Talos API listens after Halt")
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var ne net.Error
	if _, err := conn.Read(make([]byte, 1)); err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("open connection after Halt: %v, want it dropped", err)
	}

	// A new boot makes a new maintenance CA and certificate.
	up()
	if bytes.Equal(leafCert(t, ip), first) {
		t.Error("the second boot presents the first boot's certificate")
	}

	// Booting into rescue stops the Talos API.
	_, authorized := newKey(t)
	if err := p.Boot(1, &fakerescue.Rescue{AuthorizedKeys: []string{authorized}}); err != nil {
		t.Fatal(err)
	}
	if listensTalos(ip) {
		t.Error("the Talos API listens in rescue")
	}
	if err := p.Halt(1); err != nil {
		t.Fatal(err)
	}

	up()
	if err := p.Delete(1); err != nil {
		t.Fatal(err)
	}
	if listensTalos(ip) {
		t.Error("the Talos API listens after Delete")
	}
}

func TestHaltBeforeTheTalosAPIComesUp(t *testing.T) {
	t.Parallel()
	p, f := talosPool(t, fakerescue.Options{TalosBootDelay: time.Hour})
	p.SetTalosBootDelay(talosDelay)
	ip, err := p.Create(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Provision(1, "arm", 0); err != nil {
		t.Fatal(err)
	}
	writeImage(t, p, f, 1, "v1.13.9", "arm64")
	if err := p.Boot(1, nil); err != nil {
		t.Fatal(err)
	}
	if err := p.Halt(1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * talosDelay)
	if listensTalos(ip) {
		t.Error("the Talos API came up after Halt")
	}
	if slices.ContainsFunc(p.Events(), func(e fakerescue.Event) bool { return e.Kind == fakerescue.EventTalos }) {
		t.Error("talos event after Halt")
	}
}

func TestSaveImageAndProvision(t *testing.T) {
	t.Parallel()
	p, f := talosPool(t, fakerescue.Options{Dirty: true, TalosBootDelay: 20 * time.Millisecond})
	const image, unknown = 400_000_001, 400_000_999
	if _, err := p.Create(1, 0); err != nil {
		t.Fatal(err)
	}
	writeImage(t, p, f, 1, "v1.13.9", "amd64")
	_, want, err := f.Image(fakefactory.VanillaSchematic, "v1.13.9", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := p.SaveImage(1, image); err != nil || got != want {
		t.Fatalf("SaveImage = %s, %v; want the image's digest %s", got, err, want)
	}
	// The source disk may change afterwards; the saved image does not.
	overwrite(t, diskPath(t, p, 1), []byte("changed"))

	ip, err := p.Create(2, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Provision(2, "x86", image); err != nil {
		t.Fatal(err)
	}
	path := diskPath(t, p, 2)
	if got := diskDigest(t, p, 2); got != want {
		t.Errorf("disk from the image: %s, want %s", got, want)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != testDiskSize {
		t.Errorf("disk from the image: %v, %v; want %d bytes", st, err, testDiskSize)
	}
	if err := p.Boot(2, nil); err != nil {
		t.Fatal(err)
	}
	if v, err := waitVersion(ip, 10*time.Second); err != nil || v.Tag != "v1.13.9" {
		t.Errorf("server from the image: %+v, %v", v, err)
	}

	// An image the pool never saved leaves the disk as Create made it.
	if _, err := p.Create(3, 0); err != nil {
		t.Fatal(err)
	}
	if err := p.Provision(3, "x86", unknown); err != nil {
		t.Fatal(err)
	}
	if got := diskDigest(t, p, 3); got == want || got == emptyDigest {
		t.Errorf("disk of a system image: %s, want the dirty disk Create made", got)
	}

	corrupted, err := p.CorruptImage(image)
	if err != nil || corrupted == want {
		t.Fatalf("CorruptImage = %s, %v", corrupted, err)
	}
	ip4, err := p.Create(4, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Provision(4, "x86", image); err != nil {
		t.Fatal(err)
	}
	if got := diskDigest(t, p, 4); got != corrupted {
		t.Errorf("disk from the corrupted image: %s, want %s", got, corrupted)
	}
	if err := p.Boot(4, nil); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, p, 4, fakerescue.EventNoBoot)
	if listensTalos(ip4) {
		t.Error("a server from the corrupted image runs the Talos API")
	}

	if err := p.DeleteImage(image); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteImage(unknown); err != nil {
		t.Errorf("DeleteImage of an image never saved: %v", err)
	}
	if _, err := p.CorruptImage(image); err == nil {
		t.Error("CorruptImage of a deleted image succeeded")
	}
	if err := p.Provision(1, "risc-v", 0); err == nil {
		t.Error("Provision accepted an unknown architecture")
	}
}
