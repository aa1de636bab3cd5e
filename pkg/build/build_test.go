package build

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

var target = Target{Version: "v1.13.9", Arch: "amd64", Schematic: talos.QemuGuestAgentSchematic}

var hostnameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func TestName(t *testing.T) {
	seen := map[string]Target{}
	for _, v := range []string{"v1.13.9", "v1.14.0-beta.1", "v1.14.0-beta-1", "v1.14.0-alpha.0",
		"v10.200.3000-rc.1.very-long-prerelease-identifier.with.many.parts", "v0.0.0"} {
		for _, a := range talos.Architectures {
			for _, s := range []string{talos.VanillaSchematic, talos.QemuGuestAgentSchematic} {
				tg := Target{Version: v, Arch: a, Schematic: s}
				n := tg.Name()
				if !hostnameRE.MatchString(n) || len(n) > 63 {
					t.Errorf("%v: name %q is not an RFC 1123 hostname", tg, n)
				}
				if n != tg.Name() {
					t.Errorf("%v: name is not deterministic", tg)
				}
				if prev, ok := seen[n]; ok {
					t.Errorf("%v and %v share the name %s", prev, tg, n)
				}
				seen[n] = tg
			}
		}
	}
}

func TestLabelsAreValid(t *testing.T) {
	for _, v := range []string{"v1.13.9", "v1.14.0-beta.1", "v10.200.3000-rc.1.very-long-prerelease-identifier.with.x"} {
		for _, a := range talos.Architectures {
			for _, cluster := range []string{"", "prod-1"} {
				tg := Target{Version: v, Arch: a, Schematic: talos.VanillaSchematic}
				snap := tg.snapshotLabels(cluster, map[string]string{"team": "infra"}, 4711)
				for k, val := range snap {
					if err := label.Check(k, val); err != nil {
						t.Errorf("%v: %v", tg, err)
					}
				}
				want := map[string]string{"os": "talos", "talos_version": v, "version": v, "arch": a,
					"talos_schematic_id": talos.VanillaSchematic[:32], "team": "infra",
					label.Managed: label.ManagedValue, labelBuild: "4711"}
				if cluster != "" {
					want["cluster"] = cluster
				}
				for k, val := range want {
					if snap[k] != val {
						t.Errorf("%v: label %s = %q, want %q", tg, k, snap[k], val)
					}
				}
				back, ok := TargetFromLabels(snap)
				if !ok || back != tg {
					t.Errorf("TargetFromLabels = %v, %v; want %v", back, ok, tg)
				}
				if !matches(snap, tg.snapshotSelector(cluster)) {
					t.Errorf("%v: selector %s does not match its own labels", tg, tg.snapshotSelector(cluster))
				}
			}
		}
	}
	if matches(target.snapshotLabels("prod", nil, 1), target.snapshotSelector("")) {
		t.Error("a cluster's snapshot matches the selector of a deployment without cluster")
	}
	extra := target.snapshotLabels("", map[string]string{"os": "linux"}, 1)
	if extra["os"] != "talos" {
		t.Error("extra labels override the contract labels")
	}
}

func TestParseRequest(t *testing.T) {
	tests := []struct {
		payload string
		want    Request
		err     string
	}{
		{payload: `{"version":"v1.13.9"}`, want: Request{Version: "v1.13.9"}},
		{payload: `{"version":"v1.13.9","arch":"arm64","schematic":"` + talos.VanillaSchematic + `","force":true}`,
			want: Request{Version: "v1.13.9", Arch: "arm64", Schematic: talos.VanillaSchematic, Force: true}},
		{payload: `{"version":"v1.13.9","archs":"arm64"}`, err: `unknown field "archs"`},
		{payload: `{"version":"v1.13.9"} {"version":"v1.13.8"}`, err: "trailing data"},
		{payload: `["v1.13.9"]`, err: "cannot unmarshal array"},
		{payload: `{"version":"v1.13.9","force":"yes"}`, err: "cannot unmarshal string"},
		{payload: `{"version":"` + strings.Repeat("9", MaxRequestBytes) + `"}`, err: "at most 4096"},
		{payload: ``, err: "EOF"},
	}
	for _, tt := range tests {
		r, err := ParseRequest([]byte(tt.payload))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.HasPrefix(err.Error(), "invalid request") {
				t.Errorf("ParseRequest(%.40s) err = %v, want %q", tt.payload, err, tt.err)
			}
			continue
		}
		if err != nil || r != tt.want {
			t.Errorf("ParseRequest(%s) = %+v, %v", tt.payload, r, err)
		}
	}
}

func TestTargets(t *testing.T) {
	b := testBuilder(newFakeCloud(), &fakeRemote{}, nil, Options{
		Architectures: []string{"amd64"}, Schematics: []string{talos.VanillaSchematic, talos.QemuGuestAgentSchematic}})
	tests := []struct {
		req  Request
		want int
		err  string
	}{
		{req: Request{Version: "v1.13.9"}, want: 2},
		{req: Request{Version: "v1.13.9", Schematic: talos.VanillaSchematic}, want: 1},
		{req: Request{Version: "v1.13.9", Arch: "amd64"}, want: 2},
		{req: Request{}, err: `version: is required`},
		{req: Request{Version: "1.13.9"}, err: `version: "1.13.9" is not a version`},
		{req: Request{Version: "v1.13.9", Arch: "arm64"}, err: `arch: "arm64" is not one of the configured architectures (amd64)`},
		{req: Request{Version: "v1.13.9", Arch: "sparc"}, err: `arch: "sparc" is not one of the configured`},
		{req: Request{Version: "v1.13.9", Schematic: "abc"}, err: `schematic: "abc" is not a schematic ID`},
		{req: Request{Version: "v1.13.9$(reboot)"}, err: `is not a version`},
	}
	for _, tt := range tests {
		ts, err := b.Targets(tt.req)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Targets(%+v) err = %v, want %q", tt.req, err, tt.err)
			}
			continue
		}
		if err != nil || len(ts) != tt.want {
			t.Errorf("Targets(%+v) = %v, %v; want %d targets", tt.req, ts, err, tt.want)
		}
	}
}

func mutating(calls []string) []string {
	var out []string
	for _, c := range calls {
		switch {
		case c == "ServerByName", c == "Snapshots", c == "SSHKeyByName", c == "Image", c == "SetSSHKeyLabels":
		default:
			out = append(out, c)
		}
	}
	return out
}

func TestHappyPathAndNoOp(t *testing.T) {
	fc := newFakeCloud()
	remote := &fakeRemote{table: talosTable}
	b := testBuilder(fc, remote, nil, Options{})
	res := b.Build(context.Background(), target, false)
	if res.State != Done || res.SnapshotID == 0 || res.ServerType != "cx23" || res.Location != "fsn1" {
		t.Fatalf("result = %+v", res)
	}
	want := []string{"CreateSSHKey", "CreateServer", "EnableRescue", "Boot", "PowerOff", "SetServerLabels:snapshot",
		"CreateSnapshot", "SetServerLabels:wait", "DeleteServer", "DeleteSSHKey"}
	if got := mutating(fc.callLog()); !slices.Equal(got, want) {
		t.Errorf("calls:\n got %v\nwant %v", got, want)
	}
	if s, k, i := fc.counts(); s != 0 || k != 0 || i != 1 {
		t.Errorf("left %d servers, %d keys, %d images; want 0, 0, 1", s, k, i)
	}
	img := fc.images[res.SnapshotID]
	if img.Labels["os"] != "talos" || img.Labels["talos_version"] != "v1.13.9" || img.Status != hcloud.ImageStatusAvailable {
		t.Errorf("snapshot = %+v", img)
	}
	if len(remote.commands) != 2 || !strings.Contains(remote.commands[0], "/hcloud-amd64.raw.zst'") {
		t.Errorf("remote commands = %q", remote.commands)
	}

	fc.calls = nil
	res = b.Build(context.Background(), target, false)
	if res.State != Done || res.SnapshotID != img.ID {
		t.Fatalf("second build = %+v", res)
	}
	if got := fc.callLog(); !slices.Equal(got, []string{"ServerByName", "Snapshots", "SSHKeyByName"}) {
		t.Errorf("a no-op made the calls %v", got)
	}
}

func TestNotServedByFactoryCreatesNothing(t *testing.T) {
	fc := newFakeCloud()
	b := testBuilder(fc, &fakeRemote{table: talosTable}, nil, Options{})
	resp, err := b.Handle(context.Background(), Request{Version: "v9.9.9"})
	var failed *FailedError
	if !errors.As(err, &failed) || len(resp.Results) != 2 {
		t.Fatalf("err = %v, resp = %+v", err, resp)
	}
	for _, r := range resp.Results {
		if r.State != Failed || r.Step != StepCheck || !strings.HasPrefix(r.Error, "talos v9.9.9 is not available from the image factory") {
			t.Errorf("result = %+v", r)
		}
	}
	if m := mutating(fc.callLog()); len(m) != 0 {
		t.Errorf("mutating calls %v", m)
	}
}

// TestResume puts the checkpoint of an interrupted build into the fake and
// checks what the next invocation does: label state → next actions.
func TestResume(t *testing.T) {
	tests := []struct {
		name  string
		step  string
		image string // "new": an available snapshot of the server; "creating"; "gone": a deleted id
		adopt bool   // a snapshot of this server exists without the server knowing
		state State
		want  []string
	}{
		{name: "install again", step: "install", state: Done,
			want: []string{"CreateSSHKey", "EnableRescue", "Boot", "PowerOff", "SetServerLabels:snapshot", "CreateSnapshot",
				"SetServerLabels:wait", "DeleteServer", "DeleteSSHKey"}},
		{name: "snapshot", step: "snapshot", state: Done,
			want: []string{"CreateSSHKey", "CreateSnapshot", "SetServerLabels:wait", "DeleteServer", "DeleteSSHKey"}},
		{name: "snapshot taken before the crash", step: "snapshot", adopt: true, state: Done,
			want: []string{"CreateSSHKey", "SetServerLabels:wait", "DeleteServer", "DeleteSSHKey"}},
		{name: "wait, available", step: "wait", image: "new", state: Done,
			want: []string{"CreateSSHKey", "DeleteServer", "DeleteSSHKey"}},
		{name: "wait, creating", step: "wait", image: "creating", state: Done,
			want: []string{"CreateSSHKey", "DeleteServer", "DeleteSSHKey"}},
		{name: "wait, no image recorded", step: "wait", state: Done,
			want: []string{"CreateSSHKey", "CreateSnapshot", "SetServerLabels:wait", "DeleteServer", "DeleteSSHKey"}},
		{name: "wait, image gone", step: "wait", image: "gone", state: Done,
			want: []string{"CreateSSHKey", "SetServerLabels:snapshot", "CreateSnapshot", "SetServerLabels:wait", "DeleteServer", "DeleteSSHKey"}},
		{name: "cleanup", step: "cleanup", image: "new", state: Done,
			want: []string{"CreateSSHKey", "DeleteServer", "DeleteSSHKey"}},
		{name: "unknown step", step: "dance", state: Failed,
			want: []string{"CreateSSHKey", "DeleteServer", "DeleteSSHKey"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := newFakeCloud()
			b := testBuilder(fc, &fakeRemote{table: talosTable}, nil, Options{})
			labels := target.targetLabels("")
			labels[labelRole], labels[labelStep] = roleBuildServer, tt.step
			srv, _ := fc.CreateServer(context.Background(), cloudOpts(labels))
			switch tt.image {
			case "new", "creating":
				img, _ := fc.CreateSnapshot(context.Background(), srv, "", target.snapshotLabels("", nil, srv.ID))
				if tt.image == "new" {
					fc.images[img.ID].Status = hcloud.ImageStatusAvailable
				}
				fc.servers[srv.ID].Labels[labelImage] = strconv.FormatInt(img.ID, 10)
			case "gone":
				fc.servers[srv.ID].Labels[labelImage] = "999999"
			}
			if tt.adopt {
				img, _ := fc.CreateSnapshot(context.Background(), srv, "", target.snapshotLabels("", nil, srv.ID))
				fc.images[img.ID].Status = hcloud.ImageStatusAvailable
			}
			fc.calls = nil
			res := b.Build(context.Background(), target, false)
			if res.State != tt.state {
				t.Errorf("state = %s (%s), want %s", res.State, res.Error, tt.state)
			}
			if got := mutating(fc.callLog()); !slices.Equal(got, tt.want) {
				t.Errorf("calls:\n got %v\nwant %v", got, tt.want)
			}
			if s, k, i := fc.counts(); s != 0 || k != 0 || (tt.state == Done && i != 1) {
				t.Errorf("left %d servers, %d keys, %d images", s, k, i)
			}
		})
	}
}

func TestLease(t *testing.T) {
	tests := []struct {
		name  string
		until time.Duration
		state State
	}{
		{"held by a live invocation", time.Minute, InProgress},
		{"expired", -time.Second, Done},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := newFakeCloud()
			b := testBuilder(fc, &fakeRemote{table: talosTable}, nil, Options{})
			labels := target.targetLabels("")
			labels[labelLeaseUntil] = strconv.FormatInt(time.Now().Add(tt.until).Unix(), 10)
			labels[labelLeaseOwner] = "other"
			fc.CreateSSHKey(context.Background(), target.Name(), "ssh-ed25519 AAAA", labels)
			res := b.Build(context.Background(), target, false)
			if res.State != tt.state {
				t.Fatalf("result = %+v", res)
			}
			s, k, _ := fc.counts()
			if tt.state == InProgress && (s != 0 || k != 1 || slices.Contains(fc.callLog(), "CreateServer")) {
				t.Errorf("a duplicate acted: %v", fc.callLog())
			}
			if tt.state == Done && (s != 0 || k != 0) {
				t.Errorf("left %d servers, %d keys", s, k)
			}
		})
	}
}

func TestCapacity(t *testing.T) {
	tests := []struct {
		name     string
		full     []string
		state    State
		typ, loc string
	}{
		{"first location full", []string{"cx23/fsn1"}, Done, "cx23", "nbg1"},
		{"first type full everywhere", []string{"cx23/fsn1", "cx23/nbg1"}, Done, "cpx22", "fsn1"},
		{"all full", []string{"cx23/fsn1", "cx23/nbg1", "cpx22/fsn1", "cpx22/nbg1"}, Failed, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := newFakeCloud()
			for _, f := range tt.full {
				fc.noCapacity[f] = true
			}
			res := testBuilder(fc, &fakeRemote{table: talosTable}, nil, Options{}).Build(context.Background(), target, false)
			if res.State != tt.state || res.ServerType != tt.typ || res.Location != tt.loc {
				t.Errorf("result = %+v", res)
			}
			if s, k, _ := fc.counts(); s != 0 || k != 0 {
				t.Errorf("left %d servers, %d keys", s, k)
			}
		})
	}
}

func TestContinuesWhenShortOfTime(t *testing.T) {
	fc := newFakeCloud()
	cont := &recordingContinuer{}
	b := testBuilder(fc, &fakeRemote{table: talosTable}, cont, Options{StepTimeout: time.Second, InstallTimeout: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res := b.Build(ctx, target, true)
	if res.State != InProgress || res.Step != StepInstall {
		t.Fatalf("result = %+v", res)
	}
	want := Request{Version: target.Version, Arch: target.Arch, Schematic: target.Schematic, Force: true}
	if len(cont.reqs) != 1 || cont.reqs[0] != want {
		t.Errorf("continuations = %+v", cont.reqs)
	}
	if s, k, _ := fc.counts(); s != 1 || k != 0 {
		t.Errorf("%d servers, %d keys; want the server kept and the lease released", s, k)
	}
}

func TestWaitHandsOver(t *testing.T) {
	fc := newFakeCloud()
	fc.snapshotsReadyAfter = 1 << 30
	cont := &recordingContinuer{}
	b := testBuilder(fc, &fakeRemote{table: talosTable}, cont, Options{SnapshotWait: 20 * time.Millisecond})
	res := b.Build(context.Background(), target, false)
	if res.State != InProgress || res.Step != StepWait || len(cont.reqs) != 1 {
		t.Fatalf("result = %+v, continuations %d", res, len(cont.reqs))
	}
	fc.snapshotsReadyAfter = 0
	if res = b.Build(context.Background(), target, false); res.State != Done {
		t.Fatalf("after the snapshot is ready: %+v", res)
	}
	if s, k, i := fc.counts(); s != 0 || k != 0 || i != 1 {
		t.Errorf("left %d servers, %d keys, %d images", s, k, i)
	}
}

func TestFailedInstallLeavesNothing(t *testing.T) {
	tests := []struct {
		name   string
		remote *fakeRemote
		err    string
	}{
		{"truncated download", &fakeRemote{failRun: errors.New("exit status 1: zstd: premature end")}, "premature end"},
		{"mbr disk", &fakeRemote{table: `{"partitiontable":{"label":"dos","partitions":[]}}`}, `"dos" partition table`},
		{"missing META", &fakeRemote{table: `{"partitiontable":{"label":"gpt","partitions":[{"name":"EFI"},{"name":"BIOS"},{"name":"BOOT"}]}}`},
			"lacks the Talos partition META"},
		{"no table", &fakeRemote{table: ``}, "no readable partition table"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := newFakeCloud()
			res := testBuilder(fc, tt.remote, nil, Options{}).Build(context.Background(), target, false)
			if res.State != Failed || res.Step != StepInstall || !strings.Contains(res.Error, tt.err) {
				t.Errorf("result = %+v", res)
			}
			if s, k, i := fc.counts(); s != 0 || k != 0 || i != 0 {
				t.Errorf("left %d servers, %d keys, %d images", s, k, i)
			}
		})
	}
}

func TestForceReplacesOnlyWhenTheNewOneIsAvailable(t *testing.T) {
	fc := newFakeCloud()
	b := testBuilder(fc, &fakeRemote{table: talosTable}, nil, Options{SnapshotWait: 20 * time.Millisecond})
	first := b.Build(context.Background(), target, false)
	fc.snapshotsReadyAfter = 1 << 30
	res := b.Build(context.Background(), target, true)
	if res.State != InProgress {
		t.Fatalf("forced build = %+v", res)
	}
	if fc.images[first.SnapshotID] == nil {
		t.Fatal("the old snapshot was deleted before the new one is available")
	}
	fc.snapshotsReadyAfter = 0
	res = b.Build(context.Background(), target, true)
	if res.State != Done || res.SnapshotID == first.SnapshotID {
		t.Fatalf("forced build = %+v", res)
	}
	if _, _, i := fc.counts(); i != 1 || fc.images[res.SnapshotID] == nil {
		t.Errorf("%d images; want only the new one", i)
	}
}

func TestInstallScript(t *testing.T) {
	img := talos.Image{URL: "http://127.0.0.1:8080/image/" + talos.VanillaSchematic + "/v1.13.9/hcloud-amd64.raw.zst", Compression: talos.Zstd}
	s, err := installScript(img)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"set -euo pipefail",
		"zst='" + img.URL + "'",
		"xz='http://127.0.0.1:8080/image/" + talos.VanillaSchematic + "/v1.13.9/hcloud-amd64.raw.xz'",
		"blkdiscard --force /dev/sda",
		`zstd -dcq "$z" 1<>/dev/sda`,
		"conv=\"$conv\"",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	if _, err := installScript(talos.Image{URL: "file:///etc/passwd", Compression: talos.XZ}); err == nil {
		t.Error("file URL accepted")
	}
	if got := shellQuote(`it's $(x)`); got != `'it'\''s $(x)'` {
		t.Errorf("shellQuote = %s", got)
	}
}

// TestBuildFinishedWhileTakingTheLease: the server seen at the check is gone
// once the lease is ours, because its holder finished: done, nothing new.
func TestBuildFinishedWhileTakingTheLease(t *testing.T) {
	fc := newFakeCloud()
	b := testBuilder(fc, &fakeRemote{table: talosTable}, nil, Options{})
	first := b.Build(context.Background(), target, false)
	labels := target.targetLabels("")
	labels[labelRole], labels[labelStep] = roleBuildServer, "cleanup"
	srv, _ := fc.CreateServer(context.Background(), cloudOpts(labels))
	lookups := 0
	fc.beforeServerByName = func() {
		if lookups++; lookups == 2 {
			delete(fc.servers, srv.ID)
		}
	}
	fc.calls = nil
	res := b.Build(context.Background(), target, false)
	if res.State != Done || res.SnapshotID != first.SnapshotID {
		t.Fatalf("result = %+v", res)
	}
	if m := mutating(fc.callLog()); !slices.Equal(m, []string{"CreateSSHKey", "DeleteSSHKey"}) {
		t.Errorf("calls %v", m)
	}
	if s, k, i := fc.counts(); s != 0 || k != 0 || i != 1 {
		t.Errorf("left %d servers, %d keys, %d images", s, k, i)
	}
}
