package poll_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakefactory"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakegithub"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/config"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/function"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/poll"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/release"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/ssh"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// recorder is the Builder invoker of these tests: it records payloads.
type recorder struct {
	mu   sync.Mutex
	reqs []build.Request
}

func (r *recorder) Invoke(_ context.Context, req build.Request) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, req)
	return nil
}

// take returns and forgets the recorded payloads.
func (r *recorder) take() []build.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.reqs
	r.reqs = nil
	return out
}

// world is a deployment on the local stack: the real clients pointed at
// it, a Poller whose Builder invocations are recorded, and a Builder.
type world struct {
	t          *testing.T
	st         *stack.Stack
	cfg        config.Config
	deployment string
	cloud      *cloud.Client
	factory    *talos.Factory
	schematics *build.SchematicSet
	releases   *release.Lister
	rec        *recorder
	builder    *build.Builder
	now        func() time.Time
	log        *slog.Logger
}

// localDeployment is the deployment of newWorld.
const localDeployment = "local.hcloud-k8s-builder"

func newWorld(t *testing.T, so stack.Options, env map[string]string) *world {
	t.Helper()
	st, err := stack.Start(so)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return attach(t, st, localDeployment, env)
}

// attach deploys a deployment named id (a build.DeploymentID) with the
// stack's environment and env on an existing stack.
func attach(t *testing.T, st *stack.Stack, id string, env map[string]string) *world {
	t.Helper()
	m := st.Env()
	m["INSTALL_TIMEOUT"], m["STEP_TIMEOUT"], m["SNAPSHOT_WAIT"], m["LEASE_TTL"] = "20s", "2s", "5s", "10s"
	for k, v := range env {
		m[k] = v
	}
	cfg, err := config.LoadFrom(context.Background(), envconfig.MapLookuper(m), nil)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, st: st, cfg: cfg, deployment: id, rec: &recorder{}, now: time.Now,
		log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		factory: &talos.Factory{BaseURL: cfg.FactoryURL},
		cloud: cloud.New(cloud.Options{Token: cfg.HCloudToken, Endpoint: cfg.HCloudEndpoint,
			PollInterval: 50 * time.Millisecond, RetryBase: 10 * time.Millisecond}),
	}
	w.schematics = function.SchematicSet(cfg, w.factory)
	if w.releases, err = release.New(release.Options{BaseURL: cfg.GitHubAPIURL, Token: cfg.GitHubToken, Logger: w.log}); err != nil {
		t.Fatal(err)
	}
	opts := function.BuildOptions(cfg, w.schematics.Configured())
	opts.Deployment = id
	w.builder = build.New(build.Deps{Cloud: w.cloud, Factory: w.factory, Schematics: w.schematics, Logger: w.log}, opts)
	return w
}

// poller returns the deployment's Poller.
func (w *world) poller() *poll.Poller {
	w.t.Helper()
	opts, err := function.PollOptions(w.cfg, w.schematics.Configured())
	if err != nil {
		w.t.Fatal(err)
	}
	opts.Deployment = w.deployment
	return poll.New(poll.Deps{Releases: w.releases, Cloud: w.cloud, Factory: w.factory, Schematics: w.schematics,
		Builder: w.rec, Logger: w.log, Now: w.now}, opts)
}

// run polls once.
func (w *world) run(dryRun bool) (poll.Report, error) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return w.poller().Run(ctx, dryRun)
}

// poll polls once, successfully.
func (w *world) poll(dryRun bool) poll.Report {
	w.t.Helper()
	rep, err := w.run(dryRun)
	if err != nil {
		w.t.Fatalf("poll: %v", err)
	}
	return rep
}

// build runs the recorded Builder payloads to completion, side by side.
func (w *world) build(reqs []build.Request) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(reqs))
	for i, r := range reqs {
		wg.Go(func() { _, errs[i] = w.builder.RunUntilDone(ctx, r) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			w.t.Fatalf("build %+v: %v", reqs[i], err)
		}
	}
}

// snapshots returns "version/arch" of the managed snapshots, sorted.
func (w *world) snapshots() []string {
	var out []string
	for _, img := range w.st.Cloud.Images() {
		if img.Type == "snapshot" && label.IsManaged(img.Labels) {
			out = append(out, img.Labels[label.TalosVersion]+"/"+img.Labels[label.Arch])
		}
	}
	slices.Sort(out)
	return out
}

// mutations counts the requests that could change the Hetzner project.
func (w *world) mutations() int {
	n := 0
	for _, r := range w.st.Cloud.Requests() {
		if r.Method != http.MethodGet {
			n++
		}
	}
	return n
}

// addUnmanaged plants a snapshot someone else made, with the contract labels
// of a target but without our management label.
func (w *world) addUnmanaged(version string) int64 {
	w.t.Helper()
	img, err := w.st.Cloud.AddImage(fakehcloud.Image{Description: "made by hand", Labels: map[string]string{
		label.OS: "talos", label.TalosVersion: version, label.Version: version, label.Arch: "amd64",
		label.TalosSchematic: talos.QemuGuestAgentSchematic[:32],
	}, Created: time.Now().Add(-1000 * time.Hour)})
	if err != nil {
		w.t.Fatal(err)
	}
	return img.ID
}

func (w *world) exists(id int64) bool {
	_, ok := w.st.Cloud.Image(id)
	return ok
}

func targets(items []poll.Item) []string {
	out := []string{}
	for _, it := range items {
		out = append(out, it.Version+"/"+it.Arch)
	}
	return out
}

// requests renders Builder payloads as version/arch[/force], followed by
// " > version[/force]" for each build of the queue.
func requests(reqs []build.Request) []string {
	out := []string{}
	for _, r := range reqs {
		if r.Schematic != talos.QemuGuestAgentSchematic {
			return []string{fmt.Sprintf("unexpected payload %+v", r)}
		}
		s := r.Version + "/" + r.Arch
		if r.Force {
			s += "/force"
		}
		for _, q := range r.Queue {
			s += " > " + q.Version
			if q.Force {
				s += "/force"
			}
		}
		out = append(out, s)
	}
	return out
}

// leftovers returns the servers and SSH keys in the project but for the
// deployment markers.
func (w *world) leftovers() (servers []fakehcloud.Server, keys []fakehcloud.SSHKey) {
	for _, k := range w.st.Cloud.SSHKeys() {
		if k.Labels[label.Role] != label.RoleDeployment {
			keys = append(keys, k)
		}
	}
	return w.st.Cloud.Servers(), keys
}

func check(t *testing.T, what string, got, want any) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

// checkReasons checks that every item's reason says one of whys.
func checkReasons(t *testing.T, what string, items []poll.Item, whys ...string) {
	t.Helper()
	for _, it := range items {
		if !slices.ContainsFunc(whys, func(why string) bool { return strings.Contains(it.Reason, why) }) {
			t.Errorf("%s %s: %q says none of %q", what, it.Target, it.Reason, whys)
		}
	}
}

const oneAtATime = "runs: one at a time per architecture and schematic, oldest version first"

// mostRecent returns the version of the managed snapshot of arch that
// consumers pick: the most recently created, of two created in the same
// second the later (higher ID).
func (w *world) mostRecent(arch string) string {
	var latest *fakehcloud.Image
	for _, img := range w.st.Cloud.Images() {
		if img.Type != "snapshot" || !label.IsManaged(img.Labels) || img.Labels[label.Arch] != arch {
			continue
		}
		if latest == nil || cmp.Or(img.Created.Compare(latest.Created), cmp.Compare(img.ID, latest.ID)) > 0 {
			latest = &img
		}
	}
	if latest == nil {
		return ""
	}
	return latest.Labels[label.TalosVersion]
}

// addOld plants a managed snapshot as a build long ago left it.
func (w *world) addOld(version, arch string, age time.Duration) {
	w.t.Helper()
	tg := build.Target{Version: version, Arch: arch, Schematic: talos.QemuGuestAgentSchematic}
	l := map[string]string{label.Managed: label.ManagedValue, label.OS: "talos", label.TalosVersion: version,
		label.Version: version, label.Arch: arch, label.TalosSchematic: tg.Schematic[:32],
		label.SchematicRest: tg.Schematic[32:]}
	if got, ok := build.TargetFromLabels(l); !ok || got != tg {
		w.t.Fatalf("labels %v read back as %v", l, got)
	}
	if _, err := w.st.Cloud.AddImage(fakehcloud.Image{Description: "an old build", Labels: l, Created: time.Now().Add(-age)}); err != nil {
		w.t.Fatal(err)
	}
}

// TestLifecycle follows a deployment through releases, with builds run for
// real against the stack; a snapshot made by someone else survives it all.
// Builds of one architecture and schematic run one at a time, oldest
// version first, each started by the one before it: over a realistic
// release history the first poll builds both tracked lines, the older one
// first, and the second poll starts nothing. A patch of the older line,
// built after the newer line, is followed in the same poll by a rebuild of
// the newer line's snapshots, so that they are the most recent again. A
// patch of the newer line is built, with a prune of what fell out of
// retention.
func TestLifecycle(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stack.Options{}, nil)
	unmanaged := w.addUnmanaged("v1.13.9")
	older := []string{"v1.12.8/amd64", "v1.12.8/arm64"}
	newer := []string{"v1.13.9/amd64", "v1.13.9/arm64"}
	both := slices.Concat(older, newer)
	queued := []string{"v1.12.8/amd64 > v1.13.9", "v1.12.8/arm64 > v1.13.9"}

	dry := w.poll(true)
	check(t, "dry run builds", targets(dry.Builds), both)
	check(t, "dry run deferred", targets(dry.Deferred), []string{})
	check(t, "dry run tracked", dry.Tracked, []string{"v1.13.9", "v1.12.8"})
	check(t, "dry run skipped tags", dry.SkippedTags, []string{"v1.9"})
	if n := w.mutations(); n != 0 || len(w.rec.take()) != 0 {
		t.Fatalf("the dry run made %d changing requests and invoked the Builder", n)
	}

	first := w.poll(false)
	check(t, "first poll builds", targets(first.Builds), both)
	check(t, "first poll deferred", targets(first.Deferred), []string{})
	reqs := w.rec.take()
	check(t, "first Builder payloads", requests(reqs), queued)
	w.build(reqs)
	check(t, "snapshots after the first builds", w.snapshots(), both)
	check(t, "most recent snapshots after the first builds", []string{w.mostRecent("amd64"), w.mostRecent("arm64")},
		[]string{"v1.13.9", "v1.13.9"})

	second := w.poll(false)
	if !second.Empty() || len(second.Deferred) != 0 || len(w.rec.take()) != 0 {
		t.Errorf("second poll did something: %+v", second.Plan)
	}
	check(t, "second poll GitHub requests (all 304)", []int{second.GitHubRequests, second.GitHubNotModified}, []int{1, 1})

	// A patch of the older line, released after the newer line.
	if _, err := w.st.GitHub.AddRelease(fakegithub.Release{Tag: "v1.12.9", TargetCommitish: "release-1.12"}); err != nil {
		t.Fatal(err)
	}
	if err := w.st.Factory.SetAvailable("v1.12.9", true); err != nil {
		t.Fatal(err)
	}
	older = []string{"v1.12.9/amd64", "v1.12.9/arm64"}
	patch := w.poll(false)
	check(t, "tracked after the older line's patch", patch.Tracked, []string{"v1.13.9", "v1.12.9"})
	check(t, "builds for the older line's patch", targets(patch.Builds), slices.Concat(older, newer))
	reqs = w.rec.take()
	check(t, "Builder payloads for the older line's patch", requests(reqs),
		[]string{"v1.12.9/amd64 > v1.13.9/force", "v1.12.9/arm64 > v1.13.9/force"})
	w.build(reqs)
	check(t, "most recent snapshots after the older line's patch and the rebuilds",
		[]string{w.mostRecent("amd64"), w.mostRecent("arm64")}, []string{"v1.13.9", "v1.13.9"})
	check(t, "snapshots after the rebuilds (replaced, not added)", w.snapshots(), []string{"v1.12.8/amd64", "v1.12.8/arm64",
		"v1.12.9/amd64", "v1.12.9/arm64", "v1.13.9/amd64", "v1.13.9/arm64"})
	if quiet := w.poll(false); !quiet.Empty() || len(quiet.Deferred) != 0 || len(w.rec.take()) != 0 {
		t.Errorf("poll after the rebuilds did something: %+v", quiet.Plan)
	}

	// Older snapshots of the newer line, as a deployment collects them.
	w.addOld("v1.13.7", "amd64", 1000*time.Hour)
	w.addOld("v1.13.8", "amd64", 500*time.Hour)

	if err := w.st.Factory.SetAvailable("v1.13.10", true); err != nil {
		t.Fatal(err)
	}
	if _, err := w.st.GitHub.PublishRelease("v1.13.10"); err != nil {
		t.Fatal(err)
	}
	newer = []string{"v1.13.10/amd64", "v1.13.10/arm64"}
	patch = w.poll(false)
	check(t, "tracked after the newer line's patch", patch.Tracked, []string{"v1.13.10", "v1.12.9"})
	check(t, "builds for the newer line's patch", targets(patch.Builds), newer)
	var pruned []string
	for _, p := range patch.Prune {
		pruned = append(pruned, p.Target.Version+"/"+p.Target.Arch)
	}
	// Two other versions stay per architecture: v1.13.9 and v1.13.8 of amd64.
	check(t, "pruned", pruned, []string{"v1.12.8/amd64", "v1.13.7/amd64"})
	reqs = w.rec.take()
	check(t, "Builder payloads for the newer line's patch", requests(reqs), newer)
	w.build(reqs)
	check(t, "snapshots after the newer line's patch", w.snapshots(), []string{"v1.12.8/arm64", "v1.12.9/amd64", "v1.12.9/arm64",
		"v1.13.10/amd64", "v1.13.10/arm64", "v1.13.8/amd64", "v1.13.9/amd64", "v1.13.9/arm64"})

	last := w.poll(false)
	if !last.Empty() || len(last.Deferred) != 0 {
		t.Errorf("poll after the newer line's patch did something: %+v", last.Plan)
	}
	if !w.exists(unmanaged) {
		t.Error("the unmanaged os=talos snapshot was deleted")
	}
	if servers, keys := w.leftovers(); len(servers)+len(keys) != 0 {
		t.Errorf("left: servers %+v, keys %+v", servers, keys)
	}
	// Every build server was created with a key: no root password mails.
	if n := w.st.Cloud.RootPasswords(); n != 0 {
		t.Errorf("%d root passwords issued", n)
	}
}

func TestUnservedVersionIsDeferred(t *testing.T) {
	t.Parallel()
	// The factory is asked only about what would start: the oldest version
	// of each group. Not served, it is deferred and the next one starts.
	versions := slices.DeleteFunc(fakefactory.DefaultVersions(), func(v string) bool { return v == "v1.12.8" })
	w := newWorld(t, stack.Options{Versions: versions}, nil)
	rep := w.poll(false)
	check(t, "builds", targets(rep.Builds), []string{"v1.13.9/amd64", "v1.13.9/arm64"})
	check(t, "deferred", targets(rep.Deferred), []string{"v1.12.8/amd64", "v1.12.8/arm64"})
	for _, d := range rep.Deferred {
		if !strings.Contains(d.Reason, "factory does not serve") {
			t.Errorf("deferred %s: %s", d.Target, d.Reason)
		}
	}
	check(t, "Builder payloads", requests(w.rec.take()), []string{"v1.13.9/amd64", "v1.13.9/arm64"})
	if n := w.st.Factory.Count("HEAD", "/image/"); n > 8 {
		t.Errorf("%d factory requests for 4 targets", n)
	}
}

// breakBuild leaves a build server behind as a build does whose invocation
// chain broke: the invocation runs out of time after creating the server
// (which takes slowCreate) and cannot hand over.
func (w *world) breakBuild(t build.Target) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 21*time.Second) // INSTALL_TIMEOUT (20s) and less than slowCreate
	defer cancel()
	if res := w.builder.Build(ctx, t, build.Request{}); res.State != build.InProgress || res.Step != build.StepInstall {
		w.t.Fatalf("broken build: %+v, want in_progress at install", res)
	}
}

// slowCreate makes creating a server take 1.5 s.
var slowCreate = map[string]time.Duration{"create_server": 1500 * time.Millisecond}

func TestStuckBuildIsRedrivenToCompletion(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stack.Options{ActionDurations: slowCreate}, nil)
	stuck := build.Target{Version: "v1.13.9", Arch: "amd64", Schematic: talos.QemuGuestAgentSchematic}
	w.breakBuild(stuck)

	// The stuck build holds amd64: v1.12.8/amd64 waits for it.
	rep := w.poll(false)
	check(t, "redrives", targets(rep.Redrives), []string{"v1.13.9/amd64"})
	check(t, "builds", targets(rep.Builds), []string{"v1.12.8/arm64", "v1.13.9/arm64"})
	check(t, "deferred", targets(rep.Deferred), []string{"v1.12.8/amd64"})
	checkReasons(t, "deferred", rep.Deferred, oneAtATime)
	check(t, "collected", len(rep.CollectServers)+len(rep.CollectKeys), 0)
	var redriven []build.Request
	for _, r := range w.rec.take() {
		if r.Version == stuck.Version && r.Arch == stuck.Arch {
			redriven = append(redriven, r)
		}
	}
	check(t, "re-drive payloads", requests(redriven), []string{"v1.13.9/amd64"})
	w.build(redriven)
	check(t, "snapshots", w.snapshots(), []string{"v1.13.9/amd64"})
	if n := len(w.st.Cloud.Servers()); n != 0 {
		t.Errorf("%d servers left after the re-driven build", n)
	}
	// Done, it frees amd64 (the arm64 builds were only recorded, not
	// built): v1.12.8/amd64 is built, then v1.13.9/amd64 again, to be the
	// most recent.
	next := w.poll(true)
	check(t, "builds after the re-driven build", targets(next.Builds),
		[]string{"v1.12.8/amd64", "v1.12.8/arm64", "v1.13.9/arm64", "v1.13.9/amd64"})
	check(t, "forced after the re-driven build", next.Builds[3].Force, true)
	check(t, "deferred after the re-driven build", targets(next.Deferred), []string{})
	check(t, "redrives after the re-driven build", targets(next.Redrives), []string{})
}

func TestExpiredBuildServerAndKeyAreCollected(t *testing.T) {
	t.Parallel()
	w := newWorld(t, stack.Options{ActionDurations: slowCreate}, nil)
	stuck := build.Target{Version: "v1.13.9", Arch: "amd64", Schematic: talos.QemuGuestAgentSchematic}
	w.breakBuild(stuck)
	// A lease key a crashed invocation left behind.
	ctx := context.Background()
	if _, err := w.cloud.CreateSSHKey(ctx, "talos-amd64-orphan", newPublicKey(t), selectorLabels(label.RoleSelector(label.RoleLease))); err != nil {
		t.Fatal(err)
	}
	// And one that is not ours.
	other, err := w.cloud.CreateSSHKey(ctx, "someone", newPublicKey(t), map[string]string{"role": "lease"})
	if err != nil {
		t.Fatal(err)
	}
	w.now = func() time.Time { return time.Now().Add(3 * time.Hour) }

	before := w.mutations()
	dry := w.poll(true)
	check(t, "dry run collects servers", len(dry.CollectServers), 1)
	check(t, "dry run collects keys", len(dry.CollectKeys), 1)
	if w.mutations() != before || len(w.st.Cloud.Servers()) != 1 {
		t.Fatal("the dry run changed the project")
	}

	rep := w.poll(false)
	check(t, "collected server", []string{rep.CollectServers[0].Name}, []string{stuck.Name("")})
	check(t, "collected key", []string{rep.CollectKeys[0].Name}, []string{"talos-amd64-orphan"})
	check(t, "redrives", targets(rep.Redrives), []string{})
	// The collected server holds amd64 no more: its older version starts.
	check(t, "builds", targets(rep.Builds), []string{"v1.12.8/amd64", "v1.12.8/arm64", "v1.13.9/arm64"})
	check(t, "deferred", targets(rep.Deferred), []string{"v1.13.9/amd64"})
	checkReasons(t, "deferred", rep.Deferred, "collected now")
	servers, keys := w.leftovers()
	if len(servers) != 0 {
		t.Errorf("servers left: %+v", servers)
	}
	if len(keys) != 1 || keys[0].ID != other.ID {
		t.Errorf("keys left: %+v, want only the unmanaged one", keys)
	}
}

// TestCapOnFirstDeploy has a long history of untracked releases, which the
// Poller pages past, and every patch tracked: the cap holds, counting the
// builds queued behind the first of each architecture and schematic.
func TestCapOnFirstDeploy(t *testing.T) {
	t.Parallel()
	releases := fakegithub.TalosReleases()
	versions := fakefactory.DefaultVersions()
	old := time.Date(2022, 1, 1, 12, 0, 0, 0, time.UTC)
	for minor := 0; minor < 9; minor++ {
		for patch := 0; patch < 15; patch++ {
			tag := fmt.Sprintf("v1.%d.%d", minor, patch)
			releases = append(releases, fakegithub.Release{Tag: tag, CreatedAt: old})
			versions = append(versions, tag)
			old = old.Add(5 * 24 * time.Hour)
		}
	}
	for _, tt := range []struct {
		name        string
		env         map[string]string
		builds      []string
		payloads    []string
		capped      int // deferred for the cap
		githubPages int
	}{
		{"newest patches", map[string]string{"MAX_BUILDS_PER_POLL": "1"},
			[]string{"v1.12.8/amd64"}, []string{"v1.12.8/amd64"}, 3, 1},
		{"every patch", map[string]string{"TRACK_ALL_PATCHES": "true"},
			[]string{"v1.12.0/amd64", "v1.12.0/arm64", "v1.12.1/amd64", "v1.12.1/arm64"},
			[]string{"v1.12.0/amd64 > v1.12.1", "v1.12.0/arm64 > v1.12.1"}, 19*2 - 4, 1},
		{"old lines too", map[string]string{"TRACK_MINORS": "9", "MAX_BUILDS_PER_POLL": "2"},
			[]string{"v1.4.14/amd64", "v1.4.14/arm64"}, []string{"v1.4.14/amd64", "v1.4.14/arm64"}, 9*2 - 2, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, stack.Options{Releases: releases, Versions: versions}, tt.env)
			rep := w.poll(false)
			check(t, "builds", targets(rep.Builds), tt.builds)
			check(t, "Builder payloads", requests(w.rec.take()), tt.payloads)
			checkReasons(t, "deferred", rep.Deferred, "MAX_BUILDS_PER_POLL")
			check(t, "deferred for the cap", len(rep.Deferred), tt.capped)
			check(t, "GitHub pages read", rep.GitHubRequests, tt.githubPages)
			if n := w.st.Factory.Count(http.MethodHead, "/image/"); n > 2*len(tt.builds) {
				t.Errorf("asked the factory %d times for %d builds", n, len(tt.builds))
			}
		})
	}
}

// selectorLabels turns an equality selector into the labels it selects.
func selectorLabels(sel string) map[string]string {
	l := map[string]string{}
	for _, part := range strings.Split(sel, ",") {
		k, v, _ := strings.Cut(part, "=")
		l[k] = v
	}
	return l
}

func newPublicKey(t *testing.T) string {
	t.Helper()
	k, err := ssh.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.AuthorizedKey()
}

// TestPollDuringFirstFactoryBuild: the factory builds an image on the first
// request for it and answers only then. A poll right after a release asks
// for the new images, gives up after its HEAD timeout and defers them as
// being built, creating nothing, well within its own time; once the factory
// has built them, the next poll starts their builds.
func TestPollDuringFirstFactoryBuild(t *testing.T) {
	t.Parallel()
	const buildDelay, headTimeout = 4 * time.Second, 300 * time.Millisecond
	w := newWorld(t, stack.Options{FactoryBuildDelay: buildDelay}, nil)
	w.factory.HeadTimeout = headTimeout
	for _, v := range []string{"v1.12.8", "v1.13.9"} {
		w.addOld(v, "amd64", time.Hour)
		w.addOld(v, "arm64", time.Hour)
	}
	if quiet := w.poll(false); !quiet.Empty() || len(quiet.Deferred) != 0 {
		t.Fatalf("poll before the release: %+v", quiet.Plan)
	}

	if err := w.st.Factory.SetAvailable("v1.13.10", true); err != nil {
		t.Fatal(err)
	}
	if _, err := w.st.GitHub.PublishRelease("v1.13.10"); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	mutations := w.mutations()
	rep := w.poll(false)
	if took := time.Since(released); took >= buildDelay/2 {
		t.Errorf("the poll took %s; the factory's build takes %s", took, buildDelay)
	}
	check(t, "tracked", rep.Tracked, []string{"v1.13.10", "v1.12.8"})
	check(t, "builds while the factory builds", targets(rep.Builds), []string{})
	check(t, "deferred while the factory builds", targets(rep.Deferred), []string{"v1.13.10/amd64", "v1.13.10/arm64"})
	checkReasons(t, "deferred", rep.Deferred, "the image factory is building it (no answer within 300ms): deferred to the next poll")
	if n := w.mutations() - mutations; n != 0 || len(w.rec.take()) != 0 {
		t.Errorf("the poll made %d changing requests or invoked the Builder", n)
	}
	// asked in parallel: the second HEAD did not wait for the first to time
	// out (the factory logs a request when it sees the client gone)
	var heads []time.Time
	for wait := time.Now(); len(heads) < 2 && time.Since(wait) < 5*time.Second; time.Sleep(10 * time.Millisecond) {
		heads = heads[:0]
		for _, r := range w.st.Factory.Requests() {
			if r.Method == http.MethodHead && strings.Contains(r.Path, "/v1.13.10/") {
				heads = append(heads, r.Time)
			}
		}
	}
	if len(heads) != 2 {
		t.Fatalf("%d HEADs of the new images, want 2 (zstd, per architecture)", len(heads))
	}
	if d := heads[0].Sub(heads[1]).Abs(); d >= headTimeout/2 {
		t.Errorf("the HEADs started %s apart: one after the other", d)
	}

	// The factory finishes its builds: a patient client sees them.
	patient := &talos.Factory{BaseURL: w.cfg.FactoryURL, HeadTimeout: time.Minute}
	for _, arch := range []string{"amd64", "arm64"} {
		if _, err := patient.Find(context.Background(), talos.QemuGuestAgentSchematic, "v1.13.10", arch); err != nil {
			t.Fatal(err)
		}
	}
	next := w.poll(false)
	check(t, "builds once the factory has built", targets(next.Builds), []string{"v1.13.10/amd64", "v1.13.10/arm64"})
	check(t, "deferred once the factory has built", targets(next.Deferred), []string{})
	check(t, "Builder payloads", requests(w.rec.take()), []string{"v1.13.10/amd64", "v1.13.10/arm64"})
}

// TestAnonymousGitHubWarns: a report says when GitHub is read without a
// token, and only then.
func TestAnonymousGitHubWarns(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"anonymous", nil, []string{poll.AnonymousGitHubWarning}},
		{"with a token", map[string]string{"GITHUB_TOKEN": "ghp_x"}, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, stack.Options{}, tc.env)
			rep := w.poll(true)
			check(t, "warnings", rep.Warnings, tc.want)
			b, err := json.Marshal(rep)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), `"warnings":[`) {
				t.Errorf("the report's JSON lacks the warnings: %s", b)
			}
		})
	}
}
