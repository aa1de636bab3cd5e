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
		label.TalosSchematic: tg.Schematic[:32], label.OwnPrefix + "schematic-rest": tg.Schematic[32:],
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

type world struct {
	t     *testing.T
	state State
	next  int64
}

func newWorld(t *testing.T, tracked ...string) *world {
	w := &world{t: t, state: State{Now: now}, next: 100}
	w.track(tracked...)
	return w
}

// track sets the tracked versions.
func (w *world) track(versions ...string) {
	w.state.Tracked = nil
	for _, v := range versions {
		pv, err := talos.ParseVersion(v)
		if err != nil {
			w.t.Fatal(err)
		}
		w.state.Tracked = append(w.state.Tracked, pv)
	}
}

func (w *world) id() int64 { w.next++; return w.next }

// snap adds a managed snapshot created age ago; opts: "creating",
// "unmanaged", "cluster=x".
func (w *world) snap(spec string, age time.Duration, opts ...string) int64 {
	cluster := ""
	status := hcloud.ImageStatusAvailable
	managed := true
	for _, o := range opts {
		switch {
		case o == "creating":
			status = hcloud.ImageStatusCreating
		case o == "unmanaged":
			managed = false
		case strings.HasPrefix(o, "cluster="):
			cluster = strings.TrimPrefix(o, "cluster=")
		}
	}
	l := targetLabels(w.t, tgt(spec), cluster)
	l[label.OS] = "talos"
	if !managed {
		delete(l, label.Managed)
	}
	img := &hcloud.Image{ID: w.id(), Type: hcloud.ImageTypeSnapshot, Status: status, Labels: l, Created: now.Add(-age)}
	w.state.Snapshots = append(w.state.Snapshots, img)
	return img.ID
}

// server adds a build server created age ago; lease is "none", "active"
// or "expired", and an optional key age (default: as old as the server).
func (w *world) server(spec string, age time.Duration, lease string, cluster ...string) int64 {
	tg := tgt(spec)
	l := targetLabels(w.t, tg, strings.Join(cluster, ""))
	l[label.OwnPrefix+"role"] = "build-server"
	srv := &hcloud.Server{ID: w.id(), Name: tg.Name(), Labels: l, Created: now.Add(-age)}
	w.state.Servers = append(w.state.Servers, srv)
	if lease != "none" {
		w.key(spec, age, lease == "active")
	}
	return srv.ID
}

func (w *world) key(spec string, age time.Duration, active bool) int64 {
	tg := tgt(spec)
	l := targetLabels(w.t, tg, "")
	l[label.OwnPrefix+"role"] = "lease"
	until := now.Add(-time.Minute)
	if active {
		until = now.Add(time.Minute)
	}
	l[label.OwnPrefix+"until"] = strconv.FormatInt(until.Unix(), 10)
	if build.LeaseActive(l, now) != active {
		w.t.Fatalf("lease labels %v: active %v, want %v", l, !active, active)
	}
	k := &hcloud.SSHKey{ID: w.id(), Name: tg.Name(), Labels: l, Created: now.Add(-age)}
	w.state.Keys = append(w.state.Keys, k)
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
		servers, keys, prune               []int64
		why                                map[string]string // target → in the reason of its build or deferral
	}
	const capped = "MAX_BUILDS_PER_POLL (1) reached"
	rebuild := func(arch, latest, highest string) string {
		return fmt.Sprintf("the most recent snapshot of %s/%s is %s, older than %s: rebuild %s", arch, qga[:8], latest, highest, highest)
	}
	// olderLinePatch: v1.12.9 came out after v1.13.9 and was built last.
	olderLinePatch := func(w *world) {
		w.track("v1.12.9", "v1.13.9")
		for _, a := range []string{"amd64", "arm64"} {
			w.snap("v1.12.8/"+a, 100*time.Hour)
			w.snap("v1.13.9/"+a, 50*time.Hour)
			w.snap("v1.12.9/"+a, time.Hour)
		}
	}
	maxBuilds1 := func(r Rules) Rules { r.MaxBuilds = 1; return r }
	tests := []struct {
		name  string
		rules func(Rules) Rules
		setup func(w *world) want
	}{
		{"a first poll builds the oldest version of each architecture and schematic, the others wait", nil, func(w *world) want {
			why := busy("v1.13.9/amd64", "v1.13.9/arm64")
			why["v1.12.8/amd64"] = "tracked version without a snapshot"
			return want{builds: []string{"v1.12.8/amd64", "v1.12.8/arm64"}, deferred: []string{"v1.13.9/amd64", "v1.13.9/arm64"}, why: why}
		}},
		{"the next poll builds the next version", nil, func(w *world) want {
			w.snap("v1.12.8/amd64", time.Hour)
			w.snap("v1.12.8/arm64", time.Hour)
			return want{builds: []string{"v1.13.9/amd64", "v1.13.9/arm64"}}
		}},
		{"the cap counts the builds of all groups", maxBuilds1, func(w *world) want {
			why := busy("v1.13.9/amd64")
			why["v1.12.8/arm64"], why["v1.13.9/arm64"] = capped, capped
			return want{builds: []string{"v1.12.8/amd64"},
				deferred: []string{"v1.12.8/arm64", "v1.13.9/amd64", "v1.13.9/arm64"}, why: why}
		}},
		{"schematics times architectures are groups of their own", func(r Rules) Rules { r.Schematics = []string{qga, van}; r.MaxBuilds = 9; return r }, func(w *world) want {
			w.snap("v1.12.8/amd64", time.Hour)
			w.snap("v1.12.8/arm64", time.Hour)
			return want{builds: []string{"v1.12.8/amd64/vanilla", "v1.12.8/arm64/vanilla", "v1.13.9/amd64", "v1.13.9/arm64"},
				deferred: []string{"v1.13.9/amd64/vanilla", "v1.13.9/arm64/vanilla"},
				why:      busy("v1.13.9/amd64/vanilla", "v1.13.9/arm64/vanilla")}
		}},
		{"nothing to do", nil, func(w *world) want {
			w.snap("v1.12.8/amd64", 10*time.Hour)
			w.snap("v1.12.8/arm64", 10*time.Hour)
			w.snap("v1.13.9/amd64", time.Hour, "creating")
			w.snap("v1.13.9/arm64", 9*time.Hour)
			return want{}
		}},
		{"unmanaged and other clusters' snapshots do not count and stay", nil, func(w *world) want {
			w.snap("v1.12.8/amd64", time.Hour, "unmanaged")
			w.snap("v1.12.8/arm64", time.Hour, "cluster=prod")
			w.snap("v1.13.9/amd64", time.Hour)
			w.snap("v1.13.9/arm64", time.Hour)
			w.snap("v1.10.0/amd64", 900*time.Hour, "unmanaged")
			w.snap("v1.10.0/amd64", 900*time.Hour, "cluster=prod")
			return want{builds: []string{"v1.12.8/amd64", "v1.12.8/arm64"}}
		}},
		{"running builds are left alone and hold their group", nil, func(w *world) want {
			w.server("v1.12.8/amd64", 10*time.Minute, "active")
			w.server("v1.12.8/arm64", 10*time.Minute, "active")
			return want{deferred: []string{"v1.13.9/amd64", "v1.13.9/arm64"}, why: busy("v1.13.9/amd64", "v1.13.9/arm64")}
		}},
		{"a running build of an untracked version holds its group too", nil, func(w *world) want {
			w.snap("v1.12.8/amd64", 10*time.Hour)
			w.snap("v1.12.8/arm64", 10*time.Hour)
			w.server("v1.11.6/amd64", 10*time.Minute, "active")
			return want{builds: []string{"v1.13.9/arm64"}, deferred: []string{"v1.13.9/amd64"}, why: busy("v1.13.9/amd64")}
		}},
		{"a snapshot being created holds its group", nil, func(w *world) want {
			w.snap("v1.12.8/amd64", time.Minute, "creating")
			w.snap("v1.12.8/arm64", 10*time.Hour)
			return want{builds: []string{"v1.13.9/arm64"}, deferred: []string{"v1.13.9/amd64"}, why: busy("v1.13.9/amd64")}
		}},
		{"stuck builds are re-driven, not started again, and hold their group", nil, func(w *world) want {
			w.server("v1.13.9/arm64", 10*time.Minute, "none")
			w.server("v1.12.8/amd64", 10*time.Minute, "expired")
			return want{redrives: []string{"v1.12.8/amd64", "v1.13.9/arm64"},
				deferred: []string{"v1.12.8/arm64", "v1.13.9/amd64"}, why: busy("v1.12.8/arm64", "v1.13.9/amd64")}
		}},
		{"another cluster's builds are not re-driven and hold no group", nil, func(w *world) want {
			w.snap("v1.12.8/amd64", 10*time.Hour)
			w.snap("v1.12.8/arm64", 10*time.Hour)
			w.snap("v1.13.9/arm64", 9*time.Hour)
			w.server("v1.11.6/amd64", 10*time.Minute, "none", "prod")
			w.snap("v1.11.7/amd64", time.Minute, "creating", "cluster=prod")
			return want{builds: []string{"v1.13.9/amd64"}}
		}},
		{"expired servers and keys are collected, held leases are not; a collected server holds no group", nil, func(w *world) want {
			w.snap("v1.12.8/arm64", 10*time.Hour)
			w.snap("v1.13.9/arm64", 9*time.Hour)
			s1 := w.server("v1.13.9/amd64", 3*time.Hour, "none")
			s2 := w.server("v1.11.6/amd64", 5*time.Hour, "none", "prod") // expired anywhere
			k1 := w.key("v1.10.0/amd64", 3*time.Hour, false)
			w.key("v1.10.1/amd64", 3*time.Hour, true) // someone holds it
			w.key("v1.10.2/amd64", time.Hour, false)  // young
			return want{builds: []string{"v1.12.8/amd64"}, servers: []int64{s1, s2}, keys: []int64{k1},
				deferred: []string{"v1.13.9/amd64"}, why: map[string]string{"v1.13.9/amd64": "collected now"}}
		}},
		{"targets the factory does not serve are deferred and hold neither a slot nor their group", func(r Rules) Rules { r.MaxBuilds = 2; return r }, func(w *world) want {
			w.state.Unserved = map[build.Target]string{tgt("v1.12.8/amd64"): "not served yet"}
			why := busy("v1.13.9/arm64")
			why["v1.12.8/amd64"] = "not served yet"
			return want{builds: []string{"v1.12.8/arm64", "v1.13.9/amd64"},
				deferred: []string{"v1.12.8/amd64", "v1.13.9/arm64"}, why: why}
		}},
		{"retention keeps tracked versions and two others per arch and schematic", nil, func(w *world) want {
			for _, a := range []string{"amd64", "arm64"} {
				w.snap("v1.12.8/"+a, 10*time.Hour)
				w.snap("v1.13.9/"+a, 9*time.Hour)
			}
			w.snap("v1.13.8/amd64", 100*time.Hour)
			w.snap("v1.13.7/amd64", 200*time.Hour)
			p1 := w.snap("v1.12.7/amd64", 150*time.Hour)
			p2 := w.snap("v1.11.6/amd64", 190*time.Hour)
			p3 := w.snap("v1.11.6/amd64", 191*time.Hour) // a duplicate
			w.snap("v1.11.6/arm64", 190*time.Hour)       // only other of arm64
			w.snap("v1.10.0/amd64/vanilla", 900*time.Hour)
			w.snap("v1.9.0/amd64/vanilla", 990*time.Hour)
			p4 := w.snap("v1.8.0/amd64/vanilla", 999*time.Hour)
			w.snap("v1.8.0/amd64/vanilla", 999*time.Hour, "creating")
			return want{prune: []int64{p1, p2, p3, p4}}
		}},
		{"a new patch keeps the snapshot it replaces until it is built", func(r Rules) Rules { r.KeepOthers = 0; return r }, func(w *world) want {
			w.track("v1.12.9", "v1.13.9") // a patch of the older line: not the highest
			for _, a := range []string{"amd64", "arm64"} {
				w.snap("v1.12.8/"+a, 10*time.Hour)
				w.snap("v1.13.9/"+a, 9*time.Hour)
			}
			w.snap("v1.12.9/arm64", time.Minute, "creating")
			p1 := w.snap("v1.12.7/amd64", 100*time.Hour)
			p2 := w.snap("v1.11.6/arm64", 110*time.Hour)
			return want{builds: []string{"v1.12.9/amd64"}, prune: []int64{p1, p2}}
		}},
		{"nothing tracked prunes nothing", func(r Rules) Rules { r.KeepOthers = 0; return r }, func(w *world) want {
			w.track()
			w.snap("v1.13.8/amd64", 100*time.Hour)
			w.snap("v1.12.7/amd64", 200*time.Hour)
			return want{}
		}},
		{"the highest and the latest snapshot survive any retention; the highest is rebuilt", func(r Rules) Rules { r.KeepOthers = 0; return r }, func(w *world) want {
			w.track("v1.12.8")
			w.snap("v1.12.8/amd64", 10*time.Hour)
			w.snap("v1.13.9/amd64", 20*time.Hour) // highest
			w.snap("v1.11.2/amd64", time.Hour)    // latest
			p := w.snap("v1.11.1/amd64", 30*time.Hour)
			return want{builds: []string{"v1.12.8/arm64", "v1.13.9/amd64"}, forced: []string{"v1.13.9/amd64"}, prune: []int64{p},
				why: map[string]string{"v1.13.9/amd64": rebuild("amd64", "v1.11.2", "v1.13.9")}}
		}},
		{"an older line's patch built after the highest version: the highest is rebuilt", nil, func(w *world) want {
			olderLinePatch(w)
			return want{builds: []string{"v1.13.9/amd64", "v1.13.9/arm64"}, forced: []string{"v1.13.9/amd64", "v1.13.9/arm64"},
				why: map[string]string{"v1.13.9/arm64": rebuild("arm64", "v1.12.9", "v1.13.9")}}
		}},
		{"rebuilds count against the cap", maxBuilds1, func(w *world) want {
			olderLinePatch(w)
			return want{builds: []string{"v1.13.9/amd64"}, forced: []string{"v1.13.9/amd64"}, deferred: []string{"v1.13.9/arm64"},
				why: map[string]string{"v1.13.9/arm64": capped}}
		}},
		{"no rebuild while the group builds, such as the rebuild itself", nil, func(w *world) want {
			olderLinePatch(w)
			w.server("v1.13.9/amd64", 10*time.Minute, "active")
			w.snap("v1.13.9/arm64", time.Minute, "creating")
			return want{deferred: []string{"v1.13.9/amd64", "v1.13.9/arm64"}, why: busy("v1.13.9/amd64", "v1.13.9/arm64")}
		}},
		{"a missing version goes before a rebuild, which it makes needless", nil, func(w *world) want {
			olderLinePatch(w)
			w.track("v1.12.9", "v1.13.10")
			return want{builds: []string{"v1.13.10/amd64", "v1.13.10/arm64"}, deferred: []string{"v1.13.9/amd64", "v1.13.9/arm64"},
				why: busy("v1.13.9/amd64", "v1.13.9/arm64")}
		}},
		{"no rebuild when the most recent snapshot is the highest version", nil, func(w *world) want {
			w.track("v1.12.9", "v1.13.9")
			for _, a := range []string{"amd64", "arm64"} {
				w.snap("v1.12.8/"+a, 100*time.Hour)
				w.snap("v1.12.9/"+a, 50*time.Hour)
				w.snap("v1.13.9/"+a, time.Hour)
			}
			return want{}
		}},
		{"only the configured groups' managed available snapshots of the cluster count for rebuilds", nil, func(w *world) want {
			for _, a := range []string{"amd64", "arm64"} {
				w.snap("v1.12.8/"+a, 100*time.Hour)
				w.snap("v1.13.9/"+a, 50*time.Hour)
			}
			w.snap("v1.12.7/amd64", time.Hour, "unmanaged")
			w.snap("v1.12.7/arm64", time.Hour, "cluster=prod")
			w.snap("v1.13.9/amd64/vanilla", 50*time.Hour) // a schematic no longer configured
			w.snap("v1.12.7/amd64/vanilla", time.Hour)
			return want{}
		}},
		{"of two snapshots made in the same second, the higher ID is the more recent", nil, func(w *world) want {
			w.snap("v1.13.9/amd64", time.Hour)
			w.snap("v1.12.8/amd64", time.Hour) // the more recent
			w.snap("v1.12.8/arm64", time.Hour)
			w.snap("v1.13.9/arm64", time.Hour) // the more recent
			return want{builds: []string{"v1.13.9/amd64"}, forced: []string{"v1.13.9/amd64"}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, "v1.12.8", "v1.13.9")
			r := base
			if tt.rules != nil {
				r = tt.rules(r)
			}
			wt := tt.setup(w)
			p := NewPlan(w.state, r)
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
			todo, _ := missing(w.state, r, nil)
			var m []build.Target
			for _, it := range append(todo, rebuilds(w.state, r)...) {
				m = append(m, it.Target)
			}
			if m = slices.SortedStableFunc(slices.Values(m), compareTargets); !slices.Equal(m, candidatesOf(p)) {
				t.Errorf("missing and rebuilds = %v, want the builds and the deferrals but for a collected server", m)
			}
		})
	}
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
		w := newWorld(t)
		for range rng.IntN(4) {
			v, _ := talos.ParseVersion(pool[rng.IntN(len(pool))])
			w.state.Tracked = append(w.state.Tracked, v)
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
			w.snap(spec, time.Duration(rng.IntN(1000))*time.Hour, opts...)
		}
		r := base
		r.KeepOthers = rng.IntN(4)
		checkPrune(t, seed, w.state, r, NewPlan(w.state, r).Prune)
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
		highest := slices.MaxFunc(imgs, func(a, b *hcloud.Image) int {
			return cmp.Or(version(a).Compare(version(b)), a.Created.Compare(b.Created), cmp.Compare(a.ID, b.ID))
		})
		latest := slices.MaxFunc(imgs, func(a, b *hcloud.Image) int {
			return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.ID, b.ID))
		})
		for _, img := range imgs {
			if gone[img.ID] && img == highest {
				fail("pruned %d, the newest of the highest version %s of %v", img.ID, version(img), g)
			}
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
