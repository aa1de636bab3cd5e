package main

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
)

// The tests in this file drive the Builder as Lambda does, adversarially:
// short timeouts, crashes with an immediate retry, a lost lease, racing and
// re-delivered forced requests. Each ends bounded, with one snapshot.

// TestShortFunctionTimeout: with a 25 s function, a build whose install
// fits finishes through continuations, and one whose install cannot fit
// fails clearly at once; both within a bounded number of invocations.
func TestShortFunctionTimeout(t *testing.T) {
	tests := []struct {
		name    string
		install string
		err     string // "" when the build finishes
	}{
		{name: "install fits", install: "15s"},
		{name: "install does not fit", install: "30s",
			err: "but step install needs 30s (INSTALL_TIMEOUT): raise the function's timeout or lower INSTALL_TIMEOUT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, setup{
				stack:   stack.Options{BootDelay: 2 * time.Second, ActionDurations: map[string]time.Duration{"create_image": 8 * time.Second}},
				timeout: 25 * time.Second,
				env:     map[string]string{"INSTALL_TIMEOUT": tt.install, "SNAPSHOT_WAIT": "5s"},
			})
			w.invokeAsync(`{"version":"v1.13.9","arch":"amd64"}`)
			w.WaitIdle()
			invs := w.Lambda.Invocations("builder")
			if len(invs) > 40 {
				t.Errorf("%d invocations, want at most 40", len(invs))
			}
			t.Logf("%d invocations", len(invs))
			if tt.err == "" {
				w.checkDone(target("amd64"))
				return
			}
			// A failure for good: no function error, so no retry.
			for _, inv := range invs {
				if inv.Failed() || !strings.Contains(string(inv.Result), tt.err) || !strings.Contains(string(inv.Result), `"code":"function-timeout"`) {
					t.Errorf("invocation %d: function error %q, result %s; want %q", inv.Attempt, inv.ErrorMessage, inv.Result, tt.err)
				}
			}
			if len(invs) != 1 {
				t.Errorf("%d invocations, want 1", len(invs))
			}
			if n := w.countRequests("POST", "/v1/servers"); n != 0 {
				t.Errorf("%d servers created for a build that cannot fit", n)
			}
			w.checkNothingLeft()
		})
	}
}

// TestKilledThenRetriedAtOnce kills the Builder at five points and invokes
// it again at once, as Lambda's retry would: the new invocation waits for
// the dead one's lease to expire and finishes the build, instead of
// answering in_progress with nothing carrying the build on.
func TestKilledThenRetriedAtOnce(t *testing.T) {
	for _, point := range []string{"server created", "rescue enabled", "waiting for the rescue system", "writing image", "snapshot started"} {
		t.Run(point, func(t *testing.T) {
			w := newWorld(t, setup{stack: stack.Options{ActionDurations: map[string]time.Duration{"create_image": 500 * time.Millisecond}}})
			killed := w.Lambda.KillOn("builder", func(line string) bool { return strings.Contains(line, `"message":"`+point+`"`) })
			w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
			select { // closes once the killed runtime has exited, maybe just after the answer
			case <-killed:
			case <-time.After(10 * time.Second):
				t.Fatalf("not killed at %q", point)
			}
			start := time.Now()
			resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
			if ferr != "" || resp.Results[0].State != build.Done {
				t.Fatalf("the retry: %+v %s", resp, ferr)
			}
			t.Logf("done %s after the retry started", time.Since(start).Round(100*time.Millisecond))
			w.checkDone(target("amd64"))
		})
	}
}

// TestLostLeaseStopsItsHolder refuses the lease's renewals while the install
// runs, until the lease lapses and a second invocation takes the build
// over: the first must stop acting, so one snapshot results.
func TestLostLeaseStopsItsHolder(t *testing.T) {
	w := newWorld(t, setup{stack: stack.Options{BootDelay: 6 * time.Second}, env: map[string]string{"LEASE_TTL": "3s"}})
	w.invokeAsync(`{"version":"v1.13.9","arch":"amd64"}`)
	time.Sleep(1500 * time.Millisecond) // it waits 6 s for the rescue system
	w.Stack.Cloud.SetFaults(fakehcloud.Faults{Refuse: map[string]fakehcloud.Fault{
		"PUT /v1/ssh_keys/*": {Status: http.StatusInternalServerError, Code: "server_error", Message: "renewal refused"}}})
	time.Sleep(4 * time.Second) // past LEASE_TTL (3 s) without a renewal
	w.Stack.Cloud.SetFaults(fakehcloud.Faults{})
	resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
	if ferr != "" {
		t.Fatalf("second invocation: %+v %s", resp, ferr)
	}
	w.WaitIdle()
	if !w.logged(`lease renewals failed until shortly before it expires: stopping`) {
		t.Error("the first invocation did not stop when its lease could lapse")
	}
	w.checkDone(target("amd64"))
}

// TestForcedBuildsRaceAndRedeliveries: two forced requests at once end with
// one new snapshot; a forced request that Lambda delivers again after it
// completed (same request id) is a no-op, not a rebuild.
func TestForcedBuildsRaceAndRedeliveries(t *testing.T) {
	w := newWorld(t, setup{stack: stack.Options{ActionDurations: map[string]time.Duration{"create_image": 300 * time.Millisecond}}})
	first, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
	if ferr != "" {
		t.Fatal(ferr)
	}
	w.invokeAsync(`{"version":"v1.13.9","arch":"amd64","force":true}`)
	w.invokeAsync(`{"version":"v1.13.9","arch":"amd64","force":true}`)
	w.WaitIdle()
	w.checkDone(target("amd64"))
	forced := w.snapshots()[0]
	if forced.ID == first.Results[0].SnapshotID {
		t.Fatal("the forced builds kept the old snapshot")
	}

	// The request that built it, delivered twice more.
	builtBy := forced.Labels["hcloud-k8s.io/request"]
	servers := w.countRequests("POST", "/v1/servers")
	for range 2 {
		if err := w.Lambda.Redeliver("builder", builtBy); err != nil {
			t.Fatal(err)
		}
		w.WaitIdle()
	}
	if n := w.countRequests("POST", "/v1/servers"); n != servers {
		t.Errorf("re-deliveries created %d servers", n-servers)
	}
	w.checkDone(target("amd64"))
	if now := w.snapshots()[0]; now.ID != forced.ID {
		t.Errorf("a re-delivery rebuilt: snapshot %d, was %d", now.ID, forced.ID)
	}
}

// logged tells whether a finished Builder invocation logged a line with s.
func (w *world) logged(s string) bool {
	for _, inv := range w.Lambda.Invocations("builder") {
		if slices.ContainsFunc(inv.Logs, func(l string) bool { return strings.Contains(l, s) }) {
			return true
		}
	}
	return false
}

// TestFactoryBuildsOnFirstRequest: the factory builds an image on its first
// request and answers only then; a Builder asking first waits it out
// (within its timeout) and builds.
func TestFactoryBuildsOnFirstRequest(t *testing.T) {
	w := newWorld(t, setup{stack: stack.Options{FactoryBuildDelay: 2 * time.Second}})
	start := time.Now()
	resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
	if ferr != "" || resp.Results[0].State != build.Done {
		t.Fatalf("%+v %s", resp, ferr)
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("built in %s: the factory's build was not waited for", took)
	}
	w.checkDone(target("amd64"))
}
