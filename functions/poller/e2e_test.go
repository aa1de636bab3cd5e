package main

import (
	"encoding/json"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack/stacktest"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/poll"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// The tests in this file deploy both functions' real bootstraps under the
// Lambda Runtime Interface Emulator against the local world
// (infra/stack/stacktest): the Poller invokes the Builder through the
// Lambda Invoke API, as in AWS.

// world is the local world with the Builder and the Poller deployed as
// functions "builder" and "poller".
type world struct {
	*stacktest.World
	t *testing.T
}

// newWorld deploys both functions with the configuration cfg (name, value
// pairs) on top of the test defaults. Both get the same configuration, as
// template.yaml's Globals give it: the failure records carry its digest.
func newWorld(t *testing.T, cfg ...string) *world {
	t.Helper()
	pollerEnv := env(slices.Concat(cfg, []string{"BUILDER_FUNCTION_NAME", "builder"}))
	w := stacktest.Deploy(t, stacktest.Start(t, stack.Options{}), map[string]stacktest.Function{
		"builder": {Package: "./functions/builder", Env: env(cfg), PoolSize: 4},
		"poller":  {Package: "./functions/poller", Env: pollerEnv, PoolSize: 1},
	})
	return &world{World: w, t: t}
}

// env makes an environment of name, value pairs.
func env(kv []string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// poll invokes the Poller, waits until every build it started has ended
// and returns its report.
func (w *world) poll(payload string) poll.Report {
	w.t.Helper()
	out, failed := w.Invoke("poller", payload)
	if failed != "" {
		w.t.Fatalf("poller failed: %s", out)
	}
	var rep poll.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		w.t.Fatalf("report %s: %v", out, err)
	}
	w.WaitIdle()
	return rep
}

func targets(items []poll.Item) []string {
	out := []string{}
	for _, it := range items {
		out = append(out, it.Version+"/"+it.Arch)
	}
	sort.Strings(out)
	return out
}

func (w *world) snapshots() []string {
	out := []string{}
	for _, img := range w.Stack.Cloud.Images() {
		if img.Type != "snapshot" {
			continue
		}
		t, ok := build.TargetFromLabels(img.Labels)
		if !ok {
			out = append(out, "unmanaged:"+img.Labels["version"])
			continue
		}
		_, digest, err := w.Stack.Factory.Image(t.Schematic, t.Version, t.Arch)
		if err != nil || digest != img.Digest || img.Status != "available" {
			w.t.Errorf("snapshot %d of %v: %s, digest %s, want %s", img.ID, t, img.Status, img.Digest, digest)
		}
		out = append(out, t.Version+"/"+t.Arch)
	}
	sort.Strings(out)
	return out
}

// checkNothingLeft checks that no server and no SSH key is left but for the
// deployment's marker.
func (w *world) checkNothingLeft() {
	w.t.Helper()
	if s := w.Stack.Cloud.Servers(); len(s) != 0 {
		w.t.Errorf("servers left: %+v", s)
	}
	for _, k := range w.Stack.Cloud.SSHKeys() {
		if k.Labels["hcloud-k8s.io/role"] != "deployment" {
			w.t.Errorf("ssh key left: %+v", k)
		}
	}
}

// TestPollsBuildTheTrackedReleases follows a fresh deploy: a dry run that
// changes nothing, one poll that builds the newest patch of the two newest
// minors for both architectures (one build at a time per architecture,
// oldest first, each started by the one before it), a poll with nothing to
// do, and an unmanaged os=talos snapshot that survives all of it. The most
// recent snapshot of each architecture is the highest version.
func TestPollsBuildTheTrackedReleases(t *testing.T) {
	w := newWorld(t)
	unmanaged, err := w.Stack.Cloud.AddImage(fakehcloud.Image{Type: "snapshot", Status: "available", Description: "hand-made",
		Architecture: "x86", Labels: map[string]string{"os": "talos", "version": "v1.9.0"}})
	if err != nil {
		t.Fatal(err)
	}

	all := []string{"v1.12.8/amd64", "v1.12.8/arm64", "v1.13.9/amd64", "v1.13.9/arm64"}
	dry := w.poll(`{"dry_run":true}`)
	if got := targets(dry.Builds); !slices.Equal(got, all) {
		t.Errorf("dry run builds %v", got)
	}
	if len(w.Lambda.Invocations("builder")) != 0 || len(w.snapshots()) != 1 {
		t.Fatal("the dry run acted")
	}
	if !slices.Equal(dry.Tracked, []string{"v1.12.8", "v1.13.9"}) && !slices.Equal(dry.Tracked, []string{"v1.13.9", "v1.12.8"}) {
		t.Errorf("tracked %v", dry.Tracked)
	}
	if !slices.Equal(dry.Warnings, []string{poll.AnonymousGitHubWarning}) { // no GITHUB_TOKEN here
		t.Errorf("dry run warnings %q", dry.Warnings)
	}

	polled := time.Now()
	first := w.poll(`{"source":"aws.scheduler"}`)
	if got := targets(first.Builds); !slices.Equal(got, all) {
		t.Errorf("first poll builds %v", got)
	}
	var last time.Time
	for _, img := range w.Stack.Cloud.Images() {
		if img.Type == "snapshot" && img.Created.After(last) {
			last = img.Created
		}
	}
	// Snapshots' times have seconds, as the API's.
	t.Logf("from the poll to the last snapshot: %.1f s emulated (two builds in a row per architecture)",
		last.Sub(polled.Truncate(time.Second)).Seconds())
	var chained int
	for _, inv := range w.Lambda.Invocations("builder") {
		if strings.Contains(string(inv.Payload), `"continuation"`) && !strings.Contains(string(inv.Payload), `"queue"`) &&
			strings.Contains(string(inv.Payload), `"v1.13.9"`) {
			chained++
		}
	}
	if chained < 2 {
		t.Errorf("%d v1.13.9 builds were started by the Builder, want one per architecture", chained)
	}
	second := w.poll(`{}`)
	if !second.Plan.Empty() || len(second.Deferred) != 0 {
		t.Errorf("second poll plans %+v", second.Plan)
	}
	want := []string{"unmanaged:v1.9.0", "v1.12.8/amd64", "v1.12.8/arm64", "v1.13.9/amd64", "v1.13.9/arm64"}
	if got := w.snapshots(); !slices.Equal(got, want) {
		t.Errorf("snapshots %v, want %v", got, want)
	}
	// The most recent snapshot of each architecture is the highest version.
	latest := map[string]fakehcloud.Image{}
	for _, img := range w.Stack.Cloud.Images() {
		if img.Labels["hcloud-k8s.io/managed-by"] != "" && img.Created.After(latest[img.Labels["arch"]].Created) {
			latest[img.Labels["arch"]] = img
		}
	}
	for arch, img := range latest {
		if img.Labels["talos_version"] != "v1.13.9" {
			t.Errorf("most recent %s snapshot is %s", arch, img.Labels["talos_version"])
		}
	}
	if _, ok := w.Stack.Cloud.Image(unmanaged.ID); !ok {
		t.Error("the unmanaged snapshot was deleted")
	}
	w.checkNothingLeft()
}

// TestKilledBuildIsFinishedByTheRetry kills the Builder in the middle of
// the write: Lambda's retry, a moment later, waits for the dead
// invocation's lease to expire and finishes the build, without waiting for
// the next poll to re-drive it.
func TestKilledBuildIsFinishedByTheRetry(t *testing.T) {
	w := newWorld(t)
	killed := w.Lambda.KillOn("builder", func(line string) bool {
		return strings.Contains(line, `"message":"writing image"`) && strings.Contains(line, "amd64")
	})
	w.poll(`{}`)
	select { // closes once the killed runtime has exited, maybe just after the answer
	case <-killed:
	case <-time.After(10 * time.Second):
		t.Fatal("no build was killed")
	}
	// The retry finished the build and started the next of its queue.
	want := []string{"v1.12.8/amd64", "v1.12.8/arm64", "v1.13.9/amd64", "v1.13.9/arm64"}
	if got := w.snapshots(); !slices.Equal(got, want) {
		t.Fatalf("snapshots after the kill and the retry: %v, want %v", got, want)
	}
	var retried bool
	for _, inv := range w.Lambda.Invocations("builder") {
		retried = retried || (inv.Attempt == 2 && !inv.Failed() && strings.Contains(string(inv.Payload), "amd64"))
	}
	if !retried {
		t.Error("the build was not finished by Lambda's retry of the killed invocation")
	}
	if rep := w.poll(`{}`); !rep.Plan.Empty() {
		t.Errorf("the next poll plans %+v", rep.Plan)
	}
	w.checkNothingLeft()
}

// plant adds a managed snapshot as the Builder labels them, created age ago.
func (w *world) plant(version, arch string, age time.Duration) {
	w.t.Helper()
	s := talos.QemuGuestAgentSchematic
	hw := map[string]string{"amd64": "x86", "arm64": "arm"}[arch]
	_, digest, err := w.Stack.Factory.Image(s, version, arch)
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := w.Stack.Cloud.AddImage(fakehcloud.Image{Type: "snapshot", Status: "available", Architecture: hw, Digest: digest,
		Created: time.Now().Add(-age), Description: "Talos " + version, Labels: map[string]string{
			"os": "talos", "talos_version": version, "version": version, "arch": arch,
			"talos_schematic_id": s[:32], "hcloud-k8s.io/schematic-rest": s[32:],
			"hcloud-k8s.io/managed-by": "image-builder"}}); err != nil {
		w.t.Fatal(err)
	}
}

// TestNewPatchIsBuiltAndOldOnesPruned: with the tracked versions built, a
// published patch makes the next poll build exactly its targets and prune
// what falls out of retention.
func TestNewPatchIsBuiltAndOldOnesPruned(t *testing.T) {
	w := newWorld(t)
	w.plant("v1.13.7", "amd64", 30*24*time.Hour)
	w.plant("v1.13.8", "amd64", 20*24*time.Hour)
	for _, arch := range []string{"amd64", "arm64"} {
		w.plant("v1.12.8", arch, 3*time.Hour)
		w.plant("v1.13.9", arch, 2*time.Hour)
	}
	if rep := w.poll(`{}`); !rep.Plan.Empty() {
		t.Fatalf("poll before the release plans %+v", rep.Plan)
	}
	if _, err := w.Stack.GitHub.PublishRelease("v1.13.10"); err != nil {
		t.Fatal(err)
	}
	if err := w.Stack.Factory.SetAvailable("v1.13.10", true); err != nil {
		t.Fatal(err)
	}
	rep := w.poll(`{}`)
	if got := targets(rep.Builds); !slices.Equal(got, []string{"v1.13.10/amd64", "v1.13.10/arm64"}) {
		t.Errorf("builds %v", got)
	}
	var pruned []string
	for _, r := range rep.Prune {
		pruned = append(pruned, r.Target.Version+"/"+r.Target.Arch)
	}
	// Kept besides the tracked v1.13.10 and v1.12.8: the 2 newest others.
	if !slices.Equal(pruned, []string{"v1.13.7/amd64"}) {
		t.Errorf("pruned %v", pruned)
	}
	want := []string{"v1.12.8/amd64", "v1.12.8/arm64", "v1.13.10/amd64", "v1.13.10/arm64", "v1.13.8/amd64",
		"v1.13.9/amd64", "v1.13.9/arm64"}
	if got := w.snapshots(); !slices.Equal(got, want) {
		t.Errorf("snapshots %v, want %v", got, want)
	}
	if rep := w.poll(`{}`); !rep.Plan.Empty() {
		t.Errorf("poll after the patch plans %+v", rep.Plan)
	}
	w.checkNothingLeft()
}

// TestCapOnFirstDeploy tracks every patch of the two newest minors (17
// versions, 34 targets) with a cap of 3: a poll starts 3 builds, one per
// architecture at a time (the third queued behind the first), and leaves
// the rest for later.
func TestCapOnFirstDeploy(t *testing.T) {
	w := newWorld(t, "TRACK_ALL_PATCHES", "true", "MAX_BUILDS_PER_POLL", "3")
	rep := w.poll(`{}`)
	want := []string{"v1.12.0/amd64", "v1.12.0/arm64", "v1.12.1/amd64"}
	if got := targets(rep.Builds); !slices.Equal(got, want) {
		t.Errorf("builds %v", got)
	}
	if len(rep.Deferred) != 2*len(rep.Tracked)-3 {
		t.Errorf("%d deferred of %d tracked versions", len(rep.Deferred), len(rep.Tracked))
	}
	var fromPoller int
	for _, inv := range w.Lambda.Invocations("builder") {
		if inv.Attempt == 1 && !strings.Contains(string(inv.Payload), `"continuation"`) {
			fromPoller++
		}
	}
	if fromPoller != 2 {
		t.Errorf("the Poller invoked the Builder %d times, want 2", fromPoller)
	}
	if got := w.snapshots(); !slices.Equal(got, want) {
		t.Errorf("snapshots %v", got)
	}
}
