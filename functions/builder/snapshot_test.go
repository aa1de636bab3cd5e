package main

import (
	"fmt"
	"net/http"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
)

// The tests in this file run the Builder against what Hetzner does to the
// creates and snapshots of a build, beyond the happy path (infra/README.md
// lists each behaviour with its source).

// statuses returns the HTTP statuses the local API answered to method and
// path pattern, in order.
func (w *world) statuses(method, pattern string) []int {
	var out []int
	for _, r := range w.Stack.Cloud.Requests() {
		if ok, _ := path.Match(pattern, r.Path); ok && r.Method == method {
			out = append(out, r.Status)
		}
	}
	return out
}

// TestLostRepliesOfCreates loses the reply of the lease key's create and of
// create_image. hcloud-go retries both (a 502): the key's retry meets
// uniqueness_error and must be recognised as our own key; create_image's
// retry meets either the first one's running action (locked) or, once that
// ended, makes a second snapshot, which must not survive the build.
func TestLostRepliesOfCreates(t *testing.T) {
	tests := []struct {
		name        string
		imageAction time.Duration // how long create_image runs
		imageAnswer int           // what the retried create_image meets
	}{
		{"retry meets the running action", 3 * time.Second, http.StatusLocked},
		{"retry makes a second snapshot", 50 * time.Millisecond, http.StatusCreated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, setup{stack: stack.Options{
				ActionDurations: map[string]time.Duration{"create_image": tt.imageAction},
				Faults:          fakehcloud.Faults{LoseReplies: map[string]int{"create_ssh_key": 1, "create_image": 1}},
			}})
			resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
			if ferr != "" || resp.Results[0].State != build.Done {
				t.Fatalf("%+v %s", resp, ferr)
			}
			keys := w.statuses("POST", "/v1/ssh_keys")
			if len(keys) < 2 || keys[0] != http.StatusBadGateway || keys[1] != http.StatusConflict {
				t.Errorf("key creates answered %v, want 502 then 409", keys)
			}
			images := w.statuses("POST", "/v1/servers/*/actions/create_image")
			if len(images) != 2 || images[0] != http.StatusBadGateway || images[1] != tt.imageAnswer {
				t.Errorf("create_image answered %v, want 502 then %d", images, tt.imageAnswer)
			}
			w.checkDone(target("amd64"))
			if resp.Results[0].SnapshotID != w.snapshots()[0].ID {
				t.Errorf("result names snapshot %d, the one left is %d", resp.Results[0].SnapshotID, w.snapshots()[0].ID)
			}
		})
	}
}

// TestFailedSnapshotFailsTheBuild: a create_image that ends with its image
// "unavailable" fails the build at once (not after the server's TTL), and
// the image and the server are deleted.
func TestFailedSnapshotFailsTheBuild(t *testing.T) {
	w := newWorld(t, setup{stack: stack.Options{Faults: fakehcloud.Faults{UnavailableImages: 1}}})
	res := w.failure(`{"version":"v1.13.9","arch":"amd64"}`)
	if !strings.Contains(res.Error, `failed: status-unavailable (status "unavailable"`) || res.Code != "snapshot-status-unavailable" {
		t.Fatalf("result %+v", res)
	}
	if s := w.snapshots(); len(s) != 0 {
		t.Errorf("snapshots left: %+v", s)
	}
	w.checkNothingLeft("v1.13.9/amd64 snapshot-status-unavailable")
}

// TestStuckSnapshotIsFailed: a snapshot "creating" beyond SNAPSHOT_TIMEOUT
// fails its build, for good: a failed result, no function error, so Lambda
// does not retry, and a failure record. While its action runs it can be
// neither deleted nor can its server, so it is marked failed (no consumer
// label) at once and deleted when it can be. A forced request builds the
// target again: one good snapshot in the end, and none a consumer could
// pick before.
func TestStuckSnapshotIsFailed(t *testing.T) {
	w := newWorld(t, setup{
		stack: stack.Options{Faults: fakehcloud.Faults{SlowImages: 1, SlowImageFor: 14 * time.Second}},
		env:   map[string]string{"SNAPSHOT_TIMEOUT": "10s", "SNAPSHOT_WAIT": "3s"},
	})
	stop := make(chan struct{})
	defer close(stop)
	visible := make(chan string, 1)
	go func() { // a consumer selecting os=talos must never see the stuck one
		var stuck int64
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			for _, img := range w.snapshots() {
				if stuck == 0 {
					stuck = img.ID // the first snapshot is the slow one
				}
				if img.ID == stuck && img.Status == "available" && img.Labels["os"] == "talos" {
					select {
					case visible <- fmt.Sprintf("%+v", img):
					default:
					}
				}
			}
		}
	}()
	start := time.Now()
	w.invokeAsync(`{"version":"v1.13.9","arch":"amd64"}`)
	w.WaitIdle()
	var failed bool
	for _, inv := range w.Lambda.Invocations("builder") {
		if inv.Failed() {
			t.Errorf("invocation %d of %s: function error %q", inv.Attempt, inv.RequestID, inv.ErrorMessage)
		}
		failed = failed || strings.Contains(string(inv.Result), `"code":"snapshot-timeout"`)
	}
	if !failed {
		t.Error("no invocation failed with the stuck snapshot")
	}
	w.checkRecords("v1.13.9/amd64 snapshot-timeout")
	time.Sleep(time.Until(start.Add(15 * time.Second))) // the slow create_image has ended
	// The server is left if it was still locked when the build failed; if
	// not, the failure record holds the target back from a request
	// without force.
	if resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64","force":true}`); ferr != "" || resp.Results[0].State != build.Done {
		t.Fatalf("the next request: %+v %s", resp, ferr)
	}

	select {
	case img := <-visible:
		t.Errorf("the stuck snapshot became visible to consumers: %s", img)
	default:
	}
	w.checkDone(target("amd64"))
}

// TestNoLabelUpdateWhileSnapshotting: with label updates refused while an
// action runs, the build records its checkpoint before create_image and
// never meets a refusal, let alone deletes the server under its snapshot.
func TestNoLabelUpdateWhileSnapshotting(t *testing.T) {
	w := newWorld(t, setup{stack: stack.Options{
		ActionDurations: map[string]time.Duration{"create_image": time.Second},
		Faults:          fakehcloud.Faults{LockedUpdates: true},
	}})
	resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
	if ferr != "" || resp.Results[0].State != build.Done {
		t.Fatalf("%+v %s", resp, ferr)
	}
	for _, s := range w.statuses("PUT", "/v1/servers/*") {
		if s == http.StatusLocked {
			t.Error("a label update met a locked server")
		}
	}
	w.checkDone(target("amd64"))
}
