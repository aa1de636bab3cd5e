package poll

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// Rules are the planner's settings; config.Config supplies them.
type Rules struct {
	Architectures []string      // built for every tracked version
	Schematics    []string      // likewise
	Cluster       string        // our snapshots carry cluster=<Cluster>, or no cluster label when empty
	MaxBuilds     int           // new builds per poll
	ServerTTL     time.Duration // build servers and lease keys older than this are collected
	KeepOthers    int           // snapshots of untracked versions kept per architecture and schematic
	FailureRules                // failure records and stuck snapshots (failures.go)
}

// State is what the planner decides on.
type State struct {
	// Tracked are the versions the release policy tracks.
	Tracked []talos.Version
	// Snapshots are the managed snapshots; anything else in here is ignored.
	Snapshots []*hcloud.Image
	// Servers are the build servers and boot servers (label.ServerSelector)
	// and Keys the lease keys (label.RoleSelector) of the image builder.
	Servers []*hcloud.Server
	Keys    []*hcloud.SSHKey
	// Records are the failure records (label.RoleSelector).
	Records []*hcloud.SSHKey
	// Unserved holds the targets the image factory does not serve (yet),
	// with why; every other target counts as served.
	Unserved map[build.Target]string
	Now      time.Time
}

// Item is a planned build, re-drive or deferral of a target.
type Item struct {
	build.Target
	Force  bool   `json:"force,omitempty"`  // a rebuild that replaces the target's snapshot
	Server string `json:"server,omitempty"` // a re-drive's build server
	// After is the version of the build of the same architecture and
	// schematic that this one follows: the Builder starts it when that one
	// is done.
	After  string `json:"after,omitempty"`
	Reason string `json:"reason"`
	Error  string `json:"error,omitempty"` // why carrying it out failed
}

// Resource is a planned deletion of a server, SSH key or snapshot.
type Resource struct {
	ID      int64         `json:"id"`
	Name    string        `json:"name,omitempty"`
	Target  *build.Target `json:"target,omitempty"`
	Created time.Time     `json:"created"`
	Reason  string        `json:"reason"`
	Error   string        `json:"error,omitempty"`
}

// Plan is what a poll does, each action with its reason.
type Plan struct {
	Builds         []Item     `json:"builds"`
	Redrives       []Item     `json:"redrives"`
	Deferred       []Item     `json:"deferred"`
	CollectServers []Resource `json:"collected_servers"`
	CollectKeys    []Resource `json:"collected_keys"`
	Prune          []Resource `json:"pruned"`
	FailurePlan
}

// Empty tells whether the plan does nothing.
func (p Plan) Empty() bool {
	return len(p.Builds)+len(p.Redrives)+len(p.CollectServers)+len(p.CollectKeys)+len(p.Prune)+p.FailurePlan.actions() == 0
}

// NewPlan decides what a poll does. It is a pure function of its inputs.
// It acts only on what carries the management label and the configured
// cluster's label (ours), builds and prunes only the configured
// architectures × schematics (its groups):
//
//   - Builds: tracked targets (version × architecture × schematic) with
//     neither a snapshot (available or being created) nor a build server,
//     at most Rules.MaxBuilds of them. Consumers pick the most recently
//     created os=talos snapshot of an architecture, so that one must be the
//     highest tracked version: builds of one group run one at a time,
//     oldest version first, the first of each group started by the poll
//     and each of the others by the Builder when the one before it (After)
//     is done; and when a snapshot of another version would nevertheless
//     be the most recent (a patch of the older minor released after the
//     newer one, an untracked version built last), the highest tracked
//     version is rebuilt (Force) last, to be the most recent again;
//   - Deferred: those left for a later poll (the cap, a factory that does
//     not serve the image yet or is building it, a server being collected,
//     a build of the group under way, which carries its own queue on, a
//     failure record that holds the target);
//   - Redrives: build servers of ours, of a group we build, whose lease key
//     is absent or expired: no invocation carries their build on;
//   - CollectServers and CollectKeys: build servers of ours older than
//     Rules.ServerTTL whose lease is not held, and lease keys as old whose
//     lease is not held;
//   - Prune: available snapshots of ours beyond the retention policy;
//   - FailurePlan (failures.go): targets whose failure records hold them
//     are deferred, neither built nor re-driven; failed snapshots that no
//     build watches are discarded and their failures recorded; records
//     that no longer apply are deleted.
func NewPlan(s State, r Rules) Plan {
	p := Plan{Builds: []Item{}, Redrives: []Item{}, Deferred: []Item{},
		CollectServers: []Resource{}, CollectKeys: []Resource{}, Prune: []Resource{}}
	keys := map[string]*hcloud.SSHKey{}
	for _, k := range s.Keys {
		if !mine(k.Labels, r.Cluster) {
			continue
		}
		keys[k.Name] = k
		if age := s.Now.Sub(k.Created); age > r.ServerTTL && !build.LeaseActive(k.Labels, s.Now) {
			p.CollectKeys = append(p.CollectKeys, Resource{ID: k.ID, Name: k.Name, Target: targetOf(k.Labels),
				Created: k.Created, Reason: fmt.Sprintf("lease key is %s old, past BUILD_SERVER_TTL %s, and not held", roundAge(age), r.ServerTTL)})
		}
	}
	collected := map[int64]bool{}
	for _, srv := range s.Servers {
		if !mine(srv.Labels, r.Cluster) {
			continue
		}
		// A live lease means an invocation works on the server: it is
		// never deleted under it.
		if age := s.Now.Sub(srv.Created); age > r.ServerTTL && !leased(keys[leaseName(srv, r.Cluster)], s.Now) {
			collected[srv.ID] = true
			p.CollectServers = append(p.CollectServers, Resource{ID: srv.ID, Name: srv.Name, Target: targetOf(srv.Labels),
				Created: srv.Created, Reason: fmt.Sprintf("build server is %s old, past BUILD_SERVER_TTL %s, and its lease is not held",
					roundAge(age), r.ServerTTL)})
		}
	}
	p.Redrives = redrives(s, r, keys, collected)
	s = p.holdFailures(s, r, collected) // failures.go: failed snapshots, backed-off and parked targets

	todo, deferred := missing(s, r, collected)
	p.Deferred = append(p.Deferred, deferred...)
	busy := building(s, r, collected)
	last := map[group]talos.Version{} // the version of each group's last planned build
	queued := map[group]int{}
	plan := func(it Item) {
		g := group{it.Arch, it.Schematic}
		switch why, unserved := s.Unserved[it.Target]; {
		case unserved:
			p.Deferred = append(p.Deferred, Item{Target: it.Target, Reason: why})
		case busy[g]:
			p.Deferred = append(p.Deferred, Item{Target: it.Target, Reason: fmt.Sprintf("a build of %s/%s runs: "+
				"one at a time per architecture and schematic, oldest version first, so that the most recent "+
				"snapshot is the highest version", it.Arch, it.Schematic[:8])})
		case len(p.Builds) >= r.MaxBuilds:
			p.Deferred = append(p.Deferred, Item{Target: it.Target,
				Reason: fmt.Sprintf("MAX_BUILDS_PER_POLL (%d) reached; a later poll starts it", r.MaxBuilds)})
		case queued[g] > build.MaxQueue:
			p.Deferred = append(p.Deferred, Item{Target: it.Target, Reason: fmt.Sprintf(
				"a request queues at most %d builds behind its own; a later poll starts it", build.MaxQueue)})
		default:
			if v, ok := last[g]; ok {
				it.After = v.String()
			}
			p.Builds = append(p.Builds, it)
			last[g], _ = talos.ParseVersion(it.Version) // valid: a tracked version
			queued[g]++
		}
	}
	for _, it := range todo {
		plan(it)
	}
	for _, it := range rebuilds(s, r, last) {
		plan(it)
	}
	p.Prune = prune(s, r)
	for _, l := range [][]Resource{p.CollectServers, p.CollectKeys, p.Prune} {
		slices.SortFunc(l, func(a, b Resource) int { return cmp.Compare(a.ID, b.ID) })
	}
	return p
}

// group is an architecture and a schematic: consumers pick the most recent
// snapshot within one.
type group struct{ arch, schematic string }

// building returns the groups with a build in flight: a build server that
// is not being collected, or a snapshot still being created or checked.
func building(s State, r Rules, collected map[int64]bool) map[group]bool {
	busy := map[group]bool{}
	for _, srv := range s.Servers {
		if t, ok := ours(srv.Labels, r.Cluster); ok && !collected[srv.ID] {
			busy[group{t.Arch, t.Schematic}] = true
		}
	}
	for _, img := range s.Snapshots {
		if t, ok := ours(img.Labels, r.Cluster); ok && (img.Status == hcloud.ImageStatusCreating || build.Pending(img)) {
			busy[group{t.Arch, t.Schematic}] = true
		}
	}
	return busy
}

// rebuilds returns, for each configured group whose most recent snapshot
// will not be of its highest tracked version once the builds planned so
// far (last: the version of each group's last one) are done, a forced
// build of that version. Only tracked versions steer, and the stand-ins of
// tracked targets not built yet (see prune), so that a patch released but
// not built yet never has a lower line rebuilt over its predecessor. A
// higher version that is not tracked (a prerelease built by hand or while
// TRACK_PRERELEASES was on, a release withdrawn from GitHub) is neither
// rebuilt nor kept for being the highest; retention prunes it like any
// other.
func rebuilds(s State, r Rules, last map[group]talos.Version) []Item {
	tracked := map[string]bool{}
	for _, v := range s.Tracked {
		tracked[v.String()] = true
	}
	var out []Item
	for _, sch := range r.Schematics {
		for _, arch := range r.Architectures {
			var g []snap
			for _, img := range s.Snapshots {
				t, ok := ours(img.Labels, r.Cluster)
				if !ok || !build.Published(img) || t.Arch != arch || t.Schematic != sch {
					continue
				}
				v, _ := talos.ParseVersion(t.Version) // valid: ours checked it
				g = append(g, snap{img: img, t: t, v: v})
			}
			slices.SortFunc(g, func(a, b snap) int { return b.v.Compare(a.v) }) // highest first
			steer := maps.Clone(tracked)
			for _, v := range standIns(g, s.Tracked, tracked) {
				steer[v] = true
			}
			i := slices.IndexFunc(g, func(sn snap) bool { return steer[sn.t.Version] })
			if i < 0 {
				continue
			}
			highest := g[i]
			// Of two created in the same second (timestamps have seconds),
			// the higher ID is the later, as in prune.
			latest := slices.MaxFunc(g, func(a, b snap) int {
				return cmp.Or(a.img.Created.Compare(b.img.Created), cmp.Compare(a.img.ID, b.img.ID))
			})
			is, then := "is", latest.v
			if queued, ok := last[group{arch, sch}]; ok {
				// Planned builds are of tracked versions without a snapshot,
				// oldest first: the last one planned is built last, and is
				// the highest tracked version if it is higher than highest.
				is, then = "will be", queued
			}
			if then.Compare(highest.v) == 0 || (is == "will be" && then.Compare(highest.v) > 0) {
				continue
			}
			what := "the highest tracked version " + highest.t.Version
			if !tracked[highest.t.Version] {
				what = highest.t.Version + ", which stands in for a tracked version of its line not built yet"
			}
			out = append(out, Item{Target: highest.t, Force: true, Reason: fmt.Sprintf(
				"the most recent snapshot of %s/%s %s %s, not %s: rebuild %s so that consumers picking the most "+
					"recent snapshot get it", arch, sch[:8], is, then, what, highest.t.Version)})
		}
	}
	return out
}

// missing returns the tracked targets to build, before the factory, the
// cap and running builds have their say: those without a snapshot or a
// build server, oldest version first. It defers those whose build server
// is collected: a later poll starts them afresh.
func missing(s State, r Rules, collected map[int64]bool) ([]Item, []Item) {
	have := map[build.Target]bool{}
	for _, img := range s.Snapshots {
		if t, ok := ours(img.Labels, r.Cluster); ok &&
			(img.Status == hcloud.ImageStatusAvailable || img.Status == hcloud.ImageStatusCreating) {
			have[t] = true
		}
	}
	servers := map[string]*hcloud.Server{}
	for _, srv := range s.Servers {
		servers[srv.Name] = srv
	}
	var out, deferred []Item
	for _, t := range desired(s.Tracked, r) {
		if have[t] {
			continue
		}
		if srv := servers[t.Name(r.Cluster)]; srv != nil {
			if collected[srv.ID] {
				deferred = append(deferred, Item{Target: t, Server: srv.Name,
					Reason: "its build server is past BUILD_SERVER_TTL and collected now; a later poll starts it again"})
			}
			continue // building; re-driven when stuck
		}
		out = append(out, Item{Target: t, Reason: "tracked version without a snapshot"})
	}
	return out, deferred
}

// desired returns the tracked targets, oldest version first, then in the
// configured order of schematics and architectures.
func desired(tracked []talos.Version, r Rules) []build.Target {
	vs := slices.Clone(tracked)
	slices.SortStableFunc(vs, talos.Version.Compare)
	vs = slices.CompactFunc(vs, func(a, b talos.Version) bool { return a.Compare(b) == 0 })
	var out []build.Target
	for _, v := range vs {
		for _, s := range r.Schematics {
			for _, a := range r.Architectures {
				out = append(out, build.Target{Version: v.String(), Arch: a, Schematic: s})
			}
		}
	}
	return out
}

// redrives returns our build servers that no invocation works on, of the
// groups we build: the Builder refuses a schematic or architecture no
// longer configured, and such a server is collected after
// BUILD_SERVER_TTL.
func redrives(s State, r Rules, keys map[string]*hcloud.SSHKey, collected map[int64]bool) []Item {
	out := []Item{}
	for _, srv := range s.Servers {
		t, ok := ours(srv.Labels, r.Cluster)
		if !ok || collected[srv.ID] || !r.builds(t) || srv.Labels[label.Role] == label.RoleBootCheck {
			continue // a boot server goes on with its build server
		}
		var why string
		switch k := keys[srv.Name]; {
		case k == nil:
			why = "build server without a lease: no invocation carries the build on"
		case !build.LeaseActive(k.Labels, s.Now):
			why = "build server whose lease expired: its invocation died"
		default:
			continue
		}
		out = append(out, Item{Target: t, Server: srv.Name, Reason: why})
	}
	slices.SortStableFunc(out, func(a, b Item) int { return compareTargets(a.Target, b.Target) })
	return out
}

// snap is a managed snapshot with its parsed target.
type snap struct {
	img *hcloud.Image
	t   build.Target
	v   talos.Version
}

// prune applies the retention policy per architecture and schematic that
// we build: keep the snapshots of tracked versions and of the KeepOthers
// newest other versions. Whatever the policy says, it never deletes a
// snapshot that is not ours, one still being created, one of a group we do
// not build (another deployment's, or a schematic or architecture no
// longer configured: its snapshots stay until deleted by hand) or the most
// recently created snapshot of a group (what consumers pick), nor, while a
// tracked target has no snapshot yet, the snapshot of its line it
// replaces. With nothing tracked it prunes nothing: an empty release list
// is likelier a mistake than the truth.
func prune(s State, r Rules) []Resource {
	out := []Resource{}
	if len(s.Tracked) == 0 {
		return out
	}
	tracked := map[string]bool{}
	for _, v := range s.Tracked {
		tracked[v.String()] = true
	}
	groups := map[[2]string][]snap{}
	for _, img := range s.Snapshots {
		t, ok := ours(img.Labels, r.Cluster)
		if !ok || !build.Published(img) || !r.builds(t) {
			continue
		}
		v, _ := talos.ParseVersion(t.Version) // valid: ours checked it
		k := [2]string{t.Arch, t.Schematic}
		groups[k] = append(groups[k], snap{img: img, t: t, v: v})
	}
	for _, g := range groups {
		// Highest version first, then most recently created.
		slices.SortFunc(g, func(a, b snap) int {
			return cmp.Or(b.v.Compare(a.v), b.img.Created.Compare(a.img.Created), cmp.Compare(b.img.ID, a.img.ID))
		})
		keep := map[string]bool{}
		var others []string
		for _, sn := range g {
			if v := sn.t.Version; !tracked[v] && !slices.Contains(others, v) {
				others = append(others, v)
			}
		}
		for _, v := range others[:min(len(others), r.KeepOthers)] {
			keep[v] = true
		}
		for _, v := range standIns(g, s.Tracked, tracked) {
			keep[v] = true
		}
		latest := slices.MaxFunc(g, func(a, b snap) int {
			return cmp.Or(a.img.Created.Compare(b.img.Created), cmp.Compare(a.img.ID, b.img.ID))
		}).img.ID
		for _, sn := range g {
			if tracked[sn.t.Version] || keep[sn.t.Version] || sn.img.ID == latest {
				continue
			}
			t := sn.t
			out = append(out, Resource{ID: sn.img.ID, Name: sn.img.Description, Target: &t, Created: sn.img.Created,
				Reason: fmt.Sprintf("%s is not tracked nor among the RETENTION_KEEP_OTHERS=%d newest other versions of %s/%s",
					t.Version, r.KeepOthers, t.Arch, t.Schematic[:8])})
		}
	}
	return out
}

// standIns returns, for each tracked target of the group without a
// snapshot yet, the highest older version of its line that the group has:
// consumers of the line use it until the new one is built.
func standIns(g []snap, trackedVersions []talos.Version, tracked map[string]bool) []string {
	var out []string
	for _, tv := range trackedVersions {
		if slices.ContainsFunc(g, func(sn snap) bool { return sn.v.Compare(tv) == 0 }) {
			continue
		}
		for _, sn := range g { // highest version first
			if !tracked[sn.t.Version] && sn.v.Line() == tv.Line() && sn.v.Compare(tv) < 0 {
				out = append(out, sn.t.Version)
				break
			}
		}
	}
	return out
}

// ours returns the target of a resource that carries our management label,
// the configured cluster's label and a valid target.
func ours(labels map[string]string, cluster string) (build.Target, bool) {
	if !mine(labels, cluster) {
		return build.Target{}, false
	}
	return build.TargetFromLabels(labels)
}

// leaseName is the name of the lease that covers a server: the build
// server's own, which its boot server shares.
func leaseName(srv *hcloud.Server, cluster string) string {
	if t, ok := build.TargetFromLabels(srv.Labels); ok && srv.Labels[label.Role] == label.RoleBootCheck {
		return t.Name(cluster)
	}
	return srv.Name
}

// mine tells whether a resource carries our management label and the
// configured cluster's label (none when no cluster is configured).
func mine(labels map[string]string, cluster string) bool {
	return label.IsManaged(labels) && labels[label.Cluster] == cluster
}

// leased tells whether lease key k (nil: none) is held at now.
func leased(k *hcloud.SSHKey, now time.Time) bool {
	return k != nil && build.LeaseActive(k.Labels, now)
}

// builds tells whether t is of a group the rules build.
func (r Rules) builds(t build.Target) bool {
	return slices.Contains(r.Architectures, t.Arch) && slices.Contains(r.Schematics, t.Schematic)
}

func targetOf(labels map[string]string) *build.Target {
	if t, ok := build.TargetFromLabels(labels); ok {
		return &t
	}
	return nil
}

// compareTargets orders targets oldest version first.
func compareTargets(a, b build.Target) int {
	va, _ := talos.ParseVersion(a.Version)
	vb, _ := talos.ParseVersion(b.Version)
	return cmp.Or(va.Compare(vb), cmp.Compare(a.Schematic, b.Schematic), cmp.Compare(a.Arch, b.Arch))
}

func roundAge(d time.Duration) time.Duration {
	if d > time.Minute {
		return d.Round(time.Minute)
	}
	return d.Round(time.Second)
}
