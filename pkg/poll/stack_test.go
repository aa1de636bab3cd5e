package poll_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
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
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack/stacktest"
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

// deployment is one deployment on the local world, in this process: the
// real clients pointed at the world, a Poller whose Builder invocations are
// recorded, and a Builder.
type deployment struct {
	t          *testing.T
	st         *stack.Stack
	cfg        config.Config
	id         string // a build.DeploymentID
	cloud      *cloud.Client
	factory    *talos.Factory
	schematics *build.SchematicSet
	releases   *release.Lister
	rec        *recorder
	builder    *build.Builder
	now        func() time.Time
	log        *slog.Logger
}

// localDeployment is the deployment of newDeployment.
const localDeployment = "local.hcloud-k8s-builder"

// newDeployment starts the local world with so and deploys localDeployment
// with env on it.
func newDeployment(t *testing.T, so stack.Options, env map[string]string) *deployment {
	t.Helper()
	return attach(t, stacktest.Start(t, so), localDeployment, env)
}

// attach deploys a deployment named id (a build.DeploymentID) on an
// existing local world, configured with the world's environment,
// stacktest.Timings and env.
func attach(t *testing.T, st *stack.Stack, id string, env map[string]string) *deployment {
	t.Helper()
	m := st.Env()
	maps.Copy(m, stacktest.Timings())
	maps.Copy(m, env)
	cfg, err := config.LoadFrom(context.Background(), envconfig.MapLookuper(m), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := &deployment{t: t, st: st, cfg: cfg, id: id, rec: &recorder{}, now: time.Now,
		log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		factory: &talos.Factory{BaseURL: cfg.FactoryURL},
		cloud:   stacktest.Cloud(st),
	}
	d.schematics = function.SchematicSet(cfg, d.factory)
	if d.releases, err = release.New(release.Options{BaseURL: cfg.GitHubAPIURL, Token: cfg.GitHubToken, Logger: d.log}); err != nil {
		t.Fatal(err)
	}
	opts := function.BuildOptions(cfg, d.schematics.Configured())
	opts.Deployment = id
	d.builder = build.New(build.Deps{Cloud: d.cloud, Factory: d.factory, Schematics: d.schematics, Logger: d.log}, opts)
	return d
}

// poller returns the deployment's Poller.
func (d *deployment) poller() *poll.Poller {
	d.t.Helper()
	opts, err := function.PollOptions(d.cfg, d.schematics.Configured())
	if err != nil {
		d.t.Fatal(err)
	}
	opts.Deployment = d.id
	return poll.New(poll.Deps{Releases: d.releases, Cloud: d.cloud, Factory: d.factory, Schematics: d.schematics,
		Builder: d.rec, Logger: d.log, Now: d.now}, opts)
}

// run polls once.
func (d *deployment) run(dryRun bool) (poll.Report, error) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return d.poller().Run(ctx, dryRun)
}

// poll polls once, successfully.
func (d *deployment) poll(dryRun bool) poll.Report {
	d.t.Helper()
	rep, err := d.run(dryRun)
	if err != nil {
		d.t.Fatalf("poll: %v", err)
	}
	return rep
}

// build runs the recorded Builder payloads to completion, side by side.
func (d *deployment) build(reqs []build.Request) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(reqs))
	for i, r := range reqs {
		wg.Go(func() { _, errs[i] = d.builder.RunUntilDone(ctx, r) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			d.t.Fatalf("build %+v: %v", reqs[i], err)
		}
	}
}

// snapshots returns "version/arch" of the managed snapshots, sorted.
func (d *deployment) snapshots() []string {
	var out []string
	for _, img := range d.st.Cloud.Images() {
		if img.Type == "snapshot" && img.Labels[label.Managed] == label.ManagedValue {
			out = append(out, img.Labels[label.TalosVersion]+"/"+img.Labels[label.Arch])
		}
	}
	slices.Sort(out)
	return out
}

// mutations counts the requests that could change the Hetzner project.
func (d *deployment) mutations() int {
	n := 0
	for _, r := range d.st.Cloud.Requests() {
		if r.Method != http.MethodGet {
			n++
		}
	}
	return n
}

// addUnmanaged plants a snapshot someone else made, with the contract labels
// of a target but without our management label.
func (d *deployment) addUnmanaged(version string) int64 {
	d.t.Helper()
	img, err := d.st.Cloud.AddImage(fakehcloud.Image{Description: "made by hand", Labels: map[string]string{
		label.OS: "talos", label.TalosVersion: version, label.Version: version, label.Arch: "amd64",
		label.TalosSchematic: talos.QemuGuestAgentSchematic[:32],
	}, Created: time.Now().Add(-1000 * time.Hour)})
	if err != nil {
		d.t.Fatal(err)
	}
	return img.ID
}

func (d *deployment) exists(id int64) bool {
	_, ok := d.st.Cloud.Image(id)
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
func (d *deployment) leftovers() (servers []fakehcloud.Server, keys []fakehcloud.SSHKey) {
	for _, k := range d.st.Cloud.SSHKeys() {
		if k.Labels[label.Role] != label.RoleDeployment {
			keys = append(keys, k)
		}
	}
	return d.st.Cloud.Servers(), keys
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
func (d *deployment) mostRecent(arch string) string {
	var latest *fakehcloud.Image
	for _, img := range d.st.Cloud.Images() {
		if img.Type != "snapshot" || img.Labels[label.Managed] != label.ManagedValue || img.Labels[label.Arch] != arch {
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
func (d *deployment) addOld(version, arch string, age time.Duration) {
	d.t.Helper()
	tg := build.Target{Version: version, Arch: arch, Schematic: talos.QemuGuestAgentSchematic}
	l := map[string]string{label.Managed: label.ManagedValue, label.OS: "talos", label.TalosVersion: version,
		label.Version: version, label.Arch: arch, label.TalosSchematic: tg.Schematic[:32],
		label.SchematicRest: tg.Schematic[32:]}
	if got, ok := build.TargetFromLabels(l); !ok || got != tg {
		d.t.Fatalf("labels %v read back as %v", l, got)
	}
	if _, err := d.st.Cloud.AddImage(fakehcloud.Image{Description: "an old build", Labels: l, Created: time.Now().Add(-age)}); err != nil {
		d.t.Fatal(err)
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
	d := newDeployment(t, stack.Options{}, nil)
	unmanaged := d.addUnmanaged("v1.13.9")
	older := []string{"v1.12.8/amd64", "v1.12.8/arm64"}
	newer := []string{"v1.13.9/amd64", "v1.13.9/arm64"}
	both := slices.Concat(older, newer)
	queued := []string{"v1.12.8/amd64 > v1.13.9", "v1.12.8/arm64 > v1.13.9"}

	dry := d.poll(true)
	check(t, "dry run builds", targets(dry.Builds), both)
	check(t, "dry run deferred", targets(dry.Deferred), []string{})
	check(t, "dry run tracked", dry.Tracked, []string{"v1.13.9", "v1.12.8"})
	check(t, "dry run skipped tags", dry.SkippedTags, []string{"v1.9"})
	if n := d.mutations(); n != 0 || len(d.rec.take()) != 0 {
		t.Fatalf("the dry run made %d changing requests and invoked the Builder", n)
	}

	first := d.poll(false)
	check(t, "first poll builds", targets(first.Builds), both)
	check(t, "first poll deferred", targets(first.Deferred), []string{})
	reqs := d.rec.take()
	check(t, "first Builder payloads", requests(reqs), queued)
	d.build(reqs)
	check(t, "snapshots after the first builds", d.snapshots(), both)
	check(t, "most recent snapshots after the first builds", []string{d.mostRecent("amd64"), d.mostRecent("arm64")},
		[]string{"v1.13.9", "v1.13.9"})

	second := d.poll(false)
	if !second.Empty() || len(second.Deferred) != 0 || len(d.rec.take()) != 0 {
		t.Errorf("second poll did something: %+v", second.Plan)
	}
	check(t, "second poll GitHub requests (all 304)", []int{second.GitHubRequests, second.GitHubNotModified}, []int{1, 1})

	// A patch of the older line, released after the newer line.
	if _, err := d.st.GitHub.AddRelease(fakegithub.Release{Tag: "v1.12.9", TargetCommitish: "release-1.12"}); err != nil {
		t.Fatal(err)
	}
	if err := d.st.Factory.SetAvailable("v1.12.9", true); err != nil {
		t.Fatal(err)
	}
	older = []string{"v1.12.9/amd64", "v1.12.9/arm64"}
	patch := d.poll(false)
	check(t, "tracked after the older line's patch", patch.Tracked, []string{"v1.13.9", "v1.12.9"})
	check(t, "builds for the older line's patch", targets(patch.Builds), slices.Concat(older, newer))
	reqs = d.rec.take()
	check(t, "Builder payloads for the older line's patch", requests(reqs),
		[]string{"v1.12.9/amd64 > v1.13.9/force", "v1.12.9/arm64 > v1.13.9/force"})
	d.build(reqs)
	check(t, "most recent snapshots after the older line's patch and the rebuilds",
		[]string{d.mostRecent("amd64"), d.mostRecent("arm64")}, []string{"v1.13.9", "v1.13.9"})
	check(t, "snapshots after the rebuilds (replaced, not added)", d.snapshots(), []string{"v1.12.8/amd64", "v1.12.8/arm64",
		"v1.12.9/amd64", "v1.12.9/arm64", "v1.13.9/amd64", "v1.13.9/arm64"})
	if quiet := d.poll(false); !quiet.Empty() || len(quiet.Deferred) != 0 || len(d.rec.take()) != 0 {
		t.Errorf("poll after the rebuilds did something: %+v", quiet.Plan)
	}

	// Older snapshots of the newer line, as a deployment collects them.
	d.addOld("v1.13.7", "amd64", 1000*time.Hour)
	d.addOld("v1.13.8", "amd64", 500*time.Hour)

	if err := d.st.Factory.SetAvailable("v1.13.10", true); err != nil {
		t.Fatal(err)
	}
	if _, err := d.st.GitHub.PublishRelease("v1.13.10"); err != nil {
		t.Fatal(err)
	}
	newer = []string{"v1.13.10/amd64", "v1.13.10/arm64"}
	patch = d.poll(false)
	check(t, "tracked after the newer line's patch", patch.Tracked, []string{"v1.13.10", "v1.12.9"})
	check(t, "builds for the newer line's patch", targets(patch.Builds), newer)
	var pruned []string
	for _, p := range patch.Prune {
		pruned = append(pruned, p.Target.Version+"/"+p.Target.Arch)
	}
	// Two other versions stay per architecture: v1.13.9 and v1.13.8 of amd64.
	check(t, "pruned", pruned, []string{"v1.12.8/amd64", "v1.13.7/amd64"})
	reqs = d.rec.take()
	check(t, "Builder payloads for the newer line's patch", requests(reqs), newer)
	d.build(reqs)
	check(t, "snapshots after the newer line's patch", d.snapshots(), []string{"v1.12.8/arm64", "v1.12.9/amd64", "v1.12.9/arm64",
		"v1.13.10/amd64", "v1.13.10/arm64", "v1.13.8/amd64", "v1.13.9/amd64", "v1.13.9/arm64"})

	last := d.poll(false)
	if !last.Empty() || len(last.Deferred) != 0 {
		t.Errorf("poll after the newer line's patch did something: %+v", last.Plan)
	}
	if !d.exists(unmanaged) {
		t.Error("the unmanaged os=talos snapshot was deleted")
	}
	if servers, keys := d.leftovers(); len(servers)+len(keys) != 0 {
		t.Errorf("left: servers %+v, keys %+v", servers, keys)
	}
	// Every build server was created with a key: no root password mails.
	if n := d.st.Cloud.RootPasswords(); n != 0 {
		t.Errorf("%d root passwords issued", n)
	}
}

func TestUnservedVersionIsDeferred(t *testing.T) {
	t.Parallel()
	// The factory is asked only about what would start: the oldest version
	// of each group. Not served, it is deferred and the next one starts.
	versions := slices.DeleteFunc(fakefactory.DefaultVersions(), func(v string) bool { return v == "v1.12.8" })
	d := newDeployment(t, stack.Options{Versions: versions}, nil)
	rep := d.poll(false)
	check(t, "builds", targets(rep.Builds), []string{"v1.13.9/amd64", "v1.13.9/arm64"})
	check(t, "deferred", targets(rep.Deferred), []string{"v1.12.8/amd64", "v1.12.8/arm64"})
	for _, it := range rep.Deferred {
		if !strings.Contains(it.Reason, "factory does not serve") {
			t.Errorf("deferred %s: %s", it.Target, it.Reason)
		}
	}
	check(t, "Builder payloads", requests(d.rec.take()), []string{"v1.13.9/amd64", "v1.13.9/arm64"})
	if n := d.st.Factory.Count("HEAD", "/image/"); n > 8 {
		t.Errorf("%d factory requests for 4 targets", n)
	}
}

// breakBuild leaves a build server behind as a build does whose invocation
// chain broke: the invocation runs out of time after creating the server
// (which takes slowCreate) and cannot hand over.
func (d *deployment) breakBuild(t build.Target) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.InstallTimeout+time.Second) // INSTALL_TIMEOUT and less than slowCreate
	defer cancel()
	if res := d.builder.Build(ctx, t, build.Request{}); res.State != build.InProgress || res.Step != build.StepInstall {
		d.t.Fatalf("broken build: %+v, want in_progress at install", res)
	}
}

// slowCreate makes creating a server take 1.5 s.
var slowCreate = map[string]time.Duration{"create_server": 1500 * time.Millisecond}

func TestStuckBuildIsRedrivenToCompletion(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, stack.Options{ActionDurations: slowCreate}, nil)
	stuck := build.Target{Version: "v1.13.9", Arch: "amd64", Schematic: talos.QemuGuestAgentSchematic}
	d.breakBuild(stuck)

	// The stuck build holds amd64: v1.12.8/amd64 waits for it.
	rep := d.poll(false)
	check(t, "redrives", targets(rep.Redrives), []string{"v1.13.9/amd64"})
	check(t, "builds", targets(rep.Builds), []string{"v1.12.8/arm64", "v1.13.9/arm64"})
	check(t, "deferred", targets(rep.Deferred), []string{"v1.12.8/amd64"})
	checkReasons(t, "deferred", rep.Deferred, oneAtATime)
	check(t, "collected", len(rep.CollectServers)+len(rep.CollectKeys), 0)
	var redriven []build.Request
	for _, r := range d.rec.take() {
		if r.Version == stuck.Version && r.Arch == stuck.Arch {
			redriven = append(redriven, r)
		}
	}
	check(t, "re-drive payloads", requests(redriven), []string{"v1.13.9/amd64"})
	d.build(redriven)
	check(t, "snapshots", d.snapshots(), []string{"v1.13.9/amd64"})
	if n := len(d.st.Cloud.Servers()); n != 0 {
		t.Errorf("%d servers left after the re-driven build", n)
	}
	// Done, it frees amd64 (the arm64 builds were only recorded, not
	// built): v1.12.8/amd64 is built, then v1.13.9/amd64 again, to be the
	// most recent.
	next := d.poll(true)
	check(t, "builds after the re-driven build", targets(next.Builds),
		[]string{"v1.12.8/amd64", "v1.12.8/arm64", "v1.13.9/arm64", "v1.13.9/amd64"})
	check(t, "forced after the re-driven build", next.Builds[3].Force, true)
	check(t, "deferred after the re-driven build", targets(next.Deferred), []string{})
	check(t, "redrives after the re-driven build", targets(next.Redrives), []string{})
}

func TestExpiredBuildServerAndKeyAreCollected(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, stack.Options{ActionDurations: slowCreate}, nil)
	stuck := build.Target{Version: "v1.13.9", Arch: "amd64", Schematic: talos.QemuGuestAgentSchematic}
	d.breakBuild(stuck)
	// A lease key a crashed invocation left behind.
	ctx := context.Background()
	if _, err := d.cloud.CreateSSHKey(ctx, "talos-amd64-orphan", newPublicKey(t), selectorLabels(label.RoleSelector(label.RoleLease))); err != nil {
		t.Fatal(err)
	}
	// And one that is not ours.
	other, err := d.cloud.CreateSSHKey(ctx, "someone", newPublicKey(t), map[string]string{"role": "lease"})
	if err != nil {
		t.Fatal(err)
	}
	d.now = func() time.Time { return time.Now().Add(3 * time.Hour) }

	before := d.mutations()
	dry := d.poll(true)
	check(t, "dry run collects servers", len(dry.CollectServers), 1)
	check(t, "dry run collects keys", len(dry.CollectKeys), 1)
	if d.mutations() != before || len(d.st.Cloud.Servers()) != 1 {
		t.Fatal("the dry run changed the project")
	}

	rep := d.poll(false)
	check(t, "collected server", []string{rep.CollectServers[0].Name}, []string{stuck.Name("")})
	check(t, "collected key", []string{rep.CollectKeys[0].Name}, []string{"talos-amd64-orphan"})
	check(t, "redrives", targets(rep.Redrives), []string{})
	// The collected server holds amd64 no more: its older version starts.
	check(t, "builds", targets(rep.Builds), []string{"v1.12.8/amd64", "v1.12.8/arm64", "v1.13.9/arm64"})
	check(t, "deferred", targets(rep.Deferred), []string{"v1.13.9/amd64"})
	checkReasons(t, "deferred", rep.Deferred, "collected now")
	servers, keys := d.leftovers()
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
			d := newDeployment(t, stack.Options{Releases: releases, Versions: versions}, tt.env)
			rep := d.poll(false)
			check(t, "builds", targets(rep.Builds), tt.builds)
			check(t, "Builder payloads", requests(d.rec.take()), tt.payloads)
			checkReasons(t, "deferred", rep.Deferred, "MAX_BUILDS_PER_POLL")
			check(t, "deferred for the cap", len(rep.Deferred), tt.capped)
			check(t, "GitHub pages read", rep.GitHubRequests, tt.githubPages)
			if n := d.st.Factory.Count(http.MethodHead, "/image/"); n > 2*len(tt.builds) {
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
	d := newDeployment(t, stack.Options{FactoryBuildDelay: buildDelay}, nil)
	d.factory.HeadTimeout = headTimeout
	for _, v := range []string{"v1.12.8", "v1.13.9"} {
		d.addOld(v, "amd64", time.Hour)
		d.addOld(v, "arm64", time.Hour)
	}
	if quiet := d.poll(false); !quiet.Empty() || len(quiet.Deferred) != 0 {
		t.Fatalf("poll before the release: %+v", quiet.Plan)
	}

	if err := d.st.Factory.SetAvailable("v1.13.10", true); err != nil {
		t.Fatal(err)
	}
	if _, err := d.st.GitHub.PublishRelease("v1.13.10"); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	mutations := d.mutations()
	rep := d.poll(false)
	if took := time.Since(released); took >= buildDelay/2 {
		t.Errorf("the poll took %s; the factory's build takes %s", took, buildDelay)
	}
	check(t, "tracked", rep.Tracked, []string{"v1.13.10", "v1.12.8"})
	check(t, "builds while the factory builds", targets(rep.Builds), []string{})
	check(t, "deferred while the factory builds", targets(rep.Deferred), []string{"v1.13.10/amd64", "v1.13.10/arm64"})
	checkReasons(t, "deferred", rep.Deferred, "the image factory is building it (no answer within 300ms): deferred to the next poll")
	if n := d.mutations() - mutations; n != 0 || len(d.rec.take()) != 0 {
		t.Errorf("the poll made %d changing requests or invoked the Builder", n)
	}
	// asked in parallel: the second HEAD did not wait for the first to time
	// out (the factory logs a request when it sees the client gone)
	var heads []time.Time
	for wait := time.Now(); len(heads) < 2 && time.Since(wait) < 5*time.Second; time.Sleep(10 * time.Millisecond) {
		heads = heads[:0]
		for _, r := range d.st.Factory.Requests() {
			if r.Method == http.MethodHead && strings.Contains(r.Path, "/v1.13.10/") {
				heads = append(heads, r.Time)
			}
		}
	}
	if len(heads) != 2 {
		t.Fatalf("%d HEADs of the new images, want 2 (zstd, per architecture)", len(heads))
	}
	if gap := heads[0].Sub(heads[1]).Abs(); gap >= headTimeout/2 {
		t.Errorf("the HEADs started %s apart: one after the other", gap)
	}

	// The factory finishes its builds: a patient client sees them.
	patient := &talos.Factory{BaseURL: d.cfg.FactoryURL, HeadTimeout: time.Minute}
	for _, arch := range []string{"amd64", "arm64"} {
		if _, err := patient.Find(context.Background(), talos.QemuGuestAgentSchematic, "v1.13.10", arch); err != nil {
			t.Fatal(err)
		}
	}
	next := d.poll(false)
	check(t, "builds once the factory has built", targets(next.Builds), []string{"v1.13.10/amd64", "v1.13.10/arm64"})
	check(t, "deferred once the factory has built", targets(next.Deferred), []string{})
	check(t, "Builder payloads", requests(d.rec.take()), []string{"v1.13.10/amd64", "v1.13.10/arm64"})
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
			d := newDeployment(t, stack.Options{}, tc.env)
			rep := d.poll(true)
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
