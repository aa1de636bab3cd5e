package build

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/gpt"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/gpt/gpttest"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
)

// recorder is the Builder's Hetzner project in unit tests: the real client
// against infra/fakehcloud (localcloud_test.go), plus what the local world cannot
// do itself: it records the calls in their order, and runs a hook before
// each, through which a test acts as another invocation between two calls.
type recorder struct {
	c *cloud.Client

	mu      sync.Mutex
	calls   []string                 // each call's name; some carry a detail after ":"
	creates []cloud.CreateServerOpts // what each CreateServer asked for
	// hook, if set, runs before a call is made, once it is recorded, with
	// the recorded name. It runs with the recorder locked: it acts through
	// the localCloud's own client, never the recorder.
	hook func(call string)
}

func (r *recorder) record(call string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call)
	if r.hook != nil {
		r.hook(call)
	}
}

// callLog returns the calls so far; resetCalls forgets them.
func (r *recorder) callLog() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

func (r *recorder) resetCalls() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = nil
}

func (r *recorder) createLog() []cloud.CreateServerOpts {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]cloud.CreateServerOpts(nil), r.creates...)
}

func (r *recorder) ServerByName(ctx context.Context, name string) (*hcloud.Server, error) {
	r.record("ServerByName")
	return r.c.ServerByName(ctx, name)
}

func (r *recorder) ServerTypes(ctx context.Context) ([]*hcloud.ServerType, error) {
	r.record("ServerTypes")
	return r.c.ServerTypes(ctx)
}

func (r *recorder) CreateServer(ctx context.Context, o cloud.CreateServerOpts) (*hcloud.Server, error) {
	r.mu.Lock()
	r.creates = append(r.creates, o)
	r.mu.Unlock()
	r.record("CreateServer")
	return r.c.CreateServer(ctx, o)
}

// SetServerLabels is recorded with the step the labels checkpoint.
func (r *recorder) SetServerLabels(ctx context.Context, s *hcloud.Server, labels map[string]string) error {
	r.record("SetServerLabels:" + labels[label.Step])
	return r.c.SetServerLabels(ctx, s, labels)
}

func (r *recorder) DeleteServer(ctx context.Context, s *hcloud.Server) error {
	r.record("DeleteServer")
	return r.c.DeleteServer(ctx, s)
}

func (r *recorder) EnableRescue(ctx context.Context, s *hcloud.Server, k *hcloud.SSHKey) error {
	r.record("EnableRescue")
	return r.c.EnableRescue(ctx, s, k)
}

func (r *recorder) Boot(ctx context.Context, s *hcloud.Server) error {
	r.record("Boot")
	return r.c.Boot(ctx, s)
}

func (r *recorder) PowerOff(ctx context.Context, s *hcloud.Server) error {
	r.record("PowerOff")
	return r.c.PowerOff(ctx, s)
}

func (r *recorder) CreateSnapshot(ctx context.Context, s *hcloud.Server, desc string, labels map[string]string) (*hcloud.Image, error) {
	r.record("CreateSnapshot")
	return r.c.CreateSnapshot(ctx, s, desc, labels)
}

func (r *recorder) Snapshots(ctx context.Context, selector string) ([]*hcloud.Image, error) {
	r.record("Snapshots")
	return r.c.Snapshots(ctx, selector)
}

func (r *recorder) DeleteImage(ctx context.Context, img *hcloud.Image) error {
	r.record("DeleteImage")
	return r.c.DeleteImage(ctx, img)
}

func (r *recorder) SetImageLabels(ctx context.Context, img *hcloud.Image, labels map[string]string) error {
	r.record("SetImageLabels")
	return r.c.SetImageLabels(ctx, img, labels)
}

// CreateSSHKey is recorded as CreateSSHKey:failure when it writes a
// failure record.
func (r *recorder) CreateSSHKey(ctx context.Context, name, pub string, labels map[string]string) (*hcloud.SSHKey, error) {
	call := "CreateSSHKey"
	if labels[label.Role] == label.RoleFailure {
		call += ":failure"
	}
	r.record(call)
	return r.c.CreateSSHKey(ctx, name, pub, labels)
}

func (r *recorder) SSHKeyByName(ctx context.Context, name string) (*hcloud.SSHKey, error) {
	r.record("SSHKeyByName")
	return r.c.SSHKeyByName(ctx, name)
}

func (r *recorder) SetSSHKeyLabels(ctx context.Context, k *hcloud.SSHKey, labels map[string]string) error {
	r.record("SetSSHKeyLabels")
	return r.c.SetSSHKeyLabels(ctx, k, labels)
}

func (r *recorder) DeleteSSHKey(ctx context.Context, k *hcloud.SSHKey) error {
	r.record("DeleteSSHKey")
	return r.c.DeleteSSHKey(ctx, k)
}

// fakeRemote stands in for the rescue system's SSH session, as the local
// one (infra/fakerescue) needs root: it answers the install script with
// failRun, and the disk size and reads that verify the written disk from
// table, a disk image.
type fakeRemote struct {
	mu       sync.Mutex
	commands []string // each with its stdin, if any, after a newline
	failRun  error    // what the install script returns
	table    []byte
}

func (r *fakeRemote) RunStdin(_ context.Context, cmd string, stdin io.Reader, stdout io.Writer) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := cmd
	if stdin != nil {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return err
		}
		rec += "\n" + string(b)
	}
	r.commands = append(r.commands, rec)
	switch cmd {
	case scriptCommand:
		return r.failRun
	case diskSizeCommand:
		_, err := fmt.Fprintln(stdout, len(r.table))
		return err
	}
	var skip, count int
	if n, err := fmt.Sscanf(cmd, readCommand, &skip, &count); err != nil || n != 2 {
		return fmt.Errorf("fake rescue system: unexpected command %q", cmd)
	}
	start := min(skip*gpt.SectorSize, len(r.table))
	_, err := stdout.Write(r.table[start:min(start+count*gpt.SectorSize, len(r.table))])
	return err
}

func (r *fakeRemote) Close() error { return nil }

// talosTable is the disk of a v1.13 amd64 Talos image.
var talosTable = gpttest.Image(8<<20, gpttest.Layout("EFI", "BIOS", "BOOT", "META"))

// tableWithoutMETA is a GPT disk that is no Talos image.
var tableWithoutMETA = gpttest.Image(8<<20, gpttest.Layout("EFI", "BIOS", "BOOT"))

// mbrDisk returns a disk with an MBR partition table: one Linux partition.
func mbrDisk() []byte {
	d := make([]byte, 8<<20)
	rec := d[446:462]
	rec[4] = 0x83
	binary.LittleEndian.PutUint32(rec[8:12], 2048)
	binary.LittleEndian.PutUint32(rec[12:16], 8192)
	d[510], d[511] = 0x55, 0xAA
	return d
}
