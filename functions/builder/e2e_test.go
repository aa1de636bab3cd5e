package main

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakefactory"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack/stacktest"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// The tests in this file run the real bootstrap under the Lambda Runtime
// Interface Emulator against the local world (infra/stack/stacktest).

// world is the local world with the Builder deployed as function "builder".
type world struct {
	*stacktest.World
	t testing.TB
}

type setup struct {
	stack   stack.Options
	timeout time.Duration     // function timeout; default 1 minute
	env     map[string]string // on top of stacktest.Timings and LOCATIONS below
}

func newWorld(t testing.TB, s setup) *world {
	t.Helper()
	env := map[string]string{"LOCATIONS": "fsn1,nbg1"}
	maps.Copy(env, s.env)
	w := stacktest.Deploy(t, stacktest.Start(t, s.stack), map[string]stacktest.Function{
		"builder": {Package: "./functions/builder", Env: env, Timeout: s.timeout, PoolSize: 3},
	})
	return &world{World: w, t: t}
}

// invoke calls the Builder synchronously. It returns the response, or the
// function error's message.
func (w *world) invoke(payload string) (build.Response, string) {
	w.t.Helper()
	out, failed := w.Invoke("builder", payload)
	if failed != "" {
		return build.Response{}, failed
	}
	var resp build.Response
	if err := json.Unmarshal(out, &resp); err != nil {
		w.t.Fatalf("response %s: %v", out, err)
	}
	return resp, ""
}

// checkRecords asserts that the failure records are those given as
// "version/arch code".
func (w *world) checkRecords(records ...string) {
	w.t.Helper()
	var got []string
	for _, k := range w.Stack.Cloud.SSHKeys() {
		if k.Labels["hcloud-k8s.io/role"] == "failure" {
			got = append(got, k.Labels["talos_version"]+"/"+k.Labels["arch"]+" "+k.Labels["hcloud-k8s.io/error"])
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, slices.Sorted(slices.Values(records))) {
		w.t.Errorf("failure records %v, want %v", got, records)
	}
}

// failure invokes the Builder with a payload whose one target fails for
// good: the result says so, and no function error (which Lambda would
// retry) is returned.
func (w *world) failure(payload string) build.Result {
	w.t.Helper()
	resp, ferr := w.invoke(payload)
	if ferr != "" || len(resp.Results) != 1 || resp.Results[0].State != build.Failed {
		w.t.Fatalf("%s: response %+v, function error %q; want a failed result", payload, resp, ferr)
	}
	return resp.Results[0]
}

func (w *world) invokeAsync(payload string) {
	w.t.Helper()
	w.InvokeAsync("builder", payload)
}

func (w *world) snapshots() []fakehcloud.Image {
	var out []fakehcloud.Image
	for _, img := range w.Stack.Cloud.Images() {
		if img.Type == "snapshot" {
			out = append(out, img)
		}
	}
	return out
}

// checkDone asserts that exactly the targets have snapshots holding their
// factory image, labelled for the consumers, and that nothing else is left.
func (w *world) checkDone(targets ...build.Target) {
	w.t.Helper()
	snaps := w.snapshots()
	if len(snaps) != len(targets) {
		w.t.Errorf("%d snapshots, want %d: %+v", len(snaps), len(targets), snaps)
	}
	for _, tg := range targets {
		i := slices.IndexFunc(snaps, func(img fakehcloud.Image) bool {
			got, ok := build.TargetFromLabels(img.Labels)
			return ok && got == tg
		})
		if i < 0 {
			w.t.Errorf("no snapshot of %v", tg)
			continue
		}
		img := snaps[i]
		_, digest, err := w.Stack.Factory.Image(tg.Schematic, tg.Version, tg.Arch)
		if err != nil {
			w.t.Fatal(err)
		}
		if img.Digest != digest || img.Status != "available" {
			w.t.Errorf("%v: snapshot %s digest %s, want the image's %s", tg, img.Status, img.Digest, digest)
		}
		// A snapshot creates only servers with at least its disk.
		if img.DiskSize != 40 {
			w.t.Errorf("%v: snapshot disk %v GB, want 40", tg, img.DiskSize)
		}
		for k, v := range map[string]string{"os": "talos", "talos_version": tg.Version, "version": tg.Version,
			"arch": tg.Arch, "talos_schematic_id": tg.Schematic[:32]} {
			if img.Labels[k] != v {
				w.t.Errorf("%v: label %s=%q, want %q", tg, k, img.Labels[k], v)
			}
		}
	}
	w.checkNothingLeft()
}

// checkNothingLeft asserts that no server and no key is left but the
// failure records given as "version/arch code".
func (w *world) checkNothingLeft(records ...string) {
	w.t.Helper()
	if s := w.Stack.Cloud.Servers(); len(s) != 0 {
		w.t.Errorf("servers left: %+v", s)
	}
	var others []fakehcloud.SSHKey
	for _, k := range w.Stack.Cloud.SSHKeys() {
		if k.Labels["hcloud-k8s.io/role"] != "failure" {
			others = append(others, k)
		}
	}
	if len(others) != 0 {
		w.t.Errorf("ssh keys left: %+v", others)
	}
	w.checkRecords(records...)
	// Every server was created with a key: Hetzner mailed no root password.
	if n := w.Stack.Cloud.RootPasswords(); n != 0 {
		w.t.Errorf("%d root passwords issued", n)
	}
}

func (w *world) countRequests(method, pattern string) int {
	return w.Stack.Cloud.CountRequests(method, pattern)
}

func target(arch string) build.Target {
	return build.Target{Version: "v1.13.9", Arch: arch, Schematic: talos.QemuGuestAgentSchematic}
}

func TestBuildBothArchitecturesThenNoOp(t *testing.T) {
	w := newWorld(t, setup{})
	resp, ferr := w.invoke(`{"version":"v1.13.9"}`)
	if ferr != "" {
		t.Fatal(ferr)
	}
	if len(resp.Results) != 2 {
		t.Fatalf("results = %+v", resp.Results)
	}
	for _, r := range resp.Results {
		if r.State != build.Done || r.SnapshotID == 0 || r.Location != "fsn1" {
			t.Errorf("result = %+v", r)
		}
	}
	w.checkDone(target("amd64"), target("arm64"))

	before := len(w.Stack.Cloud.Requests())
	resp, ferr = w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
	if ferr != "" || len(resp.Results) != 1 || resp.Results[0].State != build.Done {
		t.Fatalf("second request: %+v %s", resp, ferr)
	}
	if n := len(w.Stack.Cloud.Requests()) - before; n > 3 {
		t.Errorf("a no-op request made %d API requests, want ≤ 3", n)
	}
	w.checkDone(target("amd64"), target("arm64"))
}

func TestBadPayloadsCreateNothing(t *testing.T) {
	w := newWorld(t, setup{})
	// A version the factory does not serve fails, as a result: retrying it
	// at once would not help. Nothing was created, so nothing is recorded.
	if res := w.failure(`{"version":"v9.9.9","arch":"amd64"}`); res.Code != "not-served" ||
		!strings.Contains(res.Error, "talos v9.9.9 is not available from the image factory") {
		t.Errorf("v9.9.9: %+v", res)
	}
	for _, tt := range []struct{ payload, want string }{
		{`{"version":"1.13.9"}`, `"1.13.9" is not a version`},
		{`{"version":"v1.13.9","arch":"sparc"}`, `arch: "sparc" is not one of the configured architectures`},
		{`{"version":"v1.13.9","schematic":"ABC"}`, `schematic: "ABC" is not a schematic ID`},
		{`{"version":"v1.13.9","schematic":"` + strings.Repeat("0", 64) + `","arch":"amd64"}`, "is not a configured schematic"},
		{`{"version":"v1.13.9","extra":1}`, `unknown field "extra"`},
		{`{"version":"v1.13.9'; reboot; '"}`, "is not a version"},
		{`{"version":"v1.13.9","pad":"` + strings.Repeat("x", 5000) + `"}`, "at most 4096"},
		{`[]`, "invalid request"},
	} {
		_, ferr := w.invoke(tt.payload)
		if !strings.Contains(ferr, tt.want) {
			t.Errorf("%.60s: error %q, want %q", tt.payload, ferr, tt.want)
		}
	}
	for _, r := range w.Stack.Cloud.Requests() {
		if r.Method != "GET" {
			t.Errorf("bad payloads changed the cloud: %s %s", r.Method, r.Path)
		}
	}
	w.checkNothingLeft()
}

// TestKillAtEveryStep kills the function when a step starts, in the
// middle of the write and while the boot server boots, then invokes again:
// one snapshot, booted by one boot server, nothing left.
func TestKillAtEveryStep(t *testing.T) {
	started := func(step string) []string { return []string{`"message":"step started"`, `"step":"` + step + `"`} }
	points := []struct {
		name  string
		match []string // all in one log line
		// adopt: the kill leaves the boot server booting, for the next
		// invocation to adopt.
		adopt bool
	}{
		{name: "server", match: started("server")},
		{name: "install", match: started("install")},
		{name: "mid-write", match: []string{`"message":"writing image"`}},
		{name: "snapshot", match: started("snapshot")},
		{name: "wait", match: started("wait")},
		{name: "verify", match: started("verify")},
		{name: "mid-boot", match: []string{`"message":"waiting for the Talos API of the snapshot's boot"`}, adopt: true},
		{name: "cleanup", match: started("cleanup")},
		{name: "after cleanup", match: []string{`"message":"server deleted"`}},
	}
	for _, p := range points {
		t.Run(p.name, func(t *testing.T) {
			w := newWorld(t, setup{stack: stack.Options{ActionDurations: map[string]time.Duration{"create_image": 500 * time.Millisecond}}})
			if p.adopt {
				// The kill lands long before the Talos API is up.
				w.Stack.Machines.SetTalosBootDelay(2 * time.Second)
			}
			killed := w.Lambda.KillOn("builder", func(line string) bool {
				return !slices.ContainsFunc(p.match, func(m string) bool { return !strings.Contains(line, m) })
			})
			_, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
			select { // closes once the killed runtime has exited, maybe just after the answer
			case <-killed:
			case <-time.After(10 * time.Second):
				t.Fatalf("no kill at %s (function error %q)", p.name, ferr)
			}
			if !strings.Contains(ferr, "Runtime") {
				t.Errorf("killed invocation's error = %q", ferr)
			}
			// The killed invocation's lease expires after LEASE_TTL; until
			// then a new invocation reports in_progress.
			deadline := time.Now().Add(30 * time.Second)
			for {
				resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
				if ferr != "" {
					t.Fatalf("re-invoke: %s", ferr)
				}
				if resp.Results[0].State == build.Done {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("not done: %+v", resp.Results[0])
				}
				time.Sleep(500 * time.Millisecond)
			}
			w.checkDone(target("amd64"))
			if _, boots := w.serversCreated(); len(boots) != 1 {
				t.Errorf("boot servers %v, want one", boots)
			}
			if p.adopt && !w.logged("adopting the boot server an earlier invocation made") {
				t.Error("the boot server was not adopted")
			}
		})
	}
}

// TestContinuations gives the function too little time for a whole build:
// it must hand over to new invocations of itself and still finish.
func TestContinuations(t *testing.T) {
	w := newWorld(t, setup{
		stack:   stack.Options{ActionDurations: map[string]time.Duration{"create_image": 3 * time.Second}},
		timeout: 4 * time.Second,
		env:     map[string]string{"STEP_TIMEOUT": "1s", "INSTALL_TIMEOUT": "3s", "SNAPSHOT_WAIT": "1s", "VERIFY_TIMEOUT": "3s"},
	})
	w.invokeAsync(`{"version":"v1.13.9","arch":"arm64"}`)
	w.WaitIdle()
	w.checkDone(target("arm64"))
	invs := w.Lambda.Invocations("builder")
	if len(invs) < 2 {
		t.Errorf("%d invocations, want continuations", len(invs))
	}
	for _, inv := range invs {
		if inv.Failed() {
			t.Errorf("invocation %s failed: %s %s", inv.RequestID, inv.ErrorType, inv.ErrorMessage)
		}
	}
}

func TestSimultaneousInvocationsMakeOneServer(t *testing.T) {
	w := newWorld(t, setup{})
	var wg sync.WaitGroup
	states := make([]build.State, 3)
	for i := range states {
		wg.Go(func() {
			resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
			if ferr != "" {
				t.Error(ferr)
				return
			}
			states[i] = resp.Results[0].State
		})
	}
	wg.Wait()
	if n := w.countRequests("POST", "/v1/servers"); n != 2 {
		t.Errorf("%d server creations, want 2: the build server and its boot server", n)
	}
	if builds, boots := w.serversCreated(); len(builds) != 1 || len(boots) != 1 {
		t.Errorf("created build servers %v and boot servers %v, want one each", builds, boots)
	}
	if !slices.Contains(states, build.Done) {
		t.Errorf("states = %v, want one done", states)
	}
	// Duplicates answer in_progress or done; a last call settles it.
	if resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`); ferr != "" || resp.Results[0].State != build.Done {
		t.Fatalf("after: %+v %s", resp, ferr)
	}
	w.checkDone(target("amd64"))
}

func TestFlakyAPI(t *testing.T) {
	// A lease renewal meets the faults too, and hcloud-go's backoff after
	// one of them takes seconds: the lease must outlast a few of them.
	w := newWorld(t, setup{stack: stack.Options{Seed: 7, Faults: fakehcloud.Faults{
		Transient: 0.2, Locked: 0.1, FailAfterCommit: 1,
	}}, env: map[string]string{"LEASE_TTL": "15s"}})
	resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
	if ferr != "" || resp.Results[0].State != build.Done {
		t.Fatalf("%+v %s", resp, ferr)
	}
	var faults int
	for _, r := range w.Stack.Cloud.Requests() {
		if r.Status == 429 || r.Status >= 500 || r.Status == 423 {
			faults++
		}
	}
	if faults == 0 {
		t.Error("no fault was injected")
	}
	t.Logf("%d of %d requests failed on purpose", faults, len(w.Stack.Cloud.Requests()))
	w.Stack.Cloud.SetFaults(fakehcloud.Faults{})
	w.checkDone(target("amd64"))
}

func TestTruncatedImageCreatesNoSnapshot(t *testing.T) {
	for _, mode := range []fakefactory.Truncation{fakefactory.TruncateShort, fakefactory.TruncateCut} {
		w := newWorld(t, setup{})
		w.Stack.Factory.SetTruncate(mode)
		if res := w.failure(`{"version":"v1.13.9","arch":"amd64"}`); !strings.Contains(res.Error, "write http") || res.Code != "download" {
			t.Errorf("truncation %d: %+v", mode, res)
		}
		if s := w.snapshots(); len(s) != 0 {
			t.Errorf("truncation %d: snapshots of a truncated image: %+v", mode, s)
		}
		w.checkNothingLeft("v1.13.9/amd64 download")
	}
}

// TestImageWithoutMETACreatesNoSnapshot: a written disk that lacks a
// partition every Talos image has fails its check; nothing is snapshotted.
func TestImageWithoutMETACreatesNoSnapshot(t *testing.T) {
	w := newWorld(t, setup{})
	if err := w.Stack.Factory.SetOmitPartition("META"); err != nil {
		t.Fatal(err)
	}
	if res := w.failure(`{"version":"v1.13.9","arch":"arm64"}`); !strings.Contains(res.Error, "lacks the Talos partition META") ||
		res.Code != "verify" {
		t.Errorf("result %+v", res)
	}
	if s := w.snapshots(); len(s) != 0 {
		t.Errorf("snapshots of a broken image: %+v", s)
	}
	w.checkNothingLeft("v1.13.9/arm64 verify")
}

func TestNoCapacityInFirstLocation(t *testing.T) {
	w := newWorld(t, setup{stack: stack.Options{Faults: fakehcloud.Faults{
		Unavailable: []fakehcloud.Placement{{ServerType: "cax11", Location: "fsn1"}},
	}}})
	resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"arm64"}`)
	if ferr != "" || resp.Results[0].Location != "nbg1" || resp.Results[0].ServerType != "cax11" {
		t.Fatalf("%+v %s", resp, ferr)
	}
	w.checkDone(target("arm64"))
}

// TestSmallTypeOutOfStockEverywhere: with the 40 GB type out of stock in
// every location and an 80 GB one configured and in stock, the build fails
// clearly instead of making a snapshot that cannot create 40 GB servers.
func TestSmallTypeOutOfStockEverywhere(t *testing.T) {
	w := newWorld(t, setup{
		stack: stack.Options{Faults: fakehcloud.Faults{Unavailable: []fakehcloud.Placement{
			{ServerType: "cx23", Location: "fsn1"}, {ServerType: "cx23", Location: "nbg1"}}}},
		env: map[string]string{"SERVER_TYPES_AMD64": "cx23,cpx22"},
	})
	res := w.failure(`{"version":"v1.13.9","arch":"amd64"}`)
	want := "no capacity for cx23 (40 GB disk) in fsn1, nbg1; a bigger disk would make a snapshot that cannot create 40 GB servers"
	if !strings.Contains(res.Error, want) || res.Code != "no-capacity" {
		t.Errorf("result %+v, want %q", res, want)
	}
	for _, r := range w.Stack.Cloud.Requests() {
		if r.Method == "POST" && r.Path == "/v1/servers" && r.Status != 412 {
			t.Errorf("server create answered %d; want only 412 resource_unavailable (cx23 in fsn1, nbg1)", r.Status)
		}
	}
	if n := w.countRequests("POST", "/v1/servers"); n != 2 {
		t.Errorf("%d server creates, want 2", n)
	}
	if s := w.snapshots(); len(s) != 0 {
		t.Errorf("snapshots: %+v", s)
	}
	w.checkNothingLeft("v1.13.9/amd64 no-capacity")
}

// TestServerLimitFailsClearly: a project at its server quota fails the
// build with a message naming the quota, after one create: no retry, no
// other location.
func TestServerLimitFailsClearly(t *testing.T) {
	w := newWorld(t, setup{stack: stack.Options{Faults: fakehcloud.Faults{ServerLimit: 1}}})
	ctx := context.Background()
	c := hcloud.NewClient(hcloud.WithEndpoint(w.Stack.HCloudURL), hcloud.WithToken(w.Stack.Token))
	key, _, err := c.SSHKey.Create(ctx, hcloud.SSHKeyCreateOpts{Name: "someone", PublicKey: otherKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Server.Create(ctx, hcloud.ServerCreateOpts{Name: "someone", ServerType: &hcloud.ServerType{Name: "cx23"},
		Image: &hcloud.Image{Name: "debian-13"}, SSHKeys: []*hcloud.SSHKey{key}}); err != nil {
		t.Fatal(err)
	}
	res := w.failure(`{"version":"v1.13.9","arch":"amd64"}`)
	if !strings.Contains(res.Error, "the project's server limit is reached") || !strings.Contains(res.Error, "resource_limit_exceeded") ||
		res.Code != "server-limit" {
		t.Errorf("result %+v", res)
	}
	if n := w.countRequests("POST", "/v1/servers"); n != 2 {
		t.Errorf("%d server creates, want ours and one of the builder", n)
	}
	if s := w.Stack.Cloud.Servers(); len(s) != 1 || s[0].Name != "someone" {
		t.Errorf("servers: %+v", s)
	}
	if k := w.Stack.Cloud.SSHKeys(); len(k) != 2 || k[0].Name != "someone" || k[1].Labels["hcloud-k8s.io/error"] != "server-limit" {
		t.Errorf("ssh keys: %+v, want ours and the failure record", k)
	}
}

const otherKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEbWUwSzv9S5TvhhYk6kZ5MwdmZ2qzK7W0ClPXiGwD9D"

// TestTokenFromSecretsManager deploys the Builder as template.yaml does: no
// HCLOUD_TOKEN, only the name of the secret that holds it.
func TestTokenFromSecretsManager(t *testing.T) {
	w := newWorld(t, setup{env: map[string]string{"HCLOUD_TOKEN": "", "HCLOUD_TOKEN_SECRET": "hcloud-k8s/hcloud-token"}})
	w.Stack.Secrets.PutSecret("hcloud-k8s/hcloud-token", w.Stack.Token)
	resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
	if ferr != "" || resp.Results[0].State != build.Done {
		t.Fatalf("%+v %s", resp, ferr)
	}
	if w.Stack.Secrets.Reads() == 0 {
		t.Error("the token was not read from the secret")
	}
	w.checkDone(target("amd64"))
	for _, inv := range w.Lambda.Invocations("builder") {
		for _, l := range inv.Logs {
			if strings.Contains(l, w.Stack.Token) {
				t.Fatalf("the token is in the logs: %s", l)
			}
		}
	}
}
