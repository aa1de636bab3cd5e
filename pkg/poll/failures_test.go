package poll

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
)

// policy is the failure policy of these tests: the defaults (1h doubling,
// parked after 4) under configuration "cfg".
var policy = build.FailurePolicy{Config: "cfg"}

// record adds the failure record of spec: failures so far, the last failed
// at, under configuration config.
func (proj *project) record(spec string, failures int, at time.Time, config string) int64 {
	pol := policy
	pol.Config = config
	var rec build.FailureRecord
	for i := range failures {
		prev := &rec
		if i == 0 {
			prev = nil
		}
		rec = pol.Record(prev, tgt(spec), "", "download", build.StepInstall, "req", at)
	}
	k := &hcloud.SSHKey{ID: proj.id(), Name: rec.Name(), Labels: rec.Labels(), Created: at}
	proj.state.Records = append(proj.state.Records, k)
	return k.ID
}

func failingSpecs(fs []Failing) []string {
	out := []string{}
	for _, f := range fs {
		out = append(out, fmt.Sprintf("%s/%s %d %s", f.Version, f.Arch, f.Failures, f.Error))
	}
	return out
}

func withFailures(r Rules) Rules {
	r.Failures = policy
	r.SnapshotTimeout = 30 * time.Minute
	return r
}

func TestPlanHoldsFailingTargets(t *testing.T) {
	type want struct {
		builds, deferred, redrives []string
		backedOff, parked          []string
		deleted                    []int64
		why                        map[string]string // target → in the reason of its deferral
	}
	tests := []struct {
		name  string
		setup func(proj *project) want
	}{
		{"a backed-off target waits, and holds the newer versions of its group", func(proj *project) want {
			proj.record("v1.12.8/amd64", 1, now.Add(-10*time.Minute), "cfg")
			return want{builds: []string{"v1.12.8/arm64", "v1.13.9/arm64"}, deferred: []string{"v1.12.8/amd64", "v1.13.9/amd64"},
				backedOff: []string{"v1.12.8/amd64 1 download"},
				why: map[string]string{"v1.12.8/amd64": "backed off after 1 failed build(s), the last download at step install",
					"v1.13.9/amd64": "v1.12.8 of amd64/ce4c9805 is backed off after failing"}}
		}},
		{"after its backoff it is built again", func(proj *project) want {
			proj.record("v1.12.8/amd64", 2, now.Add(-2*time.Hour-time.Minute), "cfg")
			return want{builds: []string{"v1.12.8/amd64", "v1.12.8/arm64", "v1.13.9/amd64", "v1.13.9/arm64"}}
		}},
		{"a parked target gives up its place in the group", func(proj *project) want {
			proj.record("v1.12.8/amd64", 4, now.Add(-100*time.Hour), "cfg")
			return want{builds: []string{"v1.12.8/arm64", "v1.13.9/amd64", "v1.13.9/arm64"}, deferred: []string{"v1.12.8/amd64"},
				parked: []string{"v1.12.8/amd64 4 download"},
				why:    map[string]string{"v1.12.8/amd64": "parked after 4 failed build(s)"}}
		}},
		{"a record of another configuration is deleted and holds nothing", func(proj *project) want {
			id := proj.record("v1.12.8/amd64", 4, now.Add(-time.Minute), "old")
			return want{builds: []string{"v1.12.8/amd64", "v1.12.8/arm64", "v1.13.9/amd64", "v1.13.9/arm64"},
				deleted: []int64{id}}
		}},
		{"a record of a version no longer tracked is deleted", func(proj *project) want {
			proj.snap("v1.12.8/amd64", time.Hour)
			proj.snap("v1.12.8/arm64", time.Hour)
			proj.snap("v1.13.9/amd64", time.Hour)
			proj.snap("v1.13.9/arm64", time.Hour)
			id := proj.record("v1.13.8/amd64", 1, now.Add(-time.Minute), "cfg")
			return want{deleted: []int64{id}}
		}},
		{"a record older than its target's snapshot is deleted; a forced rebuild's failure holds", func(proj *project) want {
			proj.snap("v1.12.8/amd64", 5*time.Minute)
			proj.snap("v1.12.8/arm64", 2*time.Hour)
			id := proj.record("v1.12.8/amd64", 1, now.Add(-time.Hour), "cfg")
			proj.record("v1.12.8/arm64", 1, now.Add(-30*time.Minute), "cfg")
			return want{builds: []string{"v1.13.9/amd64"}, deferred: []string{"v1.13.9/arm64"}, deleted: []int64{id},
				backedOff: []string{"v1.12.8/arm64 1 download"}}
		}},
		{"the left-over server of a held target is not re-driven", func(proj *project) want {
			proj.snap("v1.12.8/amd64", time.Hour)
			proj.snap("v1.12.8/arm64", time.Hour)
			proj.record("v1.13.9/amd64", 1, now.Add(-time.Minute), "cfg")
			proj.server("v1.13.9/amd64", 5*time.Minute, "none")
			proj.server("v1.13.9/arm64", 5*time.Minute, "expired")
			return want{redrives: []string{"v1.13.9/arm64"}, deferred: []string{"v1.13.9/amd64"},
				backedOff: []string{"v1.13.9/amd64 1 download"},
				why:       map[string]string{"v1.13.9/amd64": "its build server is not re-driven: backed off"}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proj := newProject(t, "v1.12.8", "v1.13.9")
			wt := tt.setup(proj)
			p := NewPlan(proj.state, withFailures(base))
			for _, c := range []struct {
				what      string
				got, want any
			}{
				{"builds", specs(p.Builds), orEmpty(wt.builds)},
				{"deferred", specs(p.Deferred), orEmpty(wt.deferred)},
				{"redrives", specs(p.Redrives), orEmpty(wt.redrives)},
				{"backed off", failingSpecs(p.BackedOff), orEmpty(wt.backedOff)},
				{"parked", failingSpecs(p.Parked), orEmpty(wt.parked)},
				{"deleted records", ids(p.DeleteRecords), orEmpty(wt.deleted)},
			} {
				if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
					t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
				}
			}
			for spec, why := range wt.why {
				i := slices.Index(specs(p.Deferred), spec)
				if i < 0 || !strings.Contains(p.Deferred[i].Reason, why) {
					t.Errorf("no deferral of %s says %q: %+v", spec, why, p.Deferred)
				}
			}
			for _, f := range slices.Concat(p.BackedOff, p.Parked) {
				if (f.NextAttempt == nil) != slices.Contains(p.Parked, f) || f.Reason == "" || f.LastFailure.IsZero() {
					t.Errorf("%+v: next attempt, reason or last failure wrong", f)
				}
			}
			// Holding targets is no action: a poll of held targets alone
			// does nothing.
			if len(wt.builds)+len(wt.redrives)+len(wt.deleted) == 0 && !p.Empty() {
				t.Errorf("plan is not empty: %+v", p)
			}
		})
	}
}

// TestPlanFailsStuckSnapshots: a snapshot creating past SNAPSHOT_TIMEOUT,
// or unavailable, that no build watches is discarded and its failure
// recorded; its group no longer counts as busy, and the target backs off.
// One whose build holds a live lease is left to that build; one left
// marked failed is deleted.
func TestPlanFailsStuckSnapshots(t *testing.T) {
	proj := newProject(t, "v1.12.8", "v1.13.9")
	stuck := proj.snap("v1.12.8/amd64", 45*time.Minute, "creating")
	young := proj.snap("v1.12.8/arm64", 10*time.Minute, "creating")
	proj.state.Snapshots[len(proj.state.Snapshots)-1].Labels[label.Build] = "1"
	before := NewPlan(proj.state, base) // without a snapshot timeout, as before
	if got := specs(before.Builds); len(got) != 0 {
		t.Fatalf("without SNAPSHOT_TIMEOUT the stuck snapshot's group builds %v", got)
	}

	p := NewPlan(proj.state, withFailures(base))
	if got := ids(resources(p.FailSnapshots)); !slices.Equal(got, []int64{stuck}) {
		t.Fatalf("failed snapshots %v, want %d (not the young %d)", got, stuck, young)
	}
	fs := p.FailSnapshots[0]
	if fs.Failures != 1 || fs.record == nil || fs.record.Code != "snapshot-timeout" || fs.why != "timeout" ||
		!strings.Contains(fs.Reason, "past SNAPSHOT_TIMEOUT 30m0s") {
		t.Errorf("failed snapshot %+v, record %+v", fs, fs.record)
	}
	if got := failingSpecs(p.BackedOff); !slices.Equal(got, []string{"v1.12.8/amd64 1 snapshot-timeout"}) {
		t.Errorf("backed off %v", got)
	}
	if got := specs(p.Deferred); !slices.Equal(got, []string{"v1.12.8/amd64", "v1.13.9/amd64", "v1.13.9/arm64"}) {
		t.Errorf("deferred %v", got)
	}
	if p.Empty() {
		t.Error("a plan that fails a snapshot is empty")
	}

	// A counted record goes on counting.
	proj.record("v1.12.8/amd64", 2, now.Add(-5*time.Hour), "cfg")
	if p := NewPlan(proj.state, withFailures(base)); p.FailSnapshots[0].Failures != 3 {
		t.Errorf("failures after a recorded one: %d", p.FailSnapshots[0].Failures)
	}

	// Watched by a build with a live lease: its build judges it.
	proj = newProject(t, "v1.12.8", "v1.13.9")
	proj.snap("v1.12.8/amd64", 45*time.Minute, "creating")
	srv := proj.server("v1.12.8/amd64", 50*time.Minute, "active")
	proj.state.Snapshots[0].Labels[label.Build] = fmt.Sprint(srv)
	if p := NewPlan(proj.state, withFailures(base)); len(p.FailSnapshots) != 0 {
		t.Errorf("a watched snapshot was failed: %+v", p.FailSnapshots)
	}

	// Waiting for a boot check nobody runs, past SNAPSHOT_TIMEOUT; a young
	// one is its build's.
	proj = newProject(t, "v1.12.8", "v1.13.9")
	orphan := proj.snap("v1.12.8/amd64", 45*time.Minute, "pending")
	proj.snap("v1.12.8/arm64", 10*time.Minute, "pending")
	p = NewPlan(proj.state, withFailures(base))
	if got := ids(resources(p.FailSnapshots)); !slices.Equal(got, []int64{orphan}) || p.FailSnapshots[0].why != "unverified" {
		t.Errorf("failed snapshots %+v, want the orphaned pending %d", p.FailSnapshots, orphan)
	}

	// Unavailable, and a left-over marked one.
	proj = newProject(t, "v1.12.8", "v1.13.9")
	proj.snap("v1.12.8/amd64", time.Minute)
	proj.state.Snapshots[0].Status = "unavailable"
	left := &hcloud.Image{ID: proj.id(), Status: hcloud.ImageStatusAvailable, Created: now.Add(-time.Hour), Labels: map[string]string{
		label.Managed: label.ManagedValue, label.Build: "5", label.Failed: "timeout"}}
	proj.state.Snapshots = append(proj.state.Snapshots, left)
	p = NewPlan(proj.state, withFailures(base))
	if len(p.FailSnapshots) != 2 || p.FailSnapshots[0].record.Code != "snapshot-status-unavailable" ||
		p.FailSnapshots[1].record != nil || p.FailSnapshots[1].ID != left.ID {
		t.Errorf("failed snapshots %+v", p.FailSnapshots)
	}
}

func resources(fs []FailedSnapshot) []Resource {
	out := []Resource{}
	for _, f := range fs {
		out = append(out, f.Resource)
	}
	return out
}
