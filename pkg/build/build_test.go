package build

import (
	"context"
	"errors"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakefactory"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/ssh"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

var target = Target{Version: "v1.13.9", Arch: "amd64", Schematic: talos.QemuGuestAgentSchematic}

var hostnameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func TestName(t *testing.T) {
	type build struct {
		Target
		cluster string
	}
	seen := map[string]build{}
	for _, v := range []string{"v1.13.9", "v1.14.0-beta.1", "v1.14.0-beta-1", "v1.14.0-alpha.0",
		"v10.200.3000-rc.1.very-long-prerelease-identifier.with.many.parts", "v0.0.0"} {
		for _, a := range talos.Architectures {
			for _, s := range []string{talos.VanillaSchematic, talos.QemuGuestAgentSchematic} {
				for _, c := range []string{"", "prod", "staging", strings.Repeat("c", 63)} {
					tg := Target{Version: v, Arch: a, Schematic: s}
					n := tg.Name(c)
					if !hostnameRE.MatchString(n) || len(n) > 63 {
						t.Errorf("%v in %q: name %q is not an RFC 1123 hostname", tg, c, n)
					}
					if n != tg.Name(c) {
						t.Errorf("%v in %q: name is not deterministic", tg, c)
					}
					if prev, ok := seen[n]; ok {
						t.Errorf("%v and %v share the name %s", prev, build{tg, c}, n)
					}
					seen[n] = build{tg, c}
				}
			}
		}
	}
	// Without a cluster, the name from before clusters were part of it:
	// a build under way across an upgrade keeps its server.
	if n := target.Name(""); n != "talos-amd64-v1-13-9-c0b4c7383a" {
		t.Errorf("name without a cluster %s, want the one from before", n)
	}
}

func TestLabelsAreValid(t *testing.T) {
	w := newLocalCloud(t)
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
					label.Managed: label.ManagedValue, label.Build: "4711"}
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
				if img := w.addSnapshot(fakehcloud.Image{Labels: snap}); !w.selects(tg.snapshotSelector(cluster), img.ID) {
					t.Errorf("%v: selector %s does not match its own labels", tg, tg.snapshotSelector(cluster))
				}
			}
		}
	}
	if img := w.addSnapshot(fakehcloud.Image{Labels: target.snapshotLabels("prod", nil, 1)}); w.selects(target.snapshotSelector(""), img.ID) {
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
		if err != nil || !reflect.DeepEqual(r, tt.want) {
			t.Errorf("ParseRequest(%s) = %+v, %v", tt.payload, r, err)
		}
	}
}

func TestTargets(t *testing.T) {
	b := testBuilder(newLocalCloud(t), &fakeRemote{}, nil, Options{
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
		{req: Request{Version: "v1.14.0-" + strings.Repeat("a", 56)}, err: `is 64 characters long; a version is at most 63 (it becomes a snapshot label value)`},
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
		case c == "ServerByName", c == "Snapshots", c == "SSHKeyByName", c == "Image", c == "SetSSHKeyLabels", c == "ServerTypes":
		default:
			out = append(out, c)
		}
	}
	return out
}

func TestHappyPathAndNoOp(t *testing.T) {
	w := newLocalCloud(t)
	remote := &fakeRemote{table: talosTable}
	b := testBuilder(w, remote, nil, Options{})
	res := b.Build(context.Background(), target, Request{})
	if res.State != Done || res.SnapshotID == 0 || res.ServerType != "cx23" || res.Location != "fsn1" {
		t.Fatalf("result = %+v", res)
	}
	want := []string{"CreateSSHKey", "CreateServer", "EnableRescue", "Boot", "PowerOff", "SetServerLabels:snapshot",
		"SetServerLabels:wait", "CreateSnapshot", "DeleteServer", "DeleteSSHKey"}
	if got := mutating(w.cloud.callLog()); !slices.Equal(got, want) {
		t.Errorf("calls:\n got %v\nwant %v", got, want)
	}
	if s, k, i := w.counts(); s != 0 || k != 0 || i != 1 {
		t.Errorf("left %d servers, %d keys, %d images; want 0, 0, 1", s, k, i)
	}
	img, _ := w.emu.Image(res.SnapshotID)
	if img.Labels["os"] != "talos" || img.Labels["talos_version"] != "v1.13.9" || img.Status != string(hcloud.ImageStatusAvailable) {
		t.Errorf("snapshot = %+v", img)
	}
	if len(remote.commands) != 4 || !strings.HasPrefix(remote.commands[0], scriptCommand+"\n") ||
		!strings.Contains(remote.commands[0], "/hcloud-amd64.raw.zst'") {
		t.Errorf("remote commands = %q", remote.commands)
	}

	w.cloud.resetCalls()
	res = b.Build(context.Background(), target, Request{})
	if res.State != Done || res.SnapshotID != img.ID {
		t.Fatalf("second build = %+v", res)
	}
	if got := w.cloud.callLog(); !slices.Equal(got, []string{"ServerByName", "Snapshots", "SSHKeyByName"}) {
		t.Errorf("a no-op made the calls %v", got)
	}
}

func TestNotServedByFactoryCreatesNothing(t *testing.T) {
	w := newLocalCloud(t)
	b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{})
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
	if m := mutating(w.cloud.callLog()); len(m) != 0 {
		t.Errorf("mutating calls %v", m)
	}
}

// TestResume puts the checkpoint of an interrupted build into the project
// and checks what the next invocation does: label state → next actions.
func TestResume(t *testing.T) {
	tests := []struct {
		name string
		step string
		// images of the server: "available", "creating" (its create_image
		// runs), "stuck" (creating for longer than SnapshotTimeout, its
		// action gone), "unavailable" (its create_image failed)
		images   []string
		attempts string // snapshot attempts so far, from the server's labels
		state    State
		want     []string
		left     int // snapshots left
	}{
		{name: "install again", step: "install", state: Done, left: 1,
			want: []string{"CreateSSHKey", "EnableRescue", "Boot", "PowerOff", "SetServerLabels:snapshot", "SetServerLabels:wait",
				"CreateSnapshot", "DeleteServer", "DeleteSSHKey"}},
		{name: "snapshot", step: "snapshot", state: Done, left: 1,
			want: []string{"CreateSSHKey", "SetServerLabels:wait", "CreateSnapshot", "DeleteServer", "DeleteSSHKey"}},
		{name: "snapshot taken before the crash", step: "snapshot", images: []string{"available"}, state: Done, left: 1,
			want: []string{"CreateSSHKey", "DeleteServer", "DeleteSSHKey"}},
		{name: "wait, available", step: "wait", images: []string{"available"}, state: Done, left: 1,
			want: []string{"CreateSSHKey", "DeleteServer", "DeleteSSHKey"}},
		{name: "wait, creating", step: "wait", images: []string{"creating"}, state: Done, left: 1,
			want: []string{"CreateSSHKey", "DeleteServer", "DeleteSSHKey"}},
		{name: "wait, no snapshot yet", step: "wait", attempts: "1", state: Done, left: 1,
			want: []string{"CreateSSHKey", "SetServerLabels:snapshot", "SetServerLabels:wait", "CreateSnapshot", "DeleteServer", "DeleteSSHKey"}},
		{name: "wait, snapshot vanished too often", step: "wait", attempts: "2", state: Failed,
			want: []string{"CreateSSHKey", "CreateSSHKey:failure", "DeleteServer", "DeleteSSHKey"}},
		{name: "wait, duplicates of a repeated create_image", step: "wait", images: []string{"available", "creating"}, state: Done, left: 1,
			want: []string{"CreateSSHKey", "DeleteImage", "DeleteServer", "DeleteSSHKey"}},
		{name: "wait, snapshot failed", step: "wait", images: []string{"unavailable"}, state: Failed,
			want: []string{"CreateSSHKey", "SetImageLabels", "DeleteImage", "CreateSSHKey:failure", "DeleteServer", "DeleteSSHKey"}},
		{name: "wait, snapshot stuck creating", step: "wait", images: []string{"stuck"}, state: Failed,
			want: []string{"CreateSSHKey", "SetImageLabels", "DeleteImage", "CreateSSHKey:failure", "DeleteServer", "DeleteSSHKey"}},
		{name: "cleanup", step: "cleanup", images: []string{"available"}, state: Done, left: 1,
			want: []string{"CreateSSHKey", "DeleteServer", "DeleteSSHKey"}},
		{name: "unknown step", step: "dance", state: Failed,
			want: []string{"CreateSSHKey", "CreateSSHKey:failure", "DeleteServer", "DeleteSSHKey"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newLocalCloud(t)
			b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{SnapshotTimeout: time.Hour})
			labels := target.targetLabels("")
			labels[label.Role], labels[label.Step] = label.RoleBuildServer, tt.step
			if tt.attempts != "" {
				labels[label.SnapshotAttempts] = tt.attempts
			}
			srv := w.createServer(labels)
			snapLabels := target.snapshotLabels("", nil, srv.ID)
			for _, status := range tt.images {
				switch status {
				case "available":
					w.addSnapshot(fakehcloud.Image{Labels: snapLabels})
				case "creating":
					w.createSnapshot(srv, snapLabels, fakehcloud.Faults{SlowImages: 1, SlowImageFor: 100 * time.Millisecond})
				case "unavailable":
					img := w.createSnapshot(srv, snapLabels, fakehcloud.Faults{UnavailableImages: 1})
					w.awaitImage(img.ID, status)
				case "stuck":
					w.addSnapshot(fakehcloud.Image{Labels: snapLabels, Status: "creating", Created: time.Now().Add(-2 * time.Hour)})
				}
			}
			w.cloud.resetCalls()
			res := b.Build(context.Background(), target, Request{})
			if res.State != tt.state {
				t.Errorf("state = %s (%s), want %s", res.State, res.Error, tt.state)
			}
			if got := mutating(w.cloud.callLog()); !slices.Equal(got, tt.want) {
				t.Errorf("calls:\n got %v\nwant %v", got, tt.want)
			}
			if s, k, i := w.counts(); s != 0 || k != 0 || i != tt.left {
				t.Errorf("left %d servers, %d keys, %d images; want 0, 0, %d", s, k, i, tt.left)
			}
			if tt.left == 1 && res.SnapshotID != slices.Min(w.snapshots()) {
				t.Errorf("snapshot %d, want the oldest of the server's", res.SnapshotID)
			}
		})
	}
}

// TestLease: a request meeting another invocation's lease waits for it. A
// live holder renews it: in progress, nothing done. A dead one lets it
// expire: taken over and built. One expiring beyond this invocation's time:
// a retry (a function error), never a silent in_progress.
func TestLease(t *testing.T) {
	t.Parallel() // it waits for leases to expire
	tests := []struct {
		name    string
		until   time.Duration // the lease's expiry from now
		renewed bool          // its holder renews it
		budget  time.Duration // the invocation's time; 0: none
		state   State
		retry   bool
	}{
		{name: "held by a live invocation", until: 2 * time.Second, renewed: true, state: InProgress},
		{name: "held by a dead invocation", until: time.Second, state: Done},
		{name: "expired", until: -time.Second, state: Done},
		{name: "expires too late to wait", until: time.Minute, budget: 20 * time.Second, state: InProgress, retry: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newLocalCloud(t)
			b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{LeaseTTL: 3 * time.Second, StepTimeout: time.Second, InstallTimeout: 5 * time.Second})
			labels := target.targetLabels("")
			labels[label.Role] = label.RoleLease
			labels[label.LeaseUntil] = strconv.FormatInt(time.Now().Add(tt.until).Unix(), 10)
			labels[label.LeaseOwner] = "other"
			key := w.createKey(target.Name(""), labels)
			if tt.renewed {
				stop := make(chan struct{})
				defer close(stop)
				go func() { // the holder's heartbeat
					for {
						select {
						case <-stop:
							return
						case <-time.After(300 * time.Millisecond):
						}
						l := maps.Clone(labels)
						l[label.LeaseUntil] = strconv.FormatInt(time.Now().Add(3*time.Second).Unix(), 10)
						w.api.SetSSHKeyLabels(context.Background(), key, l)
					}
				}()
			}
			ctx := context.Background()
			if tt.budget > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.budget)
				defer cancel()
			}
			res := b.Build(ctx, target, Request{})
			if res.State != tt.state || res.retry != tt.retry {
				t.Fatalf("result = %+v, retry %v", res, res.retry)
			}
			s, k, _ := w.counts()
			if tt.state == InProgress && (s != 0 || k != 1 || slices.Contains(w.cloud.callLog(), "CreateServer")) {
				t.Errorf("a duplicate acted: %v", w.cloud.callLog())
			}
			if tt.state == Done && (s != 0 || k != 0) {
				t.Errorf("left %d servers, %d keys", s, k)
			}
		})
	}
}

// TestCapacity: fall back across locations, and across types only of the
// smallest disk; out of capacity everywhere is a failure, never a bigger disk.
func TestCapacity(t *testing.T) {
	tests := []struct {
		name      string
		types     []string // amd64; default cx23, cpx22
		locations []string // default fsn1, nbg1
		full      []string
		state     State
		typ, loc  string
		err       string
	}{
		{name: "first location full", full: []string{"cx23/fsn1"}, state: Done, typ: "cx23", loc: "nbg1"},
		{name: "small type full everywhere", full: []string{"cx23/fsn1", "cx23/nbg1"}, state: Failed,
			err: "no capacity for cx23 (40 GB disk) in fsn1, nbg1; a bigger disk would make a snapshot that cannot create 40 GB servers"},
		{name: "another type of the same disk", types: []string{"cx23", "cpx11", "cpx22"}, locations: []string{"fsn1", "ash"},
			full: []string{"cx23/fsn1"}, state: Done, typ: "cpx11", loc: "ash"},
		{name: "all small types full", types: []string{"cx23", "cpx11", "cpx22"}, locations: []string{"fsn1", "ash"},
			full: []string{"cx23/fsn1", "cpx11/ash"}, state: Failed,
			err: "no capacity for cx23, cpx11 (40 GB disk) in fsn1, ash; a bigger disk"},
		{name: "small types not sold in the locations", types: []string{"cx23", "cpx22"}, locations: []string{"ash", "hil"},
			state: Failed, err: "none of cx23 (40 GB disk) is sold in ash, hil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newLocalCloud(t)
			var full []fakehcloud.Placement
			for _, f := range tt.full {
				typ, loc, _ := strings.Cut(f, "/")
				full = append(full, fakehcloud.Placement{ServerType: typ, Location: loc})
			}
			w.emu.SetFaults(fakehcloud.Faults{Unavailable: full})
			o := Options{Locations: tt.locations}
			if tt.types != nil {
				o.ServerTypes = map[string][]string{"amd64": tt.types}
			}
			res := testBuilder(w, &fakeRemote{table: talosTable}, nil, o).Build(context.Background(), target, Request{})
			if res.State != tt.state || res.ServerType != tt.typ || res.Location != tt.loc || !strings.Contains(res.Error, tt.err) {
				t.Errorf("result = %+v", res)
			}
			// Only 40 GB types, only where the API says they are sold.
			catalog := w.catalog()
			for _, c := range w.cloud.createLog() {
				i := slices.IndexFunc(catalog, func(st *hcloud.ServerType) bool { return st.Name == c.ServerType })
				if i < 0 || catalog[i].Disk != 40 || !sold(catalog[i], c.Location, time.Now()) {
					t.Errorf("tried to create %s in %s", c.ServerType, c.Location)
				}
			}
			if s, k, _ := w.counts(); s != 0 || k != 0 {
				t.Errorf("left %d servers, %d keys", s, k)
			}
		})
	}
}

func TestContinuesWhenShortOfTime(t *testing.T) {
	w := newLocalCloud(t)
	cont := &recordingContinuer{}
	b := testBuilder(w, &fakeRemote{table: talosTable}, cont, Options{StepTimeout: time.Second, InstallTimeout: 55 * time.Second})
	// Creating the server takes 10 s of the invocation's minute: the install
	// no longer fits.
	var skew atomic.Int64
	b.now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	w.cloud.hook = func(call string) {
		if call == "CreateServer" {
			skew.Store(int64(10 * time.Second))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res := b.Build(withInvocationStart(ctx, time.Now()), target, Request{Force: true})
	if res.State != InProgress || res.Step != StepInstall {
		t.Fatalf("result = %+v", res)
	}
	want := Request{Version: target.Version, Arch: target.Arch, Schematic: target.Schematic, Force: true}
	if len(cont.reqs) != 1 {
		t.Fatalf("continuations = %+v", cont.reqs)
	}
	got := cont.reqs[0]
	c := got.Continuation
	got.Continuation = nil
	// The server was created: progress, so the next invocation is not idle.
	if !reflect.DeepEqual(got, want) || c == nil || c.Idle != 0 || c.Origin == "" || b.verify(cont.reqs[0]) != nil {
		t.Errorf("continuation = %+v %+v", got, c)
	}
	if s, k, _ := w.counts(); s != 1 || k != 0 {
		t.Errorf("%d servers, %d keys; want the server kept and the lease released", s, k)
	}
}

// TestFunctionTimeoutTooShort: a function whose whole timeout cannot hold
// a step fails, naming both, instead of handing over forever; before the
// server exists, it creates nothing.
func TestFunctionTimeoutTooShort(t *testing.T) {
	w := newLocalCloud(t)
	cont := &recordingContinuer{}
	b := testBuilder(w, &fakeRemote{table: talosTable}, cont, Options{StepTimeout: time.Second, InstallTimeout: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	res := b.Build(withInvocationStart(ctx, time.Now()), target, Request{})
	if res.State != Failed || !strings.Contains(res.Error, "this invocation had 25s in all (the function's timeout), but step install needs 1m0s (INSTALL_TIMEOUT)") {
		t.Fatalf("result = %+v", res)
	}
	if m := mutating(w.cloud.callLog()); len(m) != 0 || len(cont.reqs) != 0 {
		t.Errorf("mutating calls %v, continuations %v", m, cont.reqs)
	}
}

// TestIdleHopsAreBounded: invocations that hand over without progress are
// counted in the signed continuation, and the build fails after a few.
func TestIdleHopsAreBounded(t *testing.T) {
	w := newLocalCloud(t)
	cont := &recordingContinuer{}
	b := testBuilder(w, &fakeRemote{table: talosTable}, cont, Options{StepTimeout: 2 * time.Second, InstallTimeout: 10 * time.Second})
	labels := target.targetLabels("")
	labels[label.Role], labels[label.Step] = label.RoleBuildServer, "install"
	w.createServer(labels)
	req := Request{Version: target.Version, Arch: target.Arch, Schematic: target.Schematic}
	var res Result
	for hop := 1; hop <= maxIdleHops+1; hop++ {
		// Each invocation starts with its whole 11 s, but something (a slow
		// start) leaves it less than the install needs.
		start := time.Now().Add(-2 * time.Second)
		ctx, cancel := context.WithDeadline(context.Background(), start.Add(11*time.Second))
		res = b.Build(withInvocationStart(ctx, start), target, req)
		cancel()
		if hop <= maxIdleHops {
			if res.State != InProgress || len(cont.reqs) != hop || cont.reqs[hop-1].Continuation.Idle != hop {
				t.Fatalf("hop %d: result %+v, continuations %+v", hop, res, cont.reqs)
			}
			req = cont.reqs[hop-1]
		}
	}
	if res.State != Failed || !strings.Contains(res.Error, "invocations in a row handed step install over without progress") {
		t.Fatalf("result = %+v", res)
	}
	// A payload cannot reset the count: a forged or altered continuation is refused.
	forged := req
	forged.Continuation = &Continuation{Origin: req.Continuation.Origin, Idle: 0, MAC: req.Continuation.MAC}
	if _, err := b.Handle(context.Background(), forged); err == nil || !strings.Contains(err.Error(), "not signed") {
		t.Errorf("forged continuation: %v", err)
	}
}

func TestWaitHandsOver(t *testing.T) {
	t.Parallel() // it waits for a slow snapshot
	w := newLocalCloud(t)
	w.emu.SetFaults(fakehcloud.Faults{SlowImages: 1, SlowImageFor: slowSnapshot})
	cont := &recordingContinuer{}
	b := testBuilder(w, &fakeRemote{table: talosTable}, cont, Options{SnapshotWait: 20 * time.Millisecond})
	res := b.Build(context.Background(), target, Request{})
	if res.State != InProgress || res.Step != StepWait || len(cont.reqs) != 1 {
		t.Fatalf("result = %+v, continuations %d", res, len(cont.reqs))
	}
	// A snapshot takes its time: watching it is progress, bounded by
	// SNAPSHOT_TIMEOUT, so hand-overs while it is created are not idle.
	for hop := range 2 * maxIdleHops {
		req := cont.reqs[len(cont.reqs)-1]
		if res = b.Build(context.Background(), target, req); res.State != InProgress || req.Continuation.Idle != 0 {
			t.Fatalf("hop %d: %+v, continuation %+v", hop, res, req.Continuation)
		}
	}
	w.awaitSnapshots()
	if res = b.Build(context.Background(), target, Request{}); res.State != Done {
		t.Fatalf("after the snapshot is ready: %+v", res)
	}
	if s, k, i := w.counts(); s != 0 || k != 0 || i != 1 {
		t.Errorf("left %d servers, %d keys, %d images", s, k, i)
	}
}

func TestFailedInstallLeavesNothing(t *testing.T) {
	tests := []struct {
		name   string
		remote *fakeRemote
		err    string
		code   string // of the failure record
	}{
		{"truncated download", &fakeRemote{failRun: &ssh.ExitError{Status: 1, Tail: "zstd: premature end"}}, "premature end", "download"},
		{"session broke", &fakeRemote{failRun: errors.New("ssh: unexpected EOF")}, "unexpected EOF", "rescue-ssh"},
		{"mbr disk", &fakeRemote{table: mbrDisk()}, "an MBR partition table, not a GPT", "verify"},
		{"missing META", &fakeRemote{table: tableWithoutMETA}, "lacks the Talos partition META", "verify"},
		{"no table", &fakeRemote{table: make([]byte, 8<<20)}, "the disk has no partition table", "verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newLocalCloud(t)
			res := testBuilder(w, tt.remote, nil, Options{}).Build(context.Background(), target, Request{})
			if res.State != Failed || res.Step != StepInstall || !strings.Contains(res.Error, tt.err) || res.Code != tt.code {
				t.Errorf("result = %+v", res)
			}
			if rec, ok := w.record(target); !ok || rec.Code != tt.code || rec.Failures != 1 {
				t.Errorf("failure record %+v (found %v), want code %s", rec, ok, tt.code)
			}
			if s, k, i := w.counts(); s != 0 || k != 0 || i != 0 {
				t.Errorf("left %d servers, %d keys, %d images", s, k, i)
			}
		})
	}
}

func TestForceReplacesOnlyWhenTheNewOneIsAvailable(t *testing.T) {
	t.Parallel() // it waits for a slow snapshot
	w := newLocalCloud(t)
	b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{SnapshotWait: 20 * time.Millisecond})
	first := b.Build(context.Background(), target, Request{})
	w.emu.SetFaults(fakehcloud.Faults{SlowImages: 1, SlowImageFor: slowSnapshot})
	res := b.Build(context.Background(), target, Request{Force: true})
	if res.State != InProgress {
		t.Fatalf("forced build = %+v", res)
	}
	if _, ok := w.emu.Image(first.SnapshotID); !ok {
		t.Fatal("the old snapshot was deleted before the new one is available")
	}
	w.awaitSnapshots()
	res = b.Build(context.Background(), target, Request{Force: true})
	if res.State != Done || res.SnapshotID == first.SnapshotID {
		t.Fatalf("forced build = %+v", res)
	}
	if _, _, i := w.counts(); i != 1 || !slices.Contains(w.snapshots(), res.SnapshotID) {
		t.Errorf("%d images; want only the new one", i)
	}
}

// TestBuildFinishedWhileTakingTheLease: the server seen at the check is gone
// once the lease is ours, because its holder finished: done, nothing new.
func TestBuildFinishedWhileTakingTheLease(t *testing.T) {
	w := newLocalCloud(t)
	b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{})
	first := b.Build(context.Background(), target, Request{})
	labels := target.targetLabels("")
	labels[label.Role], labels[label.Step] = label.RoleBuildServer, "cleanup"
	srv := w.createServer(labels)
	lookups := 0
	w.cloud.hook = func(call string) {
		if call != "ServerByName" {
			return
		}
		if lookups++; lookups == 2 {
			if err := w.api.DeleteServer(context.Background(), srv); err != nil {
				t.Fatal(err)
			}
		}
	}
	w.cloud.resetCalls()
	res := b.Build(context.Background(), target, Request{})
	if res.State != Done || res.SnapshotID != first.SnapshotID {
		t.Fatalf("result = %+v", res)
	}
	if m := mutating(w.cloud.callLog()); !slices.Equal(m, []string{"CreateSSHKey", "DeleteSSHKey"}) {
		t.Errorf("calls %v", m)
	}
	if s, k, i := w.counts(); s != 0 || k != 0 || i != 1 {
		t.Errorf("left %d servers, %d keys, %d images", s, k, i)
	}
}

// TestFailedSnapshotThatCannotBeDeleted: a failed snapshot that refuses
// deletion (still locked by its action) keeps no label a consumer or a
// target selects on, and a later look deletes it.
func TestFailedSnapshotThatCannotBeDeleted(t *testing.T) {
	t.Parallel() // it waits for a slow snapshot
	w := newLocalCloud(t)
	b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{SnapshotTimeout: time.Minute})
	labels := target.targetLabels("")
	labels[label.Role], labels[label.Step] = label.RoleBuildServer, "wait"
	srv := w.createServer(labels)
	// Its create_image still runs, which locks the snapshot and the server,
	// and the Builder looks an hour later.
	img := w.createSnapshot(srv, target.snapshotLabels("", nil, srv.ID), fakehcloud.Faults{SlowImages: 1, SlowImageFor: slowSnapshot})
	b.now = func() time.Time { return time.Now().Add(time.Hour) }

	res := b.Build(context.Background(), target, Request{})
	if res.State != Failed || !strings.Contains(res.Error, "failed: timeout") {
		t.Fatalf("result = %+v", res)
	}
	failed, _ := w.emu.Image(img.ID)
	want := map[string]string{label.Managed: label.ManagedValue, label.Build: strconv.FormatInt(srv.ID, 10), label.Failed: "timeout"}
	if !maps.Equal(failed.Labels, want) {
		t.Errorf("labels of the failed snapshot = %v, want %v", failed.Labels, want)
	}
	if w.selects(target.snapshotSelector(""), img.ID) || w.selects("os=talos", img.ID) {
		t.Error("the failed snapshot is still selected as the target's")
	}
	if s, _, i := w.counts(); s != 1 || i != 1 {
		t.Errorf("%d servers, %d images; want both locked ones left", s, i)
	}

	// Its action ended; the next request (a retry) deletes it and takes the
	// snapshot again.
	w.awaitImage(img.ID, string(hcloud.ImageStatusAvailable))
	b.now = time.Now
	res = b.Build(context.Background(), target, Request{})
	if _, there := w.emu.Image(img.ID); res.State != Done || there {
		t.Fatalf("result = %+v; failed snapshot still there: %v", res, there)
	}
	if s, k, i := w.counts(); s != 0 || k != 0 || i != 1 {
		t.Errorf("left %d servers, %d keys, %d images; want 0, 0, 1", s, k, i)
	}
}

// TestSnapshotMadeWhileTakingTheLease: no server at the first look, but a
// duplicate of the request finished the build before this invocation got
// the lease: the check after taking it finds the snapshot; nothing is built.
func TestSnapshotMadeWhileTakingTheLease(t *testing.T) {
	w := newLocalCloud(t)
	b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{})
	lookups := 0
	var made int64
	w.cloud.hook = func(call string) {
		if call != "ServerByName" {
			return
		}
		if lookups++; lookups == 2 {
			made = w.addSnapshot(fakehcloud.Image{Labels: target.snapshotLabels("", nil, 1)}).ID
		}
	}
	res := b.Build(context.Background(), target, Request{})
	if res.State != Done || res.SnapshotID != made {
		t.Fatalf("result = %+v, want done with snapshot %d", res, made)
	}
	if m := mutating(w.cloud.callLog()); !slices.Equal(m, []string{"CreateSSHKey", "DeleteSSHKey"}) {
		t.Errorf("calls %v", m)
	}
}

// TestImageBeingBuiltIsRetried: the factory builds an image on its first
// request and blocks meanwhile; a check that times out on it creates
// nothing and asks Lambda to retry (a function error), not to fail for good.
func TestImageBeingBuiltIsRetried(t *testing.T) {
	w := newLocalCloud(t)
	b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{})
	building := newFactory(t, fakefactory.Options{Versions: []string{"v1.13.9"}, BuildDelay: time.Minute})
	b.factory = &talos.Factory{BaseURL: building.URL(), HeadTimeout: 50 * time.Millisecond}
	resp, err := b.Handle(context.Background(), Request{Version: "v1.13.9", Arch: "amd64"})
	var retry *RetryError
	if !errors.As(err, &retry) || resp.Results[0].State != InProgress || !strings.Contains(resp.Results[0].Error, "building") {
		t.Fatalf("response %+v, error %v", resp, err)
	}
	if m := mutating(w.cloud.callLog()); len(m) != 0 {
		t.Errorf("mutating calls %v", m)
	}
}

// TestNameTakenButServerGone: a create meets uniqueness_error, but the
// server that took the name is gone by the lookup: nothing to adopt, and the
// request is to be retried (a function error), not recorded as a failure.
func TestNameTakenButServerGone(t *testing.T) {
	w := newLocalCloud(t)
	// Another invocation's server takes the name just before the create,
	// and its cleanup deletes it just before the lookup that follows.
	var taken *hcloud.Server
	w.cloud.hook = func(call string) {
		switch {
		case call == "CreateServer":
			labels := target.targetLabels("")
			labels[label.Role], labels[label.Step] = label.RoleBuildServer, string(StepCleanup)
			taken = w.createServer(labels)
		case call == "ServerByName" && taken != nil:
			if err := w.api.DeleteServer(context.Background(), taken); err != nil {
				t.Fatal(err)
			}
			taken = nil
		}
	}
	b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{})
	_, err := b.Handle(context.Background(), Request{Version: "v1.13.9", Arch: "amd64"})
	var retry *RetryError
	if !errors.As(err, &retry) || !strings.Contains(err.Error(), "its name was taken, but the server is gone") || strings.Contains(err.Error(), "%!") {
		t.Fatalf("error = %v, want a retry that says the server is gone", err)
	}
	if s, k, _ := w.counts(); s != 0 || k != 0 {
		t.Errorf("left %d servers, %d keys", s, k)
	}
}
