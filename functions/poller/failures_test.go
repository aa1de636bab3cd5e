package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakefactory"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/poll"
)

// TestBrokenDownloadsBackOff breaks every image download (the factory
// answers HEAD, every GET is cut off) and polls four times in a row, one
// of them a dry run. The first poll starts one build per architecture
// (the newer version queued behind each); each fails after the install script's own retries, as a failed result
// without a function error (so Lambda does not retry it), and leaves a
// failure record. The other polls create no server: their reports list the
// targets as backed off, with the error and the next attempt, and defer
// the newer versions of their groups behind them.
func TestBrokenDownloadsBackOff(t *testing.T) {
	w := newWorld(t)
	w.Stack.Factory.SetTruncate(fakefactory.TruncateCut)
	creates := func() int { return w.Stack.Cloud.CountRequests("POST", "/v1/servers") }
	var perPoll []string
	requests := 0
	poll := func(payload string) poll.Report {
		t.Helper()
		before := creates()
		rep := w.poll(payload)
		n := len(w.Stack.Cloud.Requests())
		perPoll = append(perPoll, fmt.Sprintf("poll %s: %d servers created, %d Hetzner API requests (the builds' included)",
			payload, creates()-before, n-requests))
		requests = n
		return rep
	}

	// v1.13.9 is queued behind v1.12.8: a failed build ends its queue.
	first := poll(`{}`)
	if got := targets(first.Builds); !slices.Equal(got, []string{"v1.12.8/amd64", "v1.12.8/arm64", "v1.13.9/amd64", "v1.13.9/arm64"}) {
		t.Fatalf("first poll builds %v", got)
	}
	if n := creates(); n != 2 {
		t.Fatalf("%d servers created by the first poll, want 2", n)
	}
	invs := w.Lambda.Invocations("builder")
	if len(invs) != 2 {
		t.Errorf("%d Builder invocations, want 2 (no Lambda retry of a deterministic failure)", len(invs))
	}
	for _, inv := range invs {
		var resp build.Response
		if err := json.Unmarshal(inv.Result, &resp); err != nil || inv.Failed() || len(resp.Results) != 1 ||
			resp.Results[0].State != build.Failed || resp.Results[0].Code != "download" {
			t.Errorf("invocation %s: function error %q, result %s", inv.RequestID, inv.ErrorMessage, inv.Result)
		}
	}

	for i, payload := range []string{`{}`, `{"dry_run":true}`, `{}`} {
		rep := poll(payload)
		if len(rep.Builds) != 0 || len(rep.Redrives) != 0 {
			t.Errorf("poll %d builds %v, re-drives %v", i+2, targets(rep.Builds), targets(rep.Redrives))
		}
		var backedOff []string
		for _, f := range rep.BackedOff {
			backedOff = append(backedOff, f.Version+"/"+f.Arch)
			if f.Failures != 1 || f.Error != "download" || f.Step != build.StepInstall || f.NextAttempt == nil ||
				f.NextAttempt.Sub(f.LastFailure) != time.Hour || !strings.Contains(f.Reason, "backed off after 1 failed build(s), the last download") {
				t.Errorf("poll %d: backed off %+v", i+2, f)
			}
		}
		if !slices.Equal(backedOff, []string{"v1.12.8/amd64", "v1.12.8/arm64"}) || len(rep.Parked) != 0 {
			t.Errorf("poll %d: backed off %v, parked %+v", i+2, backedOff, rep.Parked)
		}
		if got := targets(rep.Deferred); !slices.Equal(got, []string{"v1.12.8/amd64", "v1.12.8/arm64", "v1.13.9/amd64", "v1.13.9/arm64"}) {
			t.Errorf("poll %d defers %v", i+2, got)
		}
		for _, d := range rep.Deferred {
			if !strings.Contains(d.Reason, "backed off") {
				t.Errorf("poll %d: deferral of %s says %q", i+2, d.Target, d.Reason)
			}
		}
	}
	if n := creates(); n != 2 {
		t.Errorf("%d servers created in four polls, want the first poll's 2", n)
	}
	if n := len(w.Lambda.Invocations("builder")); n != 2 {
		t.Errorf("%d Builder invocations in four polls, want 2", n)
	}
	if s := w.Stack.Cloud.Servers(); len(s) != 0 {
		t.Errorf("servers left: %+v", s)
	}
	var records []string
	for _, k := range w.Stack.Cloud.SSHKeys() {
		if k.Labels["hcloud-k8s.io/role"] != "deployment" { // the deployment's claim on its cluster stays
			records = append(records, k.Labels["hcloud-k8s.io/role"]+" "+k.Labels["talos_version"]+"/"+k.Labels["arch"])
		}
	}
	slices.Sort(records)
	if !slices.Equal(records, []string{"failure v1.12.8/amd64", "failure v1.12.8/arm64"}) {
		t.Errorf("keys left: %v, want the two failure records", records)
	}
	for _, p := range perPoll {
		t.Log(p)
	}
}
