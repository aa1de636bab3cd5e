package poll

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

var (
	now  = time.Date(2026, 11, 10, 12, 0, 0, 0, time.UTC)
	qga  = talos.QemuGuestAgentSchematic
	van  = talos.VanillaSchematic
	base = Rules{Architectures: []string{"amd64", "arm64"}, Schematics: []string{qga}, MaxBuilds: 4,
		ServerTTL: 2 * time.Hour, KeepOthers: 2}
)

// targetLabels mirrors how the builder labels its resources; every use is
// checked against build.TargetFromLabels.
func targetLabels(t *testing.T, tg build.Target, cluster string) map[string]string {
	t.Helper()
	l := map[string]string{
		label.Managed: label.ManagedValue, label.TalosVersion: tg.Version, label.Arch: tg.Arch,
		label.TalosSchematic: tg.Schematic[:32], label.SchematicRest: tg.Schematic[32:],
	}
	if cluster != "" {
		l[label.Cluster] = cluster
	}
	if got, ok := build.TargetFromLabels(l); !ok || got != tg {
		t.Fatalf("labels %v read back as %v", l, got)
	}
	return l
}

func tgt(spec string) build.Target {
	// "v1.13.9/amd64" or "v1.13.9/amd64/vanilla"
	p := strings.Split(spec, "/")
	s := qga
	if len(p) == 3 {
		s = van
	}
	return build.Target{Version: p[0], Arch: p[1], Schematic: s}
}

// project is a Hetzner project as the planner sees it, made by hand in
// memory: the State its snapshots, build servers and lease keys, the
// tracked versions and the time make, and the IDs it hands out.
type project struct {
	t     *testing.T
	state State
	next  int64
}

// newProject returns an empty project that tracks the versions tracked.
func newProject(t *testing.T, tracked ...string) *project {
	proj := &project{t: t, state: State{Now: now}, next: 100}
	proj.track(tracked...)
	return proj
}

// track sets the tracked versions.
func (proj *project) track(versions ...string) {
	proj.state.Tracked = nil
	for _, v := range versions {
		pv, err := talos.ParseVersion(v)
		if err != nil {
			proj.t.Fatal(err)
		}
		proj.state.Tracked = append(proj.state.Tracked, pv)
	}
}

func (proj *project) id() int64 { proj.next++; return proj.next }

// snap adds a managed snapshot created age ago; opts: "creating",
// "pending" (available, waiting for its boot check), "unmanaged",
// "cluster=x".
func (proj *project) snap(spec string, age time.Duration, opts ...string) int64 {
	cluster := ""
	status := hcloud.ImageStatusAvailable
	managed, pending := true, false
	for _, o := range opts {
		switch {
		case o == "creating":
			status = hcloud.ImageStatusCreating
		case o == "pending":
			pending = true
		case o == "unmanaged":
			managed = false
		case strings.HasPrefix(o, "cluster="):
			cluster = strings.TrimPrefix(o, "cluster=")
		}
	}
	l := targetLabels(proj.t, tgt(spec), cluster)
	l[label.OS] = "talos"
	if pending {
		delete(l, label.OS)
		l[label.Pending] = "verify"
	}
	if !managed {
		delete(l, label.Managed)
	}
	img := &hcloud.Image{ID: proj.id(), Type: hcloud.ImageTypeSnapshot, Status: status, Labels: l, Created: now.Add(-age)}
	proj.state.Snapshots = append(proj.state.Snapshots, img)
	return img.ID
}

// server adds a build server created age ago; lease is "none", "active"
// or "expired", and an optional key age (default: as old as the server).
func (proj *project) server(spec string, age time.Duration, lease string, cluster ...string) int64 {
	tg := tgt(spec)
	c := strings.Join(cluster, "")
	l := targetLabels(proj.t, tg, c)
	l[label.Role] = label.RoleBuildServer
	srv := &hcloud.Server{ID: proj.id(), Name: tg.Name(c), Labels: l, Created: now.Add(-age)}
	proj.state.Servers = append(proj.state.Servers, srv)
	if lease != "none" {
		proj.key(spec, age, lease == "active", cluster...)
	}
	return srv.ID
}

// key adds a lease key created age ago, of an optional cluster.
func (proj *project) key(spec string, age time.Duration, active bool, cluster ...string) int64 {
	tg := tgt(spec)
	c := strings.Join(cluster, "")
	l := targetLabels(proj.t, tg, c)
	l[label.Role] = label.RoleLease
	until := now.Add(-time.Minute)
	if active {
		until = now.Add(time.Minute)
	}
	l[label.LeaseUntil] = strconv.FormatInt(until.Unix(), 10)
	if build.LeaseActive(l, now) != active {
		proj.t.Fatalf("lease labels %v: active %v, want %v", l, !active, active)
	}
	k := &hcloud.SSHKey{ID: proj.id(), Name: tg.Name(c), Labels: l, Created: now.Add(-age)}
	proj.state.Keys = append(proj.state.Keys, k)
	return k.ID
}

func specs(items []Item) []string {
	out := []string{}
	for _, it := range items {
		s := it.Version + "/" + it.Arch
		if it.Schematic == van {
			s += "/vanilla"
		}
		out = append(out, s)
	}
	return out
}

func ids(rs []Resource) []int64 {
	out := []int64{}
	for _, r := range rs {
		out = append(out, r.ID)
	}
	return out
}

// oneAtATime is how the deferral of a target of spec's architecture and
// schematic begins when another build of that group runs.
func oneAtATime(spec string) string {
	tg := tgt(spec)
	return "a build of " + tg.Arch + "/" + tg.Schematic[:8] + " runs: one at a time"
}

// busy maps specs to the one-at-a-time deferral.
func busy(specs ...string) map[string]string {
	m := map[string]string{}
	for _, s := range specs {
		m[s] = oneAtATime(s)
	}
	return m
}

func TestNewPlan(t *testing.T) {
	type want struct {
		builds, forced, deferred, redrives []string // forced: the builds with Force
		after                              []string // of each build, when given
		servers, keys, prune               []int64
		why                                map[string]string // target → in the reason of its build or deferral
	}
	const capped = "MAX_BUILDS_PER_POLL (1) reached"
	rebuild := func(arch, is, latest, highest string) string {
		return fmt.Sprintf("the most recent snapshot of %s/%s %s %s, not the highest tracked version %s: rebuild %s",
			arch, qga[:8], is, latest, highest, highest)
	}
	// olderLinePatch: v1.12.9 came out after v1.13.9 and was built last.
	olderLinePatch := func(proj *project) {
		proj.track("v1.12.9", "v1.13.9")
		for _, a := range []string{"amd64", "arm64"} {
			proj.snap("v1.12.8/"+a, 100*time.Hour)
			proj.snap("v1.13.9/"+a, 50*time.Hour)
			proj.snap("v1.12.9/"+a, time.Hour)
		}
	}
	maxBuilds1 := func(r Rules) Rules { r.MaxBuilds = 1; return r }
	tests := []struct {
		name  string
		rules func(Rules) Rules
		setup func(proj *project) want
	}{
		{"a first poll builds every version, one after the other per architecture and schematic, oldest first", nil, func(proj *project) want {
			why := map[string]string{"v1.12.8/amd64": "tracked version without a snapshot", "v1.13.9/arm64": "tracked version without a snapshot"}
			return want{builds: []string{"v1.12.8/amd64", "v1.12.8/arm64", "v1.13.9/amd64", "v1.13.9/arm64"},
				after: []string{"", "", "v1.12.8", "v1.12.8"}, why: why}
		}},
		{"the next poll builds the next version", nil, func(proj *project) want {
			proj.snap("v1.12.8/amd64", time.Hour)
			proj.snap("v1.12.8/arm64", time.Hour)
			return want{builds: []string{"v1.13.9/amd64", "v1.13.9/arm64"}}
		}},
		{"the cap counts the builds of all groups, queued ones too", maxBuilds1, func(proj *project) want {
			why := map[string]string{"v1.12.8/arm64": capped, "v1.13.9/amd64": capped, "v1.13.9/arm64": capped}
			return want{builds: []string{"v1.12.8/amd64"},
				deferred: []string{"v1.12.8/arm64", "v1.13.9/amd64", "v1.13.9/arm64"}, why: why}
		}},
		{"schematics times architectures are groups of their own", func(r Rules) Rules { r.Schematics = []string{qga, van}; r.MaxBuilds = 9; return r }, func(proj *project) want {
			proj.snap("v1.12.8/amd64", time.Hour)
			proj.snap("v1.12.8/arm64", time.Hour)
			return want{builds: []string{"v1.12.8/amd64/vanilla", "v1.12.8/arm64/vanilla", "v1.13.9/amd64", "v1.13.9/arm64",
				"v1.13.9/amd64/vanilla", "v1.13.9/arm64/vanilla"}, after: []string{"", "", "", "", "v1.12.8", "v1.12.8"}}
		}},
		{"nothing to do", nil, func(proj *project) want {
			proj.snap("v1.12.8/amd64", 10*time.Hour)
			proj.snap("v1.12.8/arm64", 10*time.Hour)
			proj.snap("v1.13.9/amd64", time.Hour, "creating")
			proj.snap("v1.13.9/arm64", 9*time.Hour)
			return want{}
		}},
		{"a snapshot waiting for its boot check is a build in flight, not a snapshot to rebuild from or prune", nil, func(proj *project) want {
			// Counted as published, the pending v1.12.8/arm64 would be the
			// most recent of its group and have v1.13.9 rebuilt, and the
			// pending v1.11.0 would take a place of the two other versions
			// kept, having v1.9.0 pruned too.
			proj.snap("v1.12.8/amd64", 10*time.Hour)
			proj.snap("v1.12.8/arm64", time.Minute, "pending")
			proj.snap("v1.13.9/amd64", 9*time.Hour)
			proj.snap("v1.13.9/arm64", 9*time.Hour)
			proj.snap("v1.11.0/amd64", 20*time.Hour, "pending")
			proj.snap("v1.10.0/amd64", 30*time.Hour)
			proj.snap("v1.9.0/amd64", 40*time.Hour)
			oldest := proj.snap("v1.8.0/amd64", 50*time.Hour)
			return want{prune: []int64{oldest}}
		}},
		{"unmanaged and other clusters' snapshots do not count and stay", nil, func(proj *project) want {
			proj.snap("v1.12.8/amd64", time.Hour, "unmanaged")
			proj.snap("v1.12.8/arm64", time.Hour, "cluster=prod")
			proj.snap("v1.13.9/amd64", time.Hour)
			proj.snap("v1.13.9/arm64", time.Hour)
			proj.snap("v1.10.0/amd64", 900*time.Hour, "unmanaged")
			proj.snap("v1.10.0/amd64", 900*time.Hour, "cluster=prod")
			return want{builds: []string{"v1.12.8/amd64", "v1.12.8/arm64", "v1.13.9/amd64", "v1.13.9/arm64"},
				forced: []string{"v1.13.9/amd64", "v1.13.9/arm64"}, after: []string{"", "", "v1.12.8", "v1.12.8"},
				why: map[string]string{"v1.13.9/amd64": rebuild("amd64", "will be", "v1.12.8", "v1.13.9")}}
		}},
		{"running builds are left alone and hold their group", nil, func(proj *project) want {
			proj.server("v1.12.8/amd64", 10*time.Minute, "active")
			proj.server("v1.12.8/arm64", 10*time.Minute, "active")
			return want{deferred: []string{"v1.13.9/amd64", "v1.13.9/arm64"}, why: busy("v1.13.9/amd64", "v1.13.9/arm64")}
		}},
		{"a running build of an untracked version holds its group too", nil, func(proj *project) want {
			proj.snap("v1.12.8/amd64", 10*time.Hour)
			proj.snap("v1.12.8/arm64", 10*time.Hour)
			proj.server("v1.11.6/amd64", 10*time.Minute, "active")
			return want{builds: []string{"v1.13.9/arm64"}, deferred: []string{"v1.13.9/amd64"}, why: busy("v1.13.9/amd64")}
		}},
		{"a snapshot being created holds its group", nil, func(proj *project) want {
			proj.snap("v1.12.8/amd64", time.Minute, "creating")
			proj.snap("v1.12.8/arm64", 10*time.Hour)
			return want{builds: []string{"v1.13.9/arm64"}, deferred: []string{"v1.13.9/amd64"}, why: busy("v1.13.9/amd64")}
		}},
		{"stuck builds are re-driven, not started again, and hold their group", nil, func(proj *project) want {
			proj.server("v1.13.9/arm64", 10*time.Minute, "none")
			proj.server("v1.12.8/amd64", 10*time.Minute, "expired")
			return want{redrives: []string{"v1.12.8/amd64", "v1.13.9/arm64"},
				deferred: []string{"v1.12.8/arm64", "v1.13.9/amd64"}, why: busy("v1.12.8/arm64", "v1.13.9/amd64")}
		}},
		{"another cluster's builds are not re-driven and hold no group", nil, func(proj *project) want {
			proj.snap("v1.12.8/amd64", 10*time.Hour)
			proj.snap("v1.12.8/arm64", 10*time.Hour)
			proj.snap("v1.13.9/arm64", 9*time.Hour)
			proj.server("v1.11.6/amd64", 10*time.Minute, "none", "prod")
			proj.snap("v1.11.7/amd64", time.Minute, "creating", "cluster=prod")
			return want{builds: []string{"v1.13.9/amd64"}}
		}},
		{"expired servers and keys are collected, held leases are not; a collected server holds no group", nil, func(proj *project) want {
			proj.snap("v1.12.8/arm64", 10*time.Hour)
			proj.snap("v1.13.9/arm64", 9*time.Hour)
			s1 := proj.server("v1.13.9/amd64", 3*time.Hour, "none")
			k1 := proj.key("v1.10.0/amd64", 3*time.Hour, false)
			proj.key("v1.10.1/amd64", 3*time.Hour, true) // someone holds it
			proj.key("v1.10.2/amd64", time.Hour, false)  // young
			return want{builds: []string{"v1.12.8/amd64"}, servers: []int64{s1}, keys: []int64{k1},
				deferred: []string{"v1.13.9/amd64"}, why: map[string]string{"v1.13.9/amd64": "collected now"}}
		}},
		{"an expired server whose lease is held is not collected, and holds its group", nil, func(proj *project) want {
			proj.snap("v1.12.8/arm64", 10*time.Hour)
			proj.snap("v1.13.9/arm64", 9*time.Hour)
			proj.server("v1.12.8/amd64", 3*time.Hour, "active")
			return want{deferred: []string{"v1.13.9/amd64"}, why: busy("v1.13.9/amd64")}
		}},
		{"another cluster's expired servers and keys are not collected, live lease or not", nil, func(proj *project) want {
			for _, a := range []string{"amd64", "arm64"} {
				proj.snap("v1.12.8/"+a, 10*time.Hour)
				proj.snap("v1.13.9/"+a, 9*time.Hour)
			}
			proj.server("v1.11.6/amd64", 5*time.Hour, "none", "staging")
			proj.server("v1.11.7/amd64", 5*time.Hour, "active", "staging")
			proj.key("v1.10.0/amd64", 3*time.Hour, false, "staging")
			return want{}
		}},
		{"a build of a schematic no longer configured is not re-driven, but collected when it expires", nil, func(proj *project) want {
			for _, a := range []string{"amd64", "arm64"} {
				proj.snap("v1.12.8/"+a, 10*time.Hour)
				proj.snap("v1.13.9/"+a, 9*time.Hour)
			}
			proj.server("v1.13.9/amd64/vanilla", 10*time.Minute, "none")
			s := proj.server("v1.13.8/amd64/vanilla", 3*time.Hour, "none")
			return want{servers: []int64{s}}
		}},
		{"targets the factory does not serve are deferred and hold neither a slot nor their group", func(r Rules) Rules { r.MaxBuilds = 2; return r }, func(proj *project) want {
			proj.state.Unserved = map[build.Target]string{tgt("v1.12.8/amd64"): "not served yet"}
			why := map[string]string{"v1.13.9/arm64": "MAX_BUILDS_PER_POLL (2) reached", "v1.12.8/amd64": "not served yet"}
			return want{builds: []string{"v1.12.8/arm64", "v1.13.9/amd64"},
				deferred: []string{"v1.12.8/amd64", "v1.13.9/arm64"}, why: why}
		}},
		{"retention keeps tracked versions and two others per arch and schematic it builds", nil, func(proj *project) want {
			for _, a := range []string{"amd64", "arm64"} {
				proj.snap("v1.12.8/"+a, 10*time.Hour)
				proj.snap("v1.13.9/"+a, 9*time.Hour)
			}
			proj.snap("v1.13.8/amd64", 100*time.Hour)
			proj.snap("v1.13.7/amd64", 200*time.Hour)
			p1 := proj.snap("v1.12.7/amd64", 150*time.Hour)
			p2 := proj.snap("v1.11.6/amd64", 190*time.Hour)
			p3 := proj.snap("v1.11.6/amd64", 191*time.Hour) // a duplicate
			proj.snap("v1.11.6/arm64", 190*time.Hour)       // only other of arm64
			// vanilla is not configured: not ours to prune
			proj.snap("v1.10.0/amd64/vanilla", 900*time.Hour)
			proj.snap("v1.9.0/amd64/vanilla", 990*time.Hour)
			proj.snap("v1.8.0/amd64/vanilla", 999*time.Hour)
			proj.snap("v1.8.0/amd64/vanilla", 999*time.Hour, "creating")
			return want{prune: []int64{p1, p2, p3}}
		}},
		{"a new patch keeps the snapshot it replaces until it is built", func(r Rules) Rules { r.KeepOthers = 0; return r }, func(proj *project) want {
			proj.track("v1.12.9", "v1.13.9") // a patch of the older line: not the highest
			for _, a := range []string{"amd64", "arm64"} {
				proj.snap("v1.12.8/"+a, 10*time.Hour)
				proj.snap("v1.13.9/"+a, 9*time.Hour)
			}
			proj.snap("v1.12.9/arm64", time.Minute, "creating")
			p1 := proj.snap("v1.12.7/amd64", 100*time.Hour)
			p2 := proj.snap("v1.11.6/arm64", 110*time.Hour)
			return want{builds: []string{"v1.12.9/amd64", "v1.13.9/amd64"}, forced: []string{"v1.13.9/amd64"},
				after: []string{"", "v1.12.9"}, prune: []int64{p1, p2}}
		}},
		{"nothing tracked prunes nothing", func(r Rules) Rules { r.KeepOthers = 0; return r }, func(proj *project) want {
			proj.track()
			proj.snap("v1.13.8/amd64", 100*time.Hour)
			proj.snap("v1.12.7/amd64", 200*time.Hour)
			return want{}
		}},
		{"only tracked versions steer: an untracked highest version is pruned, the highest tracked rebuilt, the latest kept", func(r Rules) Rules { r.KeepOthers = 0; return r }, func(proj *project) want {
			proj.track("v1.12.8")
			proj.snap("v1.12.8/amd64", 10*time.Hour)
			p1 := proj.snap("v1.13.9/amd64", 20*time.Hour) // highest, untracked (a release withdrawn)
			proj.snap("v1.11.2/amd64", time.Hour)          // latest
			p2 := proj.snap("v1.11.1/amd64", 30*time.Hour)
			return want{builds: []string{"v1.12.8/arm64", "v1.12.8/amd64"}, forced: []string{"v1.12.8/amd64"}, prune: []int64{p1, p2},
				why: map[string]string{"v1.12.8/amd64": rebuild("amd64", "is", "v1.11.2", "v1.12.8")}}
		}},
		{"an untracked prerelease built last, above the tracked versions: the highest tracked is rebuilt, the prerelease kept as another version", nil, func(proj *project) want {
			for _, a := range []string{"amd64", "arm64"} {
				proj.snap("v1.12.8/"+a, 100*time.Hour)
				proj.snap("v1.13.9/"+a, 50*time.Hour)
			}
			proj.snap("v1.14.0-alpha.1/amd64", time.Hour) // built by hand
			return want{builds: []string{"v1.13.9/amd64"}, forced: []string{"v1.13.9/amd64"},
				why: map[string]string{"v1.13.9/amd64": rebuild("amd64", "is", "v1.14.0-alpha.1", "v1.13.9")}}
		}},
		{"an untracked prerelease, not the latest, is neither rebuilt nor kept beyond retention", func(r Rules) Rules { r.KeepOthers = 0; return r }, func(proj *project) want {
			for _, a := range []string{"amd64", "arm64"} {
				proj.snap("v1.12.8/"+a, 100*time.Hour)
				proj.snap("v1.13.9/"+a, 50*time.Hour)
			}
			p := proj.snap("v1.14.0-alpha.1/amd64", 60*time.Hour) // built while TRACK_PRERELEASES was on
			return want{prune: []int64{p}}
		}},
		{"an older line's patch built after the highest version: the highest is rebuilt", nil, func(proj *project) want {
			olderLinePatch(proj)
			return want{builds: []string{"v1.13.9/amd64", "v1.13.9/arm64"}, forced: []string{"v1.13.9/amd64", "v1.13.9/arm64"},
				why: map[string]string{"v1.13.9/arm64": rebuild("arm64", "is", "v1.12.9", "v1.13.9")}}
		}},
		{"a patch not served yet: its line's snapshot stands in for it and is not rebuilt over", nil, func(proj *project) want {
			proj.track("v1.12.8", "v1.13.10")
			for _, a := range []string{"amd64", "arm64"} {
				proj.snap("v1.12.8/"+a, 2*time.Hour)
				proj.snap("v1.13.9/"+a, time.Hour)
			}
			proj.state.Unserved = map[build.Target]string{tgt("v1.13.10/amd64"): "building", tgt("v1.13.10/arm64"): "building"}
			return want{deferred: []string{"v1.13.10/amd64", "v1.13.10/arm64"}}
		}},
		{"a patch not served yet, the older line's built meanwhile: the stand-in is rebuilt after it", nil, func(proj *project) want {
			proj.track("v1.12.9", "v1.13.10")
			for _, a := range []string{"amd64", "arm64"} {
				proj.snap("v1.12.8/"+a, 2*time.Hour)
				proj.snap("v1.13.9/"+a, time.Hour)
			}
			proj.state.Unserved = map[build.Target]string{tgt("v1.13.10/amd64"): "building", tgt("v1.13.10/arm64"): "building"}
			return want{builds: []string{"v1.12.9/amd64", "v1.12.9/arm64", "v1.13.9/amd64", "v1.13.9/arm64"},
				forced: []string{"v1.13.9/amd64", "v1.13.9/arm64"}, deferred: []string{"v1.13.10/amd64", "v1.13.10/arm64"},
				why: map[string]string{"v1.13.9/amd64": "not v1.13.9, which stands in for a tracked version of its line not built yet"}}
		}},
		{"an older line's patch is built and the highest rebuilt after it, in one poll", nil, func(proj *project) want {
			proj.track("v1.12.9", "v1.13.9")
			for _, a := range []string{"amd64", "arm64"} {
				proj.snap("v1.12.8/"+a, 100*time.Hour)
				proj.snap("v1.13.9/"+a, 50*time.Hour)
			}
			return want{builds: []string{"v1.12.9/amd64", "v1.12.9/arm64", "v1.13.9/amd64", "v1.13.9/arm64"},
				forced: []string{"v1.13.9/amd64", "v1.13.9/arm64"}, after: []string{"", "", "v1.12.9", "v1.12.9"},
				why: map[string]string{"v1.13.9/arm64": rebuild("arm64", "will be", "v1.12.9", "v1.13.9")}}
		}},
		{"rebuilds count against the cap", maxBuilds1, func(proj *project) want {
			olderLinePatch(proj)
			return want{builds: []string{"v1.13.9/amd64"}, forced: []string{"v1.13.9/amd64"}, deferred: []string{"v1.13.9/arm64"},
				why: map[string]string{"v1.13.9/arm64": capped}}
		}},
		{"no rebuild while the group builds, such as the rebuild itself", nil, func(proj *project) want {
			olderLinePatch(proj)
			proj.server("v1.13.9/amd64", 10*time.Minute, "active")
			proj.snap("v1.13.9/arm64", time.Minute, "creating")
			return want{deferred: []string{"v1.13.9/amd64", "v1.13.9/arm64"}, why: busy("v1.13.9/amd64", "v1.13.9/arm64")}
		}},
		{"a missing version goes before a rebuild, which it makes needless", nil, func(proj *project) want {
			olderLinePatch(proj)
			proj.track("v1.12.9", "v1.13.10")
			return want{builds: []string{"v1.13.10/amd64", "v1.13.10/arm64"}}
		}},
		{"no rebuild when the most recent snapshot is the highest version", nil, func(proj *project) want {
			proj.track("v1.12.9", "v1.13.9")
			for _, a := range []string{"amd64", "arm64"} {
				proj.snap("v1.12.8/"+a, 100*time.Hour)
				proj.snap("v1.12.9/"+a, 50*time.Hour)
				proj.snap("v1.13.9/"+a, time.Hour)
			}
			return want{}
		}},
		{"only the configured groups' managed available snapshots of the cluster count for rebuilds", nil, func(proj *project) want {
			for _, a := range []string{"amd64", "arm64"} {
				proj.snap("v1.12.8/"+a, 100*time.Hour)
				proj.snap("v1.13.9/"+a, 50*time.Hour)
			}
			proj.snap("v1.12.7/amd64", time.Hour, "unmanaged")
			proj.snap("v1.12.7/arm64", time.Hour, "cluster=prod")
			proj.snap("v1.13.9/amd64/vanilla", 50*time.Hour) // a schematic no longer configured
			proj.snap("v1.12.7/amd64/vanilla", time.Hour)
			return want{}
		}},
		{"of two snapshots made in the same second, the higher ID is the more recent", nil, func(proj *project) want {
			proj.snap("v1.13.9/amd64", time.Hour)
			proj.snap("v1.12.8/amd64", time.Hour) // the more recent
			proj.snap("v1.12.8/arm64", time.Hour)
			proj.snap("v1.13.9/arm64", time.Hour) // the more recent
			return want{builds: []string{"v1.13.9/amd64"}, forced: []string{"v1.13.9/amd64"}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proj := newProject(t, "v1.12.8", "v1.13.9")
			r := base
			if tt.rules != nil {
				r = tt.rules(r)
			}
			wt := tt.setup(proj)
			p := NewPlan(proj.state, r)
			forced := slices.DeleteFunc(slices.Clone(p.Builds), func(it Item) bool { return !it.Force })
			for _, c := range []struct {
				what      string
				got, want any
			}{
				{"builds", specs(p.Builds), orEmpty(wt.builds)},
				{"forced builds", specs(forced), orEmpty(wt.forced)},
				{"deferred", specs(p.Deferred), orEmpty(wt.deferred)},
				{"redrives", specs(p.Redrives), orEmpty(wt.redrives)},
				{"collected servers", ids(p.CollectServers), orEmpty(wt.servers)},
				{"collected keys", ids(p.CollectKeys), orEmpty(wt.keys)},
				{"pruned", ids(p.Prune), orEmpty(wt.prune)},
			} {
				if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
					t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
				}
			}
			if wt.after != nil {
				var after []string
				for _, it := range p.Builds {
					after = append(after, it.After)
				}
				if !slices.Equal(after, wt.after) {
					t.Errorf("builds come after %q, want %q", after, wt.after)
				}
			}
			items := slices.Concat(p.Builds, p.Deferred)
			for spec, why := range wt.why {
				i := slices.Index(specs(items), spec)
				if i < 0 || !strings.Contains(items[i].Reason, why) {
					t.Errorf("no build or deferral of %s says %q: %+v", spec, why, items)
				}
			}
			for _, l := range [][]Item{p.Builds, p.Deferred, p.Redrives} {
				for _, it := range l {
					if it.Reason == "" {
						t.Errorf("%v has no reason", it.Target)
					}
				}
			}
			for _, l := range [][]Resource{p.CollectServers, p.CollectKeys, p.Prune} {
				for _, r := range l {
					if r.Reason == "" {
						t.Errorf("%d has no reason", r.ID)
					}
				}
			}
			todo, _ := missing(proj.state, r, nil)
			var m []build.Target
			for _, it := range append(todo, rebuilds(proj.state, r, lastPlanned(p))...) {
				m = append(m, it.Target)
			}
			if m = slices.SortedStableFunc(slices.Values(m), compareTargets); !slices.Equal(m, candidatesOf(p)) {
				t.Errorf("missing and rebuilds = %v, want the builds and the deferrals but for a collected server", m)
			}
		})
	}
}

// lastPlanned returns the version of each group's last planned build of a
// missing target, after which rebuilds are planned.
func lastPlanned(p Plan) map[group]talos.Version {
	last := map[group]talos.Version{}
	for _, it := range p.Builds {
		if !it.Force {
			last[group{it.Arch, it.Schematic}], _ = talos.ParseVersion(it.Version)
		}
	}
	return last
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// candidatesOf is what missing and rebuilds must return together for plan
// p: the targets that were started or deferred for the cap, the factory or
// a running build, in the same order.
func candidatesOf(p Plan) []build.Target {
	var out []build.Target
	for _, it := range slices.Concat(p.Builds, p.Deferred) {
		if it.Server == "" {
			out = append(out, it.Target)
		}
	}
	slices.SortStableFunc(out, compareTargets)
	return out
}

// TestPruneProperties runs the planner on random snapshot sets and checks
// what must hold whatever the retention policy says.
func TestPruneProperties(t *testing.T) {
	var pool []string
	for minor, patches := range map[int]int{10: 7, 11: 6, 12: 8, 13: 9} {
		for p := 0; p <= patches; p++ {
			pool = append(pool, fmt.Sprintf("v1.%d.%d", minor, p))
		}
	}
	slices.Sort(pool)
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 7))
		proj := newProject(t)
		for range rng.IntN(4) {
			v, _ := talos.ParseVersion(pool[rng.IntN(len(pool))])
			proj.state.Tracked = append(proj.state.Tracked, v)
		}
		for range rng.IntN(40) {
			spec := pool[rng.IntN(len(pool))] + "/" + []string{"amd64", "arm64"}[rng.IntN(2)]
			if rng.IntN(3) == 0 {
				spec += "/vanilla"
			}
			var opts []string
			for _, o := range []string{"creating", "unmanaged", "cluster=prod"} {
				if rng.IntN(5) == 0 {
					opts = append(opts, o)
				}
			}
			proj.snap(spec, time.Duration(rng.IntN(1000))*time.Hour, opts...)
		}
		r := base
		r.KeepOthers = rng.IntN(4)
		checkPrune(t, seed, proj.state, r, NewPlan(proj.state, r).Prune)
	}
}

func checkPrune(t *testing.T, seed uint64, s State, r Rules, pruned []Resource) {
	t.Helper()
	fail := func(format string, args ...any) { t.Errorf("seed %d: "+format, append([]any{seed}, args...)...) }
	if len(s.Tracked) == 0 && len(pruned) > 0 {
		fail("pruned %d snapshots with nothing tracked", len(pruned))
	}
	tracked := map[string]bool{}
	for _, v := range s.Tracked {
		tracked[v.String()] = true
	}
	gone := map[int64]bool{}
	for _, p := range pruned {
		if gone[p.ID] {
			fail("snapshot %d pruned twice", p.ID)
		}
		gone[p.ID] = true
	}
	type group struct{ arch, schematic string }
	kept := map[group][]*hcloud.Image{} // ours, available, not pruned
	all := map[group][]*hcloud.Image{}  // ours, available
	for _, img := range s.Snapshots {
		t, ok := build.TargetFromLabels(img.Labels)
		ours := ok && img.Labels[label.Managed] == label.ManagedValue && img.Labels[label.Cluster] == r.Cluster
		if ours && img.Status == hcloud.ImageStatusAvailable {
			g := group{t.Arch, t.Schematic}
			all[g] = append(all[g], img)
			if !gone[img.ID] {
				kept[g] = append(kept[g], img)
			}
		}
		if !gone[img.ID] {
			continue
		}
		switch {
		case img.Labels[label.Managed] != label.ManagedValue:
			fail("pruned unmanaged snapshot %d", img.ID)
		case img.Labels[label.Cluster] != r.Cluster:
			fail("pruned snapshot %d of cluster %q", img.ID, img.Labels[label.Cluster])
		case img.Status != hcloud.ImageStatusAvailable:
			fail("pruned snapshot %d that is %s", img.ID, img.Status)
		case !r.builds(t):
			fail("pruned snapshot %d of %s/%s, which is not built here", img.ID, t.Arch, t.Schematic[:8])
		case tracked[t.Version]:
			fail("pruned snapshot %d of tracked %s", img.ID, t.Version)
		}
	}
	version := func(img *hcloud.Image) talos.Version {
		v, _ := talos.ParseVersion(img.Labels[label.TalosVersion])
		return v
	}
	for g, imgs := range all {
		// Ties go to the higher ID, the later of two created in the same second.
		latest := slices.MaxFunc(imgs, func(a, b *hcloud.Image) int {
			return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.ID, b.ID))
		})
		for _, img := range imgs {
			if gone[img.ID] && img == latest {
				fail("pruned %d, the latest snapshot of %v", img.ID, g)
			}
			if !gone[img.ID] {
				continue
			}
			// At least KeepOthers other versions above it stay.
			above := map[string]bool{}
			for _, k := range kept[g] {
				if v := version(k); !tracked[v.String()] && v.Compare(version(img)) > 0 {
					above[v.String()] = true
				}
			}
			if len(above) < r.KeepOthers {
				fail("pruned %d (%s) with only %d newer other versions kept in %v", img.ID, version(img), len(above), g)
			}
		}
	}
}

// TestPollsSteerByTrackedVersions runs polls an hour apart on random
// projects, carrying each plan out as the executor and the Builder do
// (prune, then each group's builds in the order planned, a forced build
// replacing the target's snapshots there were), and checks what must hold
// whatever the snapshots and the policy:
//   - only tracked versions are rebuilt;
//   - a poll whose cap left no build for later leaves the next poll no
//     build: every tracked version is built within one poll cycle;
//   - the polls come to rest (nothing built or pruned) within a bound, and
//     at rest the most recent snapshot of every group built here is its
//     highest tracked version, every tracked target has a snapshot, at
//     most KeepOthers other versions are kept, and nothing that is not
//     ours or of a group built here was touched.
func TestPollsSteerByTrackedVersions(t *testing.T) {
	pool := []string{"v1.11.5", "v1.12.7", "v1.12.8", "v1.12.9", "v1.13.8", "v1.13.9", "v1.13.10",
		"v1.14.0-alpha.1", "v1.14.0-beta.0"}
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 11))
		proj := newProject(t)
		for _, i := range rng.Perm(len(pool))[:1+rng.IntN(3)] {
			v, _ := talos.ParseVersion(pool[i])
			proj.state.Tracked = append(proj.state.Tracked, v)
		}
		foreign := map[int64]bool{}
		for range rng.IntN(16) {
			spec := pool[rng.IntN(len(pool))] + "/" + []string{"amd64", "arm64"}[rng.IntN(2)]
			var opts []string
			switch rng.IntN(8) {
			case 0:
				spec += "/vanilla" // not configured
			case 1:
				opts = append(opts, "unmanaged")
			case 2:
				opts = append(opts, "cluster=prod")
			}
			id := proj.snap(spec, time.Duration(1+rng.IntN(1000))*time.Hour, opts...)
			if len(opts) > 0 || strings.HasSuffix(spec, "/vanilla") {
				foreign[id] = true
			}
		}
		r := base
		r.KeepOthers, r.MaxBuilds = rng.IntN(3), 1+rng.IntN(6)
		fail := func(format string, args ...any) { t.Errorf("seed %d: "+format, append([]any{seed}, args...)...) }
		tracked := map[string]bool{}
		for _, v := range proj.state.Tracked {
			tracked[v.String()] = true
		}
		targets := desired(proj.state.Tracked, r)
		rest, bound := false, len(targets)+len(r.Architectures)*len(r.Schematics)+2
		for poll := 0; poll < bound && !rest; poll++ {
			p := NewPlan(proj.state, r)
			capped := false
			for _, it := range p.Deferred {
				capped = capped || strings.Contains(it.Reason, "MAX_BUILDS_PER_POLL")
			}
			for _, it := range p.Builds {
				if it.Force && !tracked[it.Version] {
					fail("poll %d rebuilds %s, which is not tracked", poll, it.Target)
				}
			}
			rest = len(p.Builds) == 0 && len(p.Prune) == 0
			proj.apply(p)
			if !capped && len(p.Builds) > 0 {
				if next := NewPlan(proj.state, r); len(next.Builds) > 0 {
					fail("poll %d left builds for the next poll: %v", poll, specs(next.Builds))
				}
			}
		}
		if !rest {
			fail("no rest after %d polls", bound)
			continue
		}
		for id := range foreign {
			if !slices.ContainsFunc(proj.state.Snapshots, func(img *hcloud.Image) bool { return img.ID == id }) {
				fail("snapshot %d, not ours to prune, was deleted", id)
			}
		}
		have := map[build.Target]bool{}
		type group struct{ arch, schematic string }
		latest := map[group]*hcloud.Image{}
		others := map[group]map[string]bool{}
		for _, img := range proj.state.Snapshots {
			tg, ok := ours(img.Labels, r.Cluster)
			if !ok || !r.builds(tg) {
				continue
			}
			have[tg] = true
			g := group{tg.Arch, tg.Schematic}
			if l := latest[g]; l == nil || cmp.Or(img.Created.Compare(l.Created), cmp.Compare(img.ID, l.ID)) > 0 {
				latest[g] = img
			}
			if !tracked[tg.Version] {
				if others[g] == nil {
					others[g] = map[string]bool{}
				}
				others[g][tg.Version] = true
			}
		}
		for _, tg := range targets {
			if !have[tg] {
				fail("at rest, tracked %s has no snapshot", tg)
			}
		}
		highest := slices.MaxFunc(proj.state.Tracked, talos.Version.Compare).String()
		for g, img := range latest {
			if v := img.Labels[label.TalosVersion]; v != highest {
				fail("at rest, the most recent snapshot of %s/%s is %s, not the highest tracked version %s", g.arch, g.schematic[:8], v, highest)
			}
			if len(others[g]) > r.KeepOthers {
				fail("at rest, %s/%s keeps %d other versions, RETENTION_KEEP_OTHERS is %d", g.arch, g.schematic[:8], len(others[g]), r.KeepOthers)
			}
		}
	}
}

// apply carries plan p out on the project's snapshots, as the executor and
// the Builder would, and moves the clock on by an hour.
func (proj *project) apply(p Plan) {
	pruned := map[int64]bool{}
	for _, r := range p.Prune {
		pruned[r.ID] = true
	}
	proj.state.Snapshots = slices.DeleteFunc(proj.state.Snapshots, func(img *hcloud.Image) bool { return pruned[img.ID] })
	for i, it := range p.Builds {
		if it.Force {
			proj.state.Snapshots = slices.DeleteFunc(proj.state.Snapshots, func(img *hcloud.Image) bool {
				tg, ok := ours(img.Labels, "")
				return ok && tg == it.Target
			})
		}
		l := targetLabels(proj.t, it.Target, "")
		l[label.OS] = "talos"
		proj.state.Snapshots = append(proj.state.Snapshots, &hcloud.Image{ID: proj.id(), Type: hcloud.ImageTypeSnapshot,
			Status: hcloud.ImageStatusAvailable, Labels: l, Created: proj.state.Now.Add(time.Duration(i) * time.Second)})
	}
	proj.state.Now = proj.state.Now.Add(time.Hour)
}
