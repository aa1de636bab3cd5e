package build

import (
	"context"
	"errors"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
)

// The local Hetzner API of these tests boots nothing: a fake probe stands
// in for the Talos API of the boot server (functions/builder boots real
// disks).

// consumerSelector is what a consumer selects the target's snapshot with.
const consumerSelector = "os=talos,talos_version=v1.13.9"

// bootName is the name of target's boot server.
var bootName = "boot-" + strings.TrimPrefix(target.Name(""), "talos-")

// fakeProbe answers the boot check with answer(n) on its n-th call (from
// 0), after checking what the cloud shows while the check runs: the boot
// server exists, made from the build's snapshot, which no consumer
// selects yet.
type fakeProbe struct {
	w      *localCloud
	answer func(n int) (string, error)

	mu    sync.Mutex
	addrs []string // each call's address
}

func (p *fakeProbe) probe(_ context.Context, addr string) (string, error) {
	p.mu.Lock()
	n := len(p.addrs)
	p.addrs = append(p.addrs, addr)
	p.mu.Unlock()
	w := p.w
	i := slices.IndexFunc(w.emu.Servers(), func(s fakehcloud.Server) bool { return s.Name == bootName })
	if i < 0 {
		w.t.Errorf("probe %d: no boot server", n)
		return "", errors.New("no boot server")
	}
	srv := w.emu.Servers()[i]
	img, ok := w.emu.Image(srv.Image)
	if want := net.JoinHostPort(srv.IPv4, "50000"); addr != want {
		w.t.Errorf("probe %d at %s, want the boot server's %s", n, addr, want)
	}
	if srv.Labels[label.Role] != label.RoleBootCheck || !ok || img.Type != "snapshot" {
		w.t.Errorf("probe %d: boot server %+v from image %+v, want a boot-check server from a snapshot", n, srv, img)
	}
	if img.Labels[label.Pending] != "verify" || img.Labels[label.OS] != "" || w.selects(consumerSelector, img.ID) {
		w.t.Errorf("probe %d: snapshot %d with labels %v is visible to consumers before it booted", n, img.ID, img.Labels)
	}
	return p.answer(n)
}

func (p *fakeProbe) calls() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.addrs)
}

// verifyBuilder returns a Builder on w that checks boots with probe, whose
// boot check lasts at most timeout.
func verifyBuilder(w *localCloud, p *fakeProbe, timeout time.Duration) *Builder {
	b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{VerifyBoot: true, VerifyTimeout: timeout})
	b.probe = p.probe
	return b
}

// refused answers as a port nothing listens on.
var refused = errors.New("connect: connection refused")

// TestVerify builds with the boot check: a snapshot is published (the
// consumer labels in place of the pending mark, its created time kept)
// only once the Talos API of a server booted from it answers, with the
// target's version or none (maintenance mode before v1.13). One that does
// not boot within VerifyTimeout, or boots another version, is deleted and
// fails the build for good, recorded. Either way the boot server goes.
func TestVerify(t *testing.T) {
	build := []string{"CreateSSHKey", "CreateServer", "EnableRescue", "Boot", "PowerOff", "SetServerLabels:snapshot",
		"SetServerLabels:wait", "CreateSnapshot"}
	published := append(slices.Clone(build), "CreateServer", "Boot", "SetImageLabels", "DeleteServer", "DeleteServer", "DeleteSSHKey")
	discarded := append(slices.Clone(build), "CreateServer", "Boot", "DeleteServer", "SetImageLabels", "DeleteImage",
		"CreateSSHKey:failure", "DeleteServer", "DeleteSSHKey")
	tests := []struct {
		name   string
		answer func(n int) (string, error)
		state  State
		err    string // in the failed result's error
		calls  []string
	}{
		{name: "answers after booting", answer: func(n int) (string, error) {
			if n < 3 {
				return "", refused
			}
			return "v1.13.9", nil
		}, state: Done, calls: published},
		{name: "maintenance mode tells no version", answer: func(int) (string, error) { return "", nil },
			state: Done, calls: published},
		{name: "never answers", answer: func(int) (string, error) { return "", refused }, state: Failed,
			err: "did not answer within", calls: discarded},
		{name: "another version", answer: func(int) (string, error) { return "v1.12.5", nil }, state: Failed,
			err: "booted Talos v1.12.5, not v1.13.9", calls: discarded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newLocalCloud(t)
			p := &fakeProbe{w: w, answer: tt.answer}
			const timeout = 300 * time.Millisecond
			b := verifyBuilder(w, p, timeout)
			// The snapshot as create_image made it, before the check.
			var pending fakehcloud.Image
			w.cloud.hook = func(call string) {
				if call == "CreateServer" && len(w.snapshots()) == 1 {
					pending, _ = w.emu.Image(w.snapshots()[0])
				}
			}
			start := time.Now()
			res := b.Build(context.Background(), target, Request{})
			took := time.Since(start)
			if got := mutating(w.cloud.callLog()); !slices.Equal(got, tt.calls) {
				t.Errorf("calls:\n got %v\nwant %v", got, tt.calls)
			}
			if len(p.calls()) == 0 {
				t.Fatal("the boot was never checked")
			}
			creates := w.cloud.createLog()
			if len(creates) != 2 || creates[1].Name != bootName || creates[1].Snapshot != pending.ID || pending.ID == 0 ||
				len(creates[1].SSHKeys) != 1 || creates[1].Labels[label.Role] != label.RoleBootCheck ||
				creates[1].ServerType != "cx23" || creates[1].Location != "fsn1" {
				t.Errorf("creates %+v, want the build server, then the boot server from snapshot %d on the smallest type with the lease key",
					creates, pending.ID)
			}
			if pending.Labels[label.Pending] != "verify" || pending.Labels[label.OS] != "" {
				t.Errorf("snapshot labels before the check %v, want pending, without os", pending.Labels)
			}
			if s, k, _ := w.counts(); s != 0 || k != 0 {
				t.Errorf("left %d servers, %d keys; want none", s, k)
			}
			rec, recorded := w.record(target)
			if tt.state == Failed {
				if res.State != Failed || res.Code != "boot-check" || res.Step != StepVerify || !strings.Contains(res.Error, tt.err) {
					t.Errorf("result %+v, want failed at verify with boot-check: %q", res, tt.err)
				}
				if len(w.snapshots()) != 0 {
					t.Errorf("snapshots left: %v", w.snapshots())
				}
				if !recorded || rec.Code != "boot-check" || rec.Step != StepVerify {
					t.Errorf("failure record %+v (found %v), want boot-check at verify", rec, recorded)
				}
				if tt.err == "did not answer within" && took < timeout {
					t.Errorf("failed after %s, before VerifyTimeout %s", took, timeout)
				}
				return
			}
			if res.State != Done || res.SnapshotID != pending.ID || recorded {
				t.Fatalf("result %+v (failure record %v), want done with snapshot %d", res, recorded, pending.ID)
			}
			img, _ := w.emu.Image(res.SnapshotID)
			serverID, _ := strconv.ParseInt(pending.Labels[label.Build], 10, 64)
			want := target.snapshotLabels("", nil, serverID)
			want[label.Request] = pending.Labels[label.Request]
			if !maps.Equal(img.Labels, want) {
				t.Errorf("published labels %v, want %v", img.Labels, want)
			}
			if !img.Created.Equal(pending.Created) || !w.selects(consumerSelector, img.ID) {
				t.Errorf("published snapshot created %s (was %s), selected by consumers: %v", img.Created, pending.Created,
					w.selects(consumerSelector, img.ID))
			}
		})
	}
}

// TestVerifyOff: without VerifyBoot the snapshot carries the consumer
// labels from its creation, and no server boots it.
func TestVerifyOff(t *testing.T) {
	w := newLocalCloud(t)
	p := &fakeProbe{w: w, answer: func(int) (string, error) { return "v1.13.9", nil }}
	b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{VerifyTimeout: time.Second})
	b.probe = p.probe
	res := b.Build(context.Background(), target, Request{})
	if res.State != Done || len(p.calls()) != 0 || len(w.cloud.createLog()) != 1 {
		t.Fatalf("result %+v, probes %v, creates %+v; want done, one server, no boot check", res, p.calls(), w.cloud.createLog())
	}
	if slices.Contains(w.cloud.callLog(), "SetImageLabels") {
		t.Error("the snapshot was relabelled")
	}
	if img, _ := w.emu.Image(res.SnapshotID); img.Labels[label.Pending] != "" || !w.selects(consumerSelector, img.ID) {
		t.Errorf("snapshot labels %v, want published", img.Labels)
	}
}

// TestVerifyResumes puts what a build killed during its boot check leaves
// into the project: the build server (checkpoint wait), its snapshot and
// maybe the boot server. The next invocation adopts the boot server, never
// makes a second, and checks no snapshot that is published already.
func TestVerifyResumes(t *testing.T) {
	tests := []struct {
		name      string
		published bool   // the snapshot was published before the crash
		boot      string // the boot server left: "running", "off", "foreign" or none
		state     State
		probed    bool
		calls     []string
	}{
		{name: "before the boot server", state: Done, probed: true,
			calls: []string{"CreateSSHKey", "CreateServer", "Boot", "SetImageLabels", "DeleteServer", "DeleteServer", "DeleteSSHKey"}},
		{name: "boot server running", boot: "running", state: Done, probed: true,
			calls: []string{"CreateSSHKey", "SetImageLabels", "DeleteServer", "DeleteServer", "DeleteSSHKey"}},
		{name: "boot server off", boot: "off", state: Done, probed: true,
			calls: []string{"CreateSSHKey", "Boot", "SetImageLabels", "DeleteServer", "DeleteServer", "DeleteSSHKey"}},
		{name: "published before cleanup", published: true, boot: "running", state: Done,
			calls: []string{"CreateSSHKey", "DeleteServer", "DeleteServer", "DeleteSSHKey"}},
		// A server of the boot server's name that is not ours is never
		// used or deleted, and the snapshot stays unpublished.
		{name: "foreign server of the name", boot: "foreign", state: Failed,
			calls: []string{"CreateSSHKey", "DeleteSSHKey"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newLocalCloud(t)
			p := &fakeProbe{w: w, answer: func(int) (string, error) { return "v1.13.9", nil }}
			b := verifyBuilder(w, p, time.Second)
			labels := target.targetLabels("")
			labels[label.Role], labels[label.Step] = label.RoleBuildServer, string(StepWait)
			srv := w.createServer(labels)
			snapLabels := target.snapshotLabels("", nil, srv.ID)
			if !tt.published {
				snapLabels = target.targetLabels("")
				snapLabels[label.Build], snapLabels[label.Pending] = strconv.FormatInt(srv.ID, 10), "verify"
			}
			img := w.addSnapshot(fakehcloud.Image{Labels: snapLabels, Created: time.Now().Add(-time.Minute).Truncate(time.Second)})
			if tt.boot != "" {
				bootLabels := target.targetLabels("")
				bootLabels[label.Role], bootLabels[label.Build] = label.RoleBootCheck, strconv.FormatInt(srv.ID, 10)
				if tt.boot == "foreign" {
					bootLabels = map[string]string{"team": "infra"}
				}
				key := w.createKey("someone", nil)
				boot, err := w.api.CreateServer(context.Background(), cloud.CreateServerOpts{Name: bootName, ServerType: "cx23",
					Location: "fsn1", Snapshot: img.ID, Labels: bootLabels, SSHKeys: []*hcloud.SSHKey{{ID: key.ID}}})
				if err != nil {
					t.Fatal(err)
				}
				if tt.boot != "off" {
					if err := w.api.Boot(context.Background(), boot); err != nil {
						t.Fatal(err)
					}
					w.awaitServer(boot.ID, "running")
				}
			}
			w.cloud.resetCalls()
			res := b.Build(context.Background(), target, Request{})
			if res.State != tt.state {
				t.Errorf("result %+v, want %s", res, tt.state)
			}
			if got := mutating(w.cloud.callLog()); !slices.Equal(got, tt.calls) {
				t.Errorf("calls:\n got %v\nwant %v", got, tt.calls)
			}
			if probed := len(p.calls()) > 0; probed != tt.probed {
				t.Errorf("probed %v, want %v", probed, tt.probed)
			}
			after, _ := w.emu.Image(img.ID)
			if tt.state == Failed {
				if res.Code != "foreign" || after.Labels[label.Pending] == "" || len(w.emu.Servers()) != 2 {
					t.Errorf("result %+v, snapshot %v, servers %+v; want refused, the snapshot pending, both servers kept",
						res, after.Labels, w.emu.Servers())
				}
				return
			}
			if res.SnapshotID != img.ID || after.Labels[label.Pending] != "" || !w.selects(consumerSelector, img.ID) ||
				!after.Created.Equal(img.Created) {
				t.Errorf("result %+v, snapshot %+v; want snapshot %d published, created %s", res, after, img.ID, img.Created)
			}
			if len(w.emu.Servers()) != 0 {
				t.Errorf("servers left: %+v", w.emu.Servers())
			}
		})
	}
}

// awaitServer waits until server id has status.
func (w *localCloud) awaitServer(id int64, status string) {
	w.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		i := slices.IndexFunc(w.emu.Servers(), func(s fakehcloud.Server) bool { return s.ID == id && s.Status == status })
		if i >= 0 {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("server %d never became %s: %+v", id, status, w.emu.Servers())
		}
	}
}
