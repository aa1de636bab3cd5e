package build

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/ssh"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

func TestClassify(t *testing.T) {
	installCtx, cancel := context.WithTimeoutCause(context.Background(), 0, errInstallTimeout)
	defer cancel()
	tests := []struct {
		name      string
		err       error
		code      string
		transient bool
	}{
		{"rate limit", fmt.Errorf("create server: %w", hcloud.Error{Code: hcloud.ErrorCodeRateLimitExceeded}), "api-rate_limit_exceeded", true},
		{"bad gateway", hcloud.Error{Code: hcloud.ErrorCodeBadGateway}, "api-bad_gateway", true},
		{"503", hcloud.Error{Code: "unavailable"}, "api-unavailable", true},
		{"locked", hcloud.Error{Code: hcloud.ErrorCodeLocked}, "api-locked", true},
		{"vanished", hcloud.Error{Code: hcloud.ErrorCodeNotFound}, "api-not_found", true},
		{"invalid input", hcloud.Error{Code: hcloud.ErrorCodeInvalidInput}, "api-invalid_input", false},
		{"forbidden", hcloud.Error{Code: hcloud.ErrorCodeForbidden}, "api-forbidden", false},
		{"failed action", hcloud.ActionError{Code: "action_failed"}, "action-action_failed", true},
		{"api timeout", fmt.Errorf("get server: %w", context.DeadlineExceeded), "timeout", true},
		{"network", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, "network", true},
		{"lease lost", fmt.Errorf("check: %w", errLeaseLost), "lease", true},
		{"lease held", &leaseHeldError{owner: "x"}, "lease", true},
		{"factory building", &talos.BuildingError{}, "factory-building", true},
		{"factory outage", transient("factory", errors.New("500 Internal Server Error")), "factory", true},
		{"not served", &talos.NotAvailableError{}, "not-served", false},
		{"no capacity", deterministic("no-capacity", errors.New("no capacity")), "no-capacity", false},
		{"quota wraps an API error", deterministic("server-limit", hcloud.Error{Code: hcloud.ErrorCodeResourceLimitExceeded}),
			"server-limit", false},
		{"download", rescueFailure(context.Background(), "download", &ssh.ExitError{Status: 1}), "download", false},
		{"session broke", rescueFailure(context.Background(), "download", errors.New("ssh: EOF")), "rescue-ssh", false},
		{"install timeout", rescueFailure(installCtx, "download", context.DeadlineExceeded), "install-timeout", false},
		{"unknown", errors.New("something else"), "error", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, temp := Classify(tt.err)
			if code != tt.code || temp != tt.transient {
				t.Errorf("Classify(%v) = %q, %v; want %q, %v", tt.err, code, temp, tt.code, tt.transient)
			}
			if err := label.Check(label.LastError, code); err != nil {
				t.Errorf("code is no label value: %v", err)
			}
		})
	}
}

func TestFailureDelay(t *testing.T) {
	tests := []struct {
		pol  FailurePolicy
		want []time.Duration // after 1, 2, ... failures
	}{
		{FailurePolicy{}, []time.Duration{time.Hour, 2 * time.Hour, 4 * time.Hour, 8 * time.Hour, 16 * time.Hour, 24 * time.Hour, 24 * time.Hour}},
		{FailurePolicy{Backoff: 15 * time.Minute}, []time.Duration{15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour}},
		{FailurePolicy{Backoff: 20 * time.Hour}, []time.Duration{20 * time.Hour, 24 * time.Hour, 24 * time.Hour}},
	}
	for _, tt := range tests {
		for i, want := range tt.want {
			if got := tt.pol.Delay(i + 1); got != want {
				t.Errorf("%+v: delay after %d failures = %s, want %s", tt.pol, i+1, got, want)
			}
		}
	}
	if got := (FailurePolicy{}).Delay(1000); got != MaxFailureBackoff {
		t.Errorf("delay after 1000 failures = %s", got)
	}
}

// TestFailureRecords: a record's labels are valid and read back; it counts
// on under the same configuration and starts over under another; it holds
// its target until the next attempt, and for good once parked.
func TestFailureRecords(t *testing.T) {
	now := time.Date(2026, 11, 10, 12, 0, 0, 0, time.UTC)
	pol := FailurePolicy{Backoff: time.Hour, Limit: 3, Config: "abc"}
	long := Target{Version: "v10.200.3000-rc.1.very-long-prerelease-identifier.with.x", Arch: "arm64", Schematic: talos.VanillaSchematic}
	for _, tg := range []Target{target, long} {
		rec := pol.Record(nil, tg, "prod-1", "download", StepInstall, "0a1b-req", now)
		k := &hcloud.SSHKey{ID: 7, Name: rec.Name(), Labels: rec.Labels()}
		for key, v := range k.Labels {
			if err := label.Check(key, v); err != nil {
				t.Errorf("%v: %v", tg, err)
			}
		}
		if !hostnameRE.MatchString(k.Name) || len(k.Name) > 63 {
			t.Errorf("%v: record name %q", tg, k.Name)
		}
		if failureName(tg, "") == k.Name || failureName(tg, "prod-1") != k.Name {
			t.Errorf("%v: record names do not tell clusters apart", tg)
		}
		got, ok := ParseFailureRecord(k)
		rec.Key = k
		if !ok || fmt.Sprint(got) != fmt.Sprint(rec) {
			t.Errorf("read back %+v\nwant %+v", got, rec)
		}
	}

	rec := pol.Record(nil, target, "", "verify", StepInstall, "r1", now)
	for i, c := range []struct {
		at     time.Duration // after now
		held   bool
		parked bool
	}{{0, true, false}, {59 * time.Minute, true, false}, {time.Hour, false, false}} {
		if got := pol.Holds(rec, now.Add(c.at)); got != c.held || pol.Parked(rec) != c.parked {
			t.Errorf("%d: holds %v parked %v", i, got, pol.Parked(rec))
		}
	}
	rec = pol.Record(&rec, target, "", "verify", StepInstall, "r2", now.Add(time.Hour))
	if rec.Failures != 2 || !rec.Next.Equal(now.Add(3*time.Hour)) {
		t.Errorf("second failure: %d, next %s", rec.Failures, rec.Next)
	}
	rec = pol.Record(&rec, target, "", "verify", StepInstall, "r3", now.Add(3*time.Hour))
	if !pol.Parked(rec) || !pol.Holds(rec, now.Add(1000*time.Hour)) || !strings.Contains(pol.Why(rec), "parked after 3 failed build(s)") {
		t.Errorf("third failure: parked %v: %s", pol.Parked(rec), pol.Why(rec))
	}
	other := FailurePolicy{Backoff: time.Hour, Limit: 3, Config: "changed"}
	if other.Holds(rec, now) {
		t.Error("a record of another configuration holds its target")
	}
	if again := other.Record(&rec, target, "", "verify", StepInstall, "r4", now); again.Failures != 1 {
		t.Errorf("under another configuration the count goes on: %d", again.Failures)
	}
}

// failingRemote fails the install script as a broken download does, after
// the script's own retries.
func failingRemote() *fakeRemote {
	return &fakeRemote{table: talosTable, failRun: &ssh.ExitError{Status: 1, Tail: "rescue: writing the image failed 3 times"}}
}

// TestDeterministicFailureBacksOff: a broken download fails the build, is
// recorded, and holds the target: a request creates nothing until the
// backoff has passed, and after FAILURE_LIMIT failures not at all; a
// forced request (not Lambda's retry of the failed one) overrides and
// clears the record, and a success leaves none.
func TestDeterministicFailureBacksOff(t *testing.T) {
	w := newLocalCloud(t)
	remote := failingRemote()
	clock := time.Now()
	// The clock runs up to 1000 hours ahead of the cloud's, which dates the
	// snapshots: none is to time out by that.
	b := testBuilder(w, remote, nil, Options{Failures: FailurePolicy{Backoff: time.Hour, Limit: 2, Config: "c1"},
		SnapshotTimeout: 2000 * time.Hour})
	b.now = func() time.Time { return clock }
	owner := "req-1"
	b.owner = func(context.Context) string { return owner }
	build := func(force bool) Result { return b.Build(context.Background(), target, Request{Force: force}) }

	res := build(false)
	if res.State != Failed || res.Code != "download" || res.Step != StepInstall {
		t.Fatalf("first build: %+v", res)
	}
	rec, ok := w.record(target)
	if !ok || rec.Failures != 1 || rec.Code != "download" || rec.Step != StepInstall || !rec.Next.Equal(clock.Add(time.Hour).Truncate(time.Second)) ||
		rec.Request != "req-1" || rec.Config != "c1" {
		t.Fatalf("record after the first failure: %+v (found %v)", rec, ok)
	}

	// Within the backoff: refused, nothing created, nothing counted.
	creates := len(w.cloud.createLog())
	clock = clock.Add(30 * time.Minute)
	owner = "req-2"
	if res = build(false); res.State != Failed || res.Code != "backed-off" || !strings.Contains(res.Error, "send force:true") {
		t.Errorf("build within the backoff: %+v", res)
	}
	if len(w.cloud.createLog()) != creates {
		t.Error("a held target got a server")
	}
	if rec, _ := w.record(target); rec.Failures != 1 {
		t.Errorf("a refusal was counted: %d failures", rec.Failures)
	}

	// After it: built, fails again, parked (FAILURE_LIMIT 2).
	clock = clock.Add(time.Hour)
	owner = "req-3"
	if res = build(false); res.State != Failed || res.Code != "download" {
		t.Fatalf("build after the backoff: %+v", res)
	}
	rec, _ = w.record(target)
	if rec.Failures != 2 || !b.opts.Failures.Parked(rec) {
		t.Fatalf("record after the second failure: %+v", rec)
	}
	clock = clock.Add(1000 * time.Hour)
	owner = "req-4"
	if res = build(false); res.Code != "parked" {
		t.Errorf("build of a parked target: %+v", res)
	}
	// A forced request overrides and clears the record; failing, it counts
	// from one. Lambda's retry of it keeps its request id and does not
	// override the record its own failure made.
	owner = "req-5"
	if res = build(true); res.State != Failed || res.Code != "download" {
		t.Fatalf("forced build: %+v", res)
	}
	if rec, _ = w.record(target); rec.Failures != 1 || rec.Request != "req-5" {
		t.Errorf("a forced build starts the count afresh: %+v", rec)
	}
	if res = build(true); res.Code != "backed-off" {
		t.Errorf("a retry of the forced request overrode its own failure: %+v", res)
	}

	// A forced request of a person, with the download repaired: built, and
	// no record is left.
	remote.failRun = nil
	owner = "req-6"
	if res = build(true); res.State != Done {
		t.Fatalf("forced build: %+v", res)
	}
	if _, ok := w.record(target); ok {
		t.Error("a success left the failure record")
	}
	if s, k, i := w.counts(); s != 0 || k != 0 || i != 1 {
		t.Errorf("left %d servers, %d keys, %d images", s, k, i)
	}
}

// TestConfigChangeUnparks: a record made under another configuration does
// not hold its target; its next failure counts from one.
func TestConfigChangeUnparks(t *testing.T) {
	w := newLocalCloud(t)
	b := testBuilder(w, failingRemote(), nil, Options{Failures: FailurePolicy{Limit: 1, Config: "old"}})
	if res := b.Build(context.Background(), target, Request{}); res.Code != "download" {
		t.Fatalf("first build: %+v", res)
	}
	if res := b.Build(context.Background(), target, Request{}); res.Code != "parked" {
		t.Fatalf("second build: %+v", res)
	}
	b.opts.Failures.Config = "new"
	if res := b.Build(context.Background(), target, Request{}); res.Code != "download" {
		t.Fatalf("build under the new configuration: %+v", res)
	}
	if rec, _ := w.record(target); rec.Failures != 1 || rec.Config != "new" {
		t.Errorf("record: %+v", rec)
	}
}

// TestTransientFailureKeepsTheServer: an API error that says "retry"
// stops the build for Lambda to retry (a function error), keeps the server
// and records nothing; the retry goes on from the checkpoint.
func TestTransientFailureKeepsTheServer(t *testing.T) {
	w := newLocalCloud(t)
	b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{})
	w.emu.SetFaults(fakehcloud.Faults{Refuse: map[string]fakehcloud.Fault{
		"POST /v1/servers/*/actions/poweron": {Status: http.StatusInternalServerError, Code: string(hcloud.ErrorCodeServerError), Message: "boom"},
	}})
	resp, err := b.HandlePayload(context.Background(), json.RawMessage(`{"version":"v1.13.9","arch":"amd64"}`))
	var retry *RetryError
	if !errors.As(err, &retry) || resp.Results[0].State != InProgress || resp.Results[0].Code != "api-server_error" {
		t.Fatalf("response %+v, error %v", resp, err)
	}
	if s, _, _ := w.counts(); s != 1 {
		t.Errorf("%d servers, want the build's kept", s)
	}
	if _, ok := w.record(target); ok {
		t.Error("a transient failure was recorded")
	}
	w.emu.SetFaults(fakehcloud.Faults{})
	w.cloud.resetCalls()
	if resp, err = b.HandlePayload(context.Background(), json.RawMessage(`{"version":"v1.13.9","arch":"amd64"}`)); err != nil || resp.Results[0].State != Done {
		t.Fatalf("the retry: %+v %v", resp, err)
	}
	if slices.Contains(w.cloud.callLog(), "CreateServer") {
		t.Error("the retry made a second server")
	}
}

// TestFailedIsNoFunctionError: the Lambda handler answers a deterministic
// failure with the response (Lambda retries only function errors) and
// keeps *FailedError for the command line.
func TestFailedIsNoFunctionError(t *testing.T) {
	w := newLocalCloud(t)
	b := testBuilder(w, failingRemote(), nil, Options{})
	resp, err := b.HandlePayload(context.Background(), json.RawMessage(`{"version":"v1.13.9","arch":"amd64"}`))
	if err != nil || len(resp.Results) != 1 || resp.Results[0].State != Failed || resp.Results[0].Code != "download" {
		t.Fatalf("response %+v, error %v", resp, err)
	}
	_, err = b.RunUntilDone(context.Background(), Request{Version: "v1.13.9", Arch: "amd64", Force: true})
	var failed *FailedError
	if !errors.As(err, &failed) {
		t.Errorf("RunUntilDone: %v, want *FailedError", err)
	}
}
