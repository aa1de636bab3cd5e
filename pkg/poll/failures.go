package poll

// Failure memory in the plan. A build that failed deterministically left a
// record (an SSH key, pkg/build failure.go) saying how often the target
// failed, why, and when it may be tried again. The Poller lists the records
// with one request and:
//   - plans no build or re-drive of a target its record holds: backed off
//     until the record's next attempt, or parked after FAILURE_LIMIT
//     failures. A backed-off target also holds the newer versions of its
//     architecture and schematic, as a running build does (oldest first,
//     so that the most recent snapshot is the highest version); a parked
//     one gives up its place;
//   - fails a managed snapshot that nobody watches (no live lease on its
//     build server) and that stayed "creating" past SNAPSHOT_TIMEOUT or
//     ended in another status: it is deleted, or stripped of its consumer
//     labels while it refuses (build.DiscardSnapshot), and the failure is
//     recorded, so that its group no longer counts as busy. Snapshots left
//     stripped are deleted by a later poll;
//   - deletes records that no longer apply: of targets no longer tracked,
//     or made under another configuration.

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// FailureRules are the planner's failure settings; config.Config supplies
// them.
type FailureRules struct {
	Failures build.FailurePolicy
	// SnapshotTimeout is how long a snapshot may be "creating"; zero: no
	// snapshot counts as stuck.
	SnapshotTimeout time.Duration
}

// FailurePlan is the part of a plan the failure records make.
type FailurePlan struct {
	// BackedOff and Parked are the targets failure records hold.
	BackedOff []Failing `json:"backed_off"`
	Parked    []Failing `json:"parked"`
	// FailSnapshots are snapshots to discard as failed, recording the
	// failure of their target, and left-over ones to delete.
	FailSnapshots []FailedSnapshot `json:"failed_snapshots"`
	// DeleteRecords are failure records that no longer apply.
	DeleteRecords []Resource `json:"deleted_failure_records"`
}

// actions counts what the executor changes.
func (p FailurePlan) actions() int { return len(p.FailSnapshots) + len(p.DeleteRecords) }

// Failing is a target a failure record holds.
type Failing struct {
	build.Target
	Failures    int        `json:"failures"`
	Error       string     `json:"error"` // code of the last failure (build.Classify)
	Step        build.Step `json:"step,omitempty"`
	LastFailure time.Time  `json:"last_failure"`
	NextAttempt *time.Time `json:"next_attempt,omitempty"` // none when parked
	Reason      string     `json:"reason"`
}

// FailedSnapshot is a snapshot to discard.
type FailedSnapshot struct {
	Resource
	// Failures is the count its target's record gets; 0 for a snapshot
	// left stripped by an earlier discard, which is only deleted.
	Failures int `json:"failures,omitempty"`
	img      *hcloud.Image
	why      string // the failed label (build.DiscardSnapshot)
	record   *build.FailureRecord
}

// failureOrigin names the Poller as the request behind a failure it
// records.
const failureOrigin = "poller"

// holdFailures is NewPlan's failure step (see the file comment). It fills
// p's FailurePlan, takes held targets out of p.Redrives, and returns the
// state the rest of the plan works on: without the failed snapshots, and
// with the held targets deferred like those the factory does not serve.
func (p *Plan) holdFailures(s State, r Rules, collected map[int64]bool) State {
	fp := FailurePlan{BackedOff: []Failing{}, Parked: []Failing{}, FailSnapshots: []FailedSnapshot{}, DeleteRecords: []Resource{}}
	pol := r.Failures
	wanted := map[build.Target]bool{}
	for _, t := range desired(s.Tracked, r) {
		wanted[t] = true
	}
	// A success deletes its target's record; one whose deletion failed is
	// recognised by a snapshot made after the failure.
	built := map[build.Target]time.Time{}
	for _, img := range s.Snapshots {
		if t, ok := ours(img.Labels, r.Cluster); ok && build.Published(img) && img.Created.After(built[t]) {
			built[t] = img.Created
		}
	}
	records := map[build.Target]build.FailureRecord{}
	for _, k := range s.Records {
		rec, ok := build.ParseFailureRecord(k)
		if !ok || rec.Cluster != r.Cluster {
			continue
		}
		t := rec.Target
		var why string
		switch {
		case !pol.Applies(rec):
			why = "recorded under another configuration; the target may build now"
		case len(s.Tracked) > 0 && !wanted[t]: // nothing tracked: likelier a mistake than the truth
			why = fmt.Sprintf("%s is not tracked (or its architecture or schematic not configured)", t)
		case built[t].After(rec.At):
			why = "older than the target's snapshot: it was built since"
		default:
			records[t] = rec
			continue
		}
		fp.DeleteRecords = append(fp.DeleteRecords, Resource{ID: k.ID, Name: k.Name, Target: &t, Created: k.Created,
			Reason: "failure record " + why})
	}

	// Snapshots that failed with nobody watching them.
	servers := map[int64]*hcloud.Server{}
	for _, srv := range s.Servers {
		servers[srv.ID] = srv
	}
	leases := map[string]bool{}
	for _, k := range s.Keys {
		leases[k.Name] = build.LeaseActive(k.Labels, s.Now)
	}
	watched := func(img *hcloud.Image) bool {
		id, ok := build.SnapshotServer(img.Labels)
		srv := servers[id]
		return ok && srv != nil && !collected[id] && leases[srv.Name]
	}
	kept := make([]*hcloud.Image, 0, len(s.Snapshots))
	for _, img := range s.Snapshots {
		fs, failed := failedSnapshot(img, s.Now, r)
		if !failed || watched(img) {
			kept = append(kept, img)
			continue
		}
		if fs.why != "" && fs.Target != nil && (len(s.Tracked) == 0 || wanted[*fs.Target]) {
			t := *fs.Target
			var prev *build.FailureRecord
			if rec, ok := records[t]; ok {
				prev = &rec
			}
			rec := pol.Record(prev, t, r.Cluster, "snapshot-"+fs.why, build.StepWait, failureOrigin, s.Now)
			records[t] = rec
			fs.record, fs.Failures = &rec, rec.Failures
		}
		fp.FailSnapshots = append(fp.FailSnapshots, fs)
	}
	s.Snapshots = kept

	// Held targets, oldest first, so that a backed-off one holds the newer
	// versions of its group.
	held := map[build.Target]string{}
	for _, t := range slices.SortedFunc(maps.Keys(records), compareTargets) {
		rec := records[t]
		if !pol.Holds(rec, s.Now) {
			continue
		}
		f := Failing{Target: t, Failures: rec.Failures, Error: rec.Code, Step: rec.Step, LastFailure: rec.At,
			Reason: pol.Why(rec)}
		held[t] = f.Reason
		if pol.Parked(rec) {
			fp.Parked = append(fp.Parked, f)
			continue
		}
		next := rec.Next
		f.NextAttempt = &next
		fp.BackedOff = append(fp.BackedOff, f)
		v, _ := talos.ParseVersion(t.Version) // valid: the record parsed
		for _, later := range desired(s.Tracked, r) {
			lv, _ := talos.ParseVersion(later.Version)
			if later.Arch == t.Arch && later.Schematic == t.Schematic && lv.Compare(v) > 0 && held[later] == "" {
				held[later] = fmt.Sprintf("%s of %s/%s is backed off after failing: one build at a time per architecture and "+
					"schematic, oldest version first, so that the most recent snapshot is the highest version", t.Version,
					t.Arch, t.Schematic[:8])
			}
		}
	}

	redrives := p.Redrives[:0:0]
	for _, it := range p.Redrives {
		if why, ok := held[it.Target]; ok {
			p.Deferred = append(p.Deferred, Item{Target: it.Target, Server: it.Server,
				Reason: "its build server is not re-driven: " + why})
			continue
		}
		redrives = append(redrives, it)
	}
	p.Redrives = redrives

	unserved := maps.Clone(s.Unserved)
	if unserved == nil {
		unserved = map[build.Target]string{}
	}
	for t, why := range held {
		if _, ok := unserved[t]; !ok {
			unserved[t] = why
		}
	}
	s.Unserved = unserved
	slices.SortFunc(fp.FailSnapshots, func(a, b FailedSnapshot) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(fp.DeleteRecords, func(a, b Resource) int { return cmp.Compare(a.ID, b.ID) })
	p.FailurePlan = fp
	return s
}

// failedSnapshot tells whether img is a managed snapshot of ours that
// failed: still creating, or waiting for its boot check, past
// SNAPSHOT_TIMEOUT (the caller spares those a live build watches), or in
// a status other than
// creating and available (Hetzner's failed images are "unavailable"), or
// left marked failed by an earlier discard that could not delete it.
func failedSnapshot(img *hcloud.Image, now time.Time, r Rules) (FailedSnapshot, bool) {
	fs := FailedSnapshot{Resource: Resource{ID: img.ID, Name: img.Description, Created: img.Created}, img: img}
	if why := build.FailedSnapshot(img.Labels); why != "" {
		if !label.IsManaged(img.Labels) || img.Labels[label.Cluster] != r.Cluster {
			return fs, false
		}
		fs.Reason = fmt.Sprintf("snapshot marked failed (%s) and left when it could not be deleted", why)
		return fs, true
	}
	t, ok := ours(img.Labels, r.Cluster)
	if !ok {
		return fs, false
	}
	fs.Target = &t
	age := now.Sub(img.Created)
	switch {
	case img.Status == hcloud.ImageStatusAvailable && build.Pending(img):
		if r.SnapshotTimeout <= 0 || age <= r.SnapshotTimeout {
			return fs, false
		}
		fs.why = "unverified"
		fs.Reason = fmt.Sprintf("snapshot waits for its boot check for %s, past SNAPSHOT_TIMEOUT %s, and no build checks it",
			roundAge(age), r.SnapshotTimeout)
	case img.Status == hcloud.ImageStatusAvailable:
		return fs, false
	case img.Status != hcloud.ImageStatusCreating:
		fs.why = "status-" + string(img.Status)
		fs.Reason = fmt.Sprintf("snapshot is %s: its creation failed", img.Status)
	case r.SnapshotTimeout > 0 && age > r.SnapshotTimeout:
		fs.why = "timeout"
		fs.Reason = fmt.Sprintf("snapshot is creating for %s, past SNAPSHOT_TIMEOUT %s, and no build watches it",
			roundAge(age), r.SnapshotTimeout)
	default:
		return fs, false
	}
	return fs, true
}

// applyFailures carries out the failure plan: it discards failed snapshots
// and records their targets' failures, and deletes records that no longer
// apply. It returns the failures of these actions.
func (e Executor) applyFailures(ctx context.Context, p *FailurePlan, log *slog.Logger) []error {
	var errs []error
	for i := range p.FailSnapshots {
		fs := &p.FailSnapshots[i]
		why := cmp.Or(fs.why, build.FailedSnapshot(fs.img.Labels))
		deleted, err := build.DiscardSnapshot(ctx, e.Cloud, fs.img, why)
		switch {
		case err != nil && !deleted && cloud.IsLocked(err):
			// Its action still runs: stripped now, deleted by a later poll.
			fs.Error = err.Error()
			log.Warn("failed snapshot cannot be deleted yet", "id", fs.ID, "reason", fs.Reason, "error", err)
		case err != nil:
			fs.Error = err.Error()
			errs = append(errs, err)
			log.Error("discard failed snapshot", "id", fs.ID, "reason", fs.Reason, "deleted", deleted, "error", err)
		default:
			log.Info("deleted failed snapshot", "id", fs.ID, "reason", fs.Reason)
		}
		if fs.record == nil {
			continue
		}
		if err := build.WriteFailureRecord(ctx, e.Cloud, *fs.record); err != nil {
			fs.Error = err.Error()
			errs = append(errs, err)
			log.Error("record failure", "target", fs.record.Target.String(), "error", err)
			continue
		}
		log.Warn("failure recorded", "target", fs.record.Target.String(), "failures", fs.record.Failures,
			"code", fs.record.Code, "next_attempt", fs.record.Next)
	}
	for i := range p.DeleteRecords {
		it := &p.DeleteRecords[i]
		if err := e.Cloud.DeleteSSHKey(ctx, &hcloud.SSHKey{ID: it.ID, Name: it.Name}); err != nil {
			it.Error = err.Error()
			errs = append(errs, err)
			log.Error("delete failed", "kind", "failure_record", "id", it.ID, "name", it.Name, "error", err)
			continue
		}
		log.Info("deleted", "kind", "failure_record", "id", it.ID, "name", it.Name, "reason", it.Reason)
	}
	return errs
}
