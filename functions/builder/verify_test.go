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

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakerescue"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack/stacktest"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/announce"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
)

// The boot check on the local world: a server created from a snapshot
// boots its disk, and a Talos image of its architecture answers on port
// 50000 after the Talos boot delay (infra/README.md, a Talos node booted
// from a snapshot).

// consumerSelectors are what consumers select Talos snapshots with.
var consumerSelectors = []string{"os=talos", "os=talos,talos_version=v1.13.9"}

// serversCreated returns the IDs of the servers the world created: build
// servers from a system image, boot servers from a snapshot's disk.
func (w *world) serversCreated() (buildServers, bootServers []int64) {
	events := w.Stack.Machines.Events()
	for _, ev := range events {
		if ev.Kind != fakerescue.EventCreate {
			continue
		}
		if slices.ContainsFunc(events, func(p fakerescue.Event) bool { return p.Server == ev.Server && p.Kind == fakerescue.EventProvision }) {
			bootServers = append(bootServers, ev.Server)
		} else {
			buildServers = append(buildServers, ev.Server)
		}
	}
	return buildServers, bootServers
}

// machineEvent returns when the world first logged kind for server id.
func (w *world) machineEvent(id int64, kind fakerescue.EventKind) (time.Time, bool) {
	for _, ev := range w.Stack.Machines.Events() {
		if ev.Server == id && ev.Kind == kind {
			return ev.Time, true
		}
	}
	return time.Time{}, false
}

// loggedAt returns when a finished Builder invocation logged message.
func (w *world) loggedAt(message string) (time.Time, bool) {
	for _, inv := range w.Lambda.Invocations("builder") {
		for _, l := range inv.Logs {
			var line struct {
				Timestamp time.Time `json:"timestamp"`
				Message   string    `json:"message"`
			}
			if i := strings.IndexByte(l, '{'); i >= 0 && json.Unmarshal([]byte(l[i:]), &line) == nil && line.Message == message {
				return line.Timestamp, true
			}
		}
	}
	return time.Time{}, false
}

// A watch is a consumer polling during a build, every 50 ms: what it
// selects with each of consumerSelectors through the API, and how the
// project's snapshots look meanwhile.
type watch struct {
	stop, done chan struct{}

	mu sync.Mutex
	// selected: per selector, when each snapshot was first selected.
	selected map[string]map[int64]time.Time
	// seen: every state of a snapshot looked at, in order.
	seen []fakehcloud.Image
}

func (w *world) watchConsumers() *watch {
	c := &watch{stop: make(chan struct{}), done: make(chan struct{}), selected: map[string]map[int64]time.Time{}}
	api := stacktest.Cloud(w.Stack)
	go func() {
		defer close(c.done)
		for {
			select {
			case <-c.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			snaps := w.snapshots()
			c.mu.Lock()
			c.seen = append(c.seen, snaps...)
			c.mu.Unlock()
			for _, sel := range consumerSelectors {
				imgs, err := api.Snapshots(context.Background(), sel)
				at := time.Now()
				if err != nil {
					continue // a consumer retries; the build's own requests are what is tested
				}
				c.mu.Lock()
				for _, img := range imgs {
					if _, ok := c.selected[sel][img.ID]; !ok {
						if c.selected[sel] == nil {
							c.selected[sel] = map[int64]time.Time{}
						}
						c.selected[sel][img.ID] = at
					}
				}
				c.mu.Unlock()
			}
		}
	}()
	return c
}

// end stops the watch.
func (c *watch) end() {
	close(c.stop)
	<-c.done
}

// TestVerifiedThenPublished: a good build boots a server from its
// snapshot and publishes the snapshot only once the Talos API answered:
// until then no consumer selects it. Published, it carries every contract
// label and no pending mark, and its created time did not change; no boot
// server, build server or root password is left, and one event tells.
func TestVerifiedThenPublished(t *testing.T) {
	w := newWorld(t, setup{})
	w.Stack.Machines.SetTalosBootDelay(time.Second) // a window a consumer polls in many times
	c := w.watchConsumers()
	resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
	c.end()
	if ferr != "" || resp.Results[0].State != build.Done {
		t.Fatalf("%+v %s", resp, ferr)
	}
	res := resp.Results[0]
	w.checkDone(target("amd64"))

	builds, boots := w.serversCreated()
	if len(builds) != 1 || len(boots) != 1 {
		t.Fatalf("created build servers %v and boot servers %v, want one each", builds, boots)
	}
	created, _ := w.machineEvent(boots[0], fakerescue.EventCreate)
	up, ok := w.machineEvent(boots[0], fakerescue.EventTalos)
	booted, logged := w.loggedAt("snapshot booted: the Talos API answers")
	if !ok || !logged {
		t.Fatalf("Talos API of the boot server up: %v; the Builder logged its boot: %v", ok, logged)
	}
	t.Logf("boot server created %s after the build started, Talos API up %s later, logged booted %s later",
		created.Sub(w.Lambda.Invocations("builder")[0].Start).Round(time.Millisecond), up.Sub(created).Round(time.Millisecond),
		booted.Sub(up).Round(time.Millisecond))
	for _, sel := range consumerSelectors {
		first, ok := c.selected[sel][res.SnapshotID]
		if !ok {
			t.Errorf("%s: the consumer never selected snapshot %d", sel, res.SnapshotID)
			continue
		}
		if !first.After(up) || !first.After(booted) || !first.After(created) {
			t.Errorf("%s selected snapshot %d at %s: before its boot server was created (%s), booted (%s) or the Builder saw it boot (%s)",
				sel, res.SnapshotID, first.Format(time.StampMicro), created.Format(time.StampMicro), up.Format(time.StampMicro),
				booted.Format(time.StampMicro))
		}
	}

	// While the consumer could not select it, the snapshot was there,
	// pending; published, it has the pending labels without the mark and
	// with the consumers' own.
	var pending *fakehcloud.Image
	for _, img := range c.seen {
		if img.ID == res.SnapshotID && img.Status == "available" && img.Labels["hcloud-k8s.io/pending"] == "verify" {
			pending = &img
			break
		}
	}
	if pending == nil {
		t.Fatal("the snapshot was never seen available and pending")
	}
	img, _ := w.Stack.Cloud.Image(res.SnapshotID)
	want := maps.Clone(pending.Labels)
	delete(want, "hcloud-k8s.io/pending")
	want["os"], want["version"] = "talos", "v1.13.9"
	if !maps.Equal(img.Labels, want) {
		t.Errorf("published labels %v, want %v", img.Labels, want)
	}
	if !img.Created.Equal(pending.Created) {
		t.Errorf("created %s, was %s while pending", img.Created, pending.Created)
	}
	detail(t, w.Stack.Events, nil, announce.SnapshotAvailable)
}

// TestUnbootableSnapshotIsDiscarded: a snapshot whose disk does not boot
// (Faults.CorruptImages) is never selected by a consumer: its boot server
// waits VERIFY_TIMEOUT for the Talos API, then the snapshot is deleted and
// the build fails for good, recorded and announced.
func TestUnbootableSnapshotIsDiscarded(t *testing.T) {
	const timeout = 5 * time.Second
	w := newWorld(t, setup{stack: stack.Options{Faults: fakehcloud.Faults{CorruptImages: 1}},
		env: map[string]string{"VERIFY_TIMEOUT": timeout.String()}})
	c := w.watchConsumers()
	start := time.Now()
	res := w.failure(`{"version":"v1.13.9","arch":"amd64"}`)
	took := time.Since(start)
	c.end()
	if took < timeout {
		t.Errorf("failed after %s, before VERIFY_TIMEOUT %s", took, timeout)
	}
	if res.Code != "boot-check" || res.Step != build.StepVerify || !strings.Contains(res.Error, "did not boot") ||
		!strings.Contains(res.Error, "VERIFY_TIMEOUT") {
		t.Errorf("result %+v, want boot-check at verify", res)
	}
	for _, sel := range consumerSelectors {
		if len(c.selected[sel]) != 0 {
			t.Errorf("%s selected snapshots %v", sel, c.selected[sel])
		}
	}
	i := slices.IndexFunc(c.seen, func(img fakehcloud.Image) bool {
		return img.Status == "available" && img.Labels["hcloud-k8s.io/pending"] == "verify"
	})
	if i < 0 {
		t.Fatal("the snapshot was never seen available and pending")
	}
	if s := w.snapshots(); len(s) != 0 {
		t.Errorf("snapshots left: %+v", s)
	}
	_, boots := w.serversCreated()
	if len(boots) != 1 {
		t.Fatalf("boot servers %v, want one", boots)
	}
	// Its disk was booted and found unbootable, and the server deleted
	// once the wait ended.
	noBoot, ok := w.machineEvent(boots[0], fakerescue.EventNoBoot)
	deleted, _ := w.machineEvent(boots[0], fakerescue.EventDelete)
	if !ok || deleted.Sub(noBoot) < timeout-time.Second { // less its create and power-on
		t.Errorf("boot server: no-boot logged %v, deleted %s later; want a wait of VERIFY_TIMEOUT %s", ok, deleted.Sub(noBoot), timeout)
	}
	w.checkNothingLeft("v1.13.9/amd64 boot-check")
	var got announce.Failed
	detail(t, w.Stack.Events, &got, announce.BuildFailed)
	if got.Code != "boot-check" || got.Step != "verify" || got.Error != res.Error {
		t.Errorf("event %+v, want the result's %+v", got, res)
	}
}

// TestDuplicatesVerifyOnce: requests for a build that is checking its boot
// answer in progress (or done) and boot nothing themselves.
func TestDuplicatesVerifyOnce(t *testing.T) {
	w := newWorld(t, setup{})
	w.Stack.Machines.SetTalosBootDelay(3 * time.Second)
	w.invokeAsync(`{"version":"v1.13.9","arch":"amd64"}`)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, boots := w.serversCreated(); len(boots) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no boot server")
		}
	}
	var wg sync.WaitGroup
	states := make([]build.State, 2)
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
	w.WaitIdle()
	for _, s := range states {
		if s != build.InProgress && s != build.Done {
			t.Errorf("duplicates answered %v, want in_progress or done", states)
		}
	}
	if resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`); ferr != "" || resp.Results[0].State != build.Done {
		t.Fatalf("after: %+v %s", resp, ferr)
	}
	if builds, boots := w.serversCreated(); len(builds) != 1 || len(boots) != 1 {
		t.Errorf("created build servers %v and boot servers %v, want one each", builds, boots)
	}
	w.checkDone(target("amd64"))
	detail(t, w.Stack.Events, nil, announce.SnapshotAvailable)
}

// TestVerifyBootOff: with VERIFY_BOOT=false no server boots the snapshot,
// which carries the consumer labels from its creation.
func TestVerifyBootOff(t *testing.T) {
	w := newWorld(t, setup{env: map[string]string{"VERIFY_BOOT": "false"},
		stack: stack.Options{ActionDurations: map[string]time.Duration{"create_image": 500 * time.Millisecond}}})
	c := w.watchConsumers()
	resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
	c.end()
	if ferr != "" || resp.Results[0].State != build.Done {
		t.Fatalf("%+v %s", resp, ferr)
	}
	w.checkDone(target("amd64"))
	if builds, boots := w.serversCreated(); len(builds) != 1 || len(boots) != 0 {
		t.Errorf("created build servers %v and boot servers %v, want one build server only", builds, boots)
	}
	if n := w.countRequests("POST", "/v1/servers"); n != 1 {
		t.Errorf("%d server creations, want 1", n)
	}
	if n := w.countRequests("PUT", "/v1/images/*"); n != 0 {
		t.Errorf("%d image updates, want none: the labels are the snapshot's from the start", n)
	}
	if w.logged("snapshot booted") {
		t.Error("the Builder checked a boot")
	}
	if !slices.ContainsFunc(c.seen, func(img fakehcloud.Image) bool { return img.Status == "creating" }) {
		t.Fatal("the snapshot was never seen being created")
	}
	for _, img := range c.seen {
		if img.Labels["os"] != "talos" || img.Labels["hcloud-k8s.io/pending"] != "" {
			t.Errorf("snapshot %d (%s) with labels %v, want the consumer labels from the start", img.ID, img.Status, img.Labels)
		}
	}
	detail(t, w.Stack.Events, nil, announce.SnapshotAvailable)
}
