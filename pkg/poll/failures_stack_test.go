package poll_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/function"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/poll"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// clock is a shifted clock the Poller and a Builder share: hours pass in
// a moment.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

// builderOn returns a Builder of the deployment's configuration on clock c. Its
// snapshots, which the local cloud stamps with the real time, would look
// hours old to it: they never time out.
func (d *deployment) builderOn(c *clock, change func(*build.Options)) *build.Builder {
	o := function.BuildOptions(d.cfg, d.cfg.Schematics())
	o.SnapshotTimeout = 1000 * time.Hour
	if change != nil {
		change(&o)
	}
	return build.New(build.Deps{Cloud: d.cloud, Factory: d.factory, Logger: d.log, Now: c.now}, o)
}

// results runs the requests to their end with b and returns their results.
// The context has no deadline: the Builder measures its time left on its
// own (shifted) clock.
func results(t *testing.T, b *build.Builder, reqs []build.Request) []build.Result {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer time.AfterFunc(2*time.Minute, cancel).Stop()
	var out []build.Result
	for _, r := range reqs {
		resp, _ := b.RunUntilDone(ctx, r)
		out = append(out, resp.Results...)
	}
	return out
}

func codes(rs []build.Result) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.Version+"/"+r.Arch+" "+string(r.State)+" "+r.Code)
	}
	slices.Sort(out)
	return out
}

func failing(fs []poll.Failing) []string {
	out := []string{}
	for _, f := range fs {
		out = append(out, f.Version+"/"+f.Arch+" "+f.Error)
	}
	return out
}

// TestFailingTargetIsParked: with no capacity for the small types anywhere
// every build fails at its server step. The Poller retries a target after
// 1h, 2h and 4h, polls in between start nothing, and the fourth failure
// parks it: the next poll lists it parked and starts the next version of
// its group instead. A request without force is refused; one with force
// builds once capacity is back and leaves no record; a configuration change
// unparks the other target.
func TestFailingTargetIsParked(t *testing.T) {
	t.Parallel()
	var full []fakehcloud.Placement
	for _, loc := range []string{"fsn1", "nbg1", "hel1"} {
		full = append(full, fakehcloud.Placement{ServerType: "cx23", Location: loc}, fakehcloud.Placement{ServerType: "cax11", Location: loc})
	}
	d := newDeployment(t, stack.Options{Faults: fakehcloud.Faults{Unavailable: full}}, nil)
	c := &clock{}
	d.now = c.now
	b := d.builderOn(c, nil)
	older := []string{"v1.12.8/amd64", "v1.12.8/arm64"}
	all := []string{"v1.12.8/amd64", "v1.12.8/arm64", "v1.13.9/amd64", "v1.13.9/arm64"}

	for i, wait := range []time.Duration{0, time.Hour + time.Minute, 2*time.Hour + time.Minute, 4*time.Hour + time.Minute} {
		c.advance(wait)
		rep := d.poll(false)
		check(t, fmt.Sprintf("builds of attempt %d", i+1), targets(rep.Builds), all)
		check(t, fmt.Sprintf("results of attempt %d", i+1), codes(results(t, b, d.rec.take())),
			[]string{"v1.12.8/amd64 failed no-capacity", "v1.12.8/arm64 failed no-capacity"})
		if i == 3 {
			break
		}
		// Half-way through the backoff nothing starts.
		c.advance(wait/2 + 10*time.Minute)
		quiet := d.poll(false)
		check(t, "builds while backed off", targets(quiet.Builds), []string{})
		check(t, "backed off", failing(quiet.BackedOff), []string{"v1.12.8/amd64 no-capacity", "v1.12.8/arm64 no-capacity"})
		c.advance(-(wait/2 + 10*time.Minute))
	}

	c.advance(25 * time.Hour)
	creates := d.st.Cloud.CountRequests(http.MethodPost, "/v1/servers")
	rep := d.poll(false)
	check(t, "parked", failing(rep.Parked), []string{"v1.12.8/amd64 no-capacity", "v1.12.8/arm64 no-capacity"})
	check(t, "deferred after parking", targets(rep.Deferred), older)
	checkReasons(t, "deferred after parking", rep.Deferred, "parked after 4 failed build(s)")
	check(t, "builds after parking", targets(rep.Builds), []string{"v1.13.9/amd64", "v1.13.9/arm64"})
	d.rec.take()

	older0 := build.Request{Version: "v1.12.8", Arch: "amd64", Schematic: talos.QemuGuestAgentSchematic}
	check(t, "a request without force", codes(results(t, b, []build.Request{older0})), []string{"v1.12.8/amd64 failed parked"})
	if n := d.st.Cloud.CountRequests(http.MethodPost, "/v1/servers"); n != creates {
		t.Errorf("a refused request tried %d server creates", n-creates)
	}
	d.st.Cloud.SetFaults(fakehcloud.Faults{})
	forced := older0
	forced.Force = true
	check(t, "a forced request", codes(results(t, b, []build.Request{forced})), []string{"v1.12.8/amd64 done "})
	check(t, "snapshots", d.snapshots(), []string{"v1.12.8/amd64"})

	// Another location list is another configuration: the arm64 record no
	// longer applies.
	d.cfg.Locations = []string{"fsn1", "nbg1"}
	rep = d.poll(true)
	check(t, "parked after the change", failing(rep.Parked), []string{})
	check(t, "deleted records", len(rep.DeleteRecords), 1)
	check(t, "builds after the change", targets(rep.Builds), []string{"v1.12.8/arm64", "v1.13.9/amd64", "v1.13.9/arm64"})
	var records []string
	for _, k := range d.st.Cloud.SSHKeys() {
		if k.Labels[label.Role] == label.RoleFailure {
			records = append(records, k.Labels[label.TalosVersion]+"/"+k.Labels[label.Arch])
		}
	}
	check(t, "records", records, []string{"v1.12.8/arm64"})
}

// TestStuckSnapshotIsFailedByThePoller: a build's invocation chain broke
// while its snapshot was being created, and the snapshot stays "creating"
// (infra/fakehcloud Faults.SlowImages). Past SNAPSHOT_TIMEOUT the Poller fails
// it: it cannot be deleted while its action runs, so its consumer labels
// are taken away, and the failure is recorded. The target backs off instead
// of counting as busy forever; a later poll deletes the stripped snapshot,
// and after the backoff the build is re-driven and completes.
func TestStuckSnapshotIsFailedByThePoller(t *testing.T) {
	t.Parallel()
	const slow = 4 * time.Second
	d := newDeployment(t, stack.Options{Faults: fakehcloud.Faults{SlowImages: 1, SlowImageFor: slow}}, nil)
	c := &clock{}
	d.now = c.now
	b := d.builderOn(c, func(o *build.Options) { o.SnapshotWait = 500 * time.Millisecond })
	stuck := build.Target{Version: "v1.12.8", Arch: "amd64", Schematic: talos.QemuGuestAgentSchematic}
	// One invocation, nothing carrying it on: it hands over at wait.
	if res := b.Build(context.Background(), stuck, build.Request{}); res.State != build.InProgress || res.Step != build.StepWait {
		t.Fatalf("the broken build: %+v", res)
	}
	snapshotTaken := time.Now()

	c.advance(31 * time.Minute) // past SNAPSHOT_TIMEOUT (30m)
	rep := d.poll(false)
	if len(rep.FailSnapshots) != 1 || rep.FailSnapshots[0].Target == nil || *rep.FailSnapshots[0].Target != stuck ||
		!strings.Contains(rep.FailSnapshots[0].Reason, "past SNAPSHOT_TIMEOUT") || rep.FailSnapshots[0].Failures != 1 {
		t.Fatalf("failed snapshots %+v", rep.FailSnapshots)
	}
	check(t, "backed off", failing(rep.BackedOff), []string{"v1.12.8/amd64 snapshot-timeout"})
	check(t, "redrives", targets(rep.Redrives), []string{})
	check(t, "builds", targets(rep.Builds), []string{"v1.12.8/arm64", "v1.13.9/arm64"})
	check(t, "deferred", targets(rep.Deferred), []string{"v1.12.8/amd64", "v1.13.9/amd64"})
	checkReasons(t, "deferred", rep.Deferred, "backed off", "oldest version first")
	d.rec.take()
	imgs := d.st.Cloud.Images()
	for _, img := range imgs {
		if img.Type == "snapshot" && (img.Labels[label.OS] != "" || img.Labels[label.TalosVersion] != "") {
			t.Errorf("the failed snapshot keeps consumer labels: %v", img.Labels)
		}
	}

	time.Sleep(time.Until(snapshotTaken.Add(slow + 500*time.Millisecond))) // its action ends
	rep = d.poll(false)
	if len(rep.FailSnapshots) != 1 || rep.FailSnapshots[0].Failures != 0 {
		t.Errorf("the stripped snapshot is not deleted: %+v", rep.FailSnapshots)
	}
	check(t, "snapshots after the stripped one is deleted", d.snapshots(), []string{})
	d.rec.take()

	c.advance(time.Hour + time.Minute)
	rep = d.poll(false)
	check(t, "redrives after the backoff", targets(rep.Redrives), []string{"v1.12.8/amd64"})
	reqs := d.rec.take()
	var redrive []build.Request
	for _, r := range reqs {
		if r.Version == stuck.Version && r.Arch == stuck.Arch {
			redrive = append(redrive, r)
		}
	}
	check(t, "the re-driven build", codes(results(t, b, redrive)), []string{"v1.12.8/amd64 done "})
	check(t, "snapshots", d.snapshots(), []string{"v1.12.8/amd64"})
	if servers, keys := d.leftovers(); len(servers)+len(keys) != 0 {
		t.Errorf("left: servers %+v, keys (records included) %+v", servers, keys)
	}
}
