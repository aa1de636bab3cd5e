package build

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

func TestQueueIsValidated(t *testing.T) {
	b := testBuilder(newLocalCloud(t), &fakeRemote{}, nil, Options{MinVersion: "v1.12.0"})
	qga := talos.QemuGuestAgentSchematic
	long := make([]Next, MaxQueue+1)
	for i := range long {
		long[i] = Next{Version: fmt.Sprintf("v1.13.%d", i)}
	}
	for _, tt := range []struct {
		req Request
		err string // "" accepted
	}{
		{Request{Version: "v1.12.5", Arch: "amd64", Schematic: qga, Queue: []Next{{Version: "v1.13.9"}, {Version: "v1.13.9", Force: true}}}, ""},
		{Request{Version: "v1.12.5", Arch: "amd64", Schematic: qga, Queue: long[:MaxQueue]}, ""},
		{Request{Version: "v1.12.5", Queue: []Next{{Version: "v1.13.9"}}}, "queue: the builds of a queue follow this one's architecture and schematic: name both"},
		{Request{Version: "v1.12.5", Arch: "amd64", Queue: []Next{{Version: "v1.13.9"}}}, "name both"},
		{Request{Version: "v1.12.5", Arch: "amd64", Schematic: qga, Queue: long}, "queue: 33 builds, at most 32"},
		{Request{Version: "v1.12.5", Arch: "amd64", Schematic: qga, Queue: []Next{{Version: "1.13.9"}}}, `queue[0]: version: "1.13.9" is not a version`},
		{Request{Version: "v1.12.5", Arch: "amd64", Schematic: qga, Queue: []Next{{Version: "v1.13.9"}, {Version: "v1.14.0-beta.1"}}},
			"queue[1]: version: v1.14.0-beta.1 is a prerelease and prereleases are not tracked; allowed: the configured schematics"},
		{Request{Version: "v1.12.5", Arch: "amd64", Schematic: qga, Queue: []Next{{Version: "v1.11.6"}}},
			"queue[0]: version: v1.11.6 is below MIN_VERSION v1.12.0; allowed:"},
	} {
		_, err := b.Targets(tt.req)
		if (tt.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("Targets(%+v) err = %v, want %q", tt.req, err, tt.err)
		}
	}
	r, err := ParseRequest([]byte(`{"version":"v1.12.5","arch":"amd64","schematic":"` + qga +
		`","queue":[{"version":"v1.13.9"},{"version":"v1.13.9","force":true}]}`))
	want := Request{Version: "v1.12.5", Arch: "amd64", Schematic: qga, Queue: []Next{{Version: "v1.13.9"}, {Version: "v1.13.9", Force: true}}}
	if err != nil || !reflect.DeepEqual(r, want) {
		t.Errorf("ParseRequest = %+v, %v", r, err)
	}
}

// TestQueueHandsOn: each build of a queue, once done, starts the next with
// the rest of the queue, as a signed continuation; a continuation handed on
// twice is one request, so a forced build is not done twice; an altered
// queue is refused.
func TestQueueHandsOn(t *testing.T) {
	ctx := context.Background()
	w := newLocalCloud(t)
	cont := &recordingContinuer{}
	b := testBuilder(w, &fakeRemote{table: talosTable}, cont, Options{})
	req := Request{Version: "v1.12.5", Arch: "amd64", Schematic: target.Schematic,
		Queue: []Next{{Version: "v1.13.9"}, {Version: "v1.12.5", Force: true}}}
	var versions []string
	for hop := 0; ; hop++ {
		resp, err := b.Handle(ctx, req)
		if err != nil || resp.Results[0].State != Done {
			t.Fatalf("hop %d: %+v, %v", hop, resp, err)
		}
		versions = append(versions, resp.Results[0].Version)
		if len(cont.reqs) == hop {
			if resp.Next != nil {
				t.Errorf("hop %d: next %+v, but nothing was started", hop, resp.Next)
			}
			break
		}
		next := cont.reqs[hop]
		if next.Continuation == nil || b.verify(next) != nil || next.Arch != "amd64" || next.Schematic != target.Schematic ||
			next.Version != req.Queue[0].Version || next.Force != req.Queue[0].Force || !slices.Equal(next.Queue, req.Queue[1:]) ||
			resp.Next == nil || *resp.Next != req.Queue[0] {
			t.Fatalf("hop %d: handed on %+v (next %+v) after %+v", hop, next, resp.Next, req)
		}
		req = next
	}
	if want := []string{"v1.12.5", "v1.13.9", "v1.12.5"}; !slices.Equal(versions, want) {
		t.Errorf("built %v, want %v", versions, want)
	}
	if _, _, images := w.counts(); images != 2 {
		t.Errorf("%d snapshots, want v1.12.5 (rebuilt) and v1.13.9", images)
	}
	// The last build handed on a second time: found done, not rebuilt.
	creates := len(w.cloud.createLog())
	if resp, err := b.Handle(ctx, req); err != nil || resp.Results[0].State != Done || len(w.cloud.createLog()) != creates {
		t.Errorf("the forced build again: %+v, %v, %d servers created", resp, err, len(w.cloud.createLog())-creates)
	}
	// A queue cannot be added to, or changed in, a signed continuation.
	for _, q := range [][]Next{{{Version: "v1.13.9"}}, nil} {
		forged := cont.reqs[0]
		forged.Queue = q
		if _, err := b.Handle(ctx, forged); err == nil || !strings.Contains(err.Error(), "not signed") {
			t.Errorf("continuation with queue %v: %v", q, err)
		}
	}
}

// TestQueueGoesOnOnlyFromADoneBuild: a build that continues in a new
// invocation carries its queue along; one that fails ends it; one whose
// next build cannot be started is retried.
func TestQueueGoesOnOnlyFromADoneBuild(t *testing.T) {
	ctx := context.Background()
	queue := []Next{{Version: "v1.13.9"}}

	w := newLocalCloud(t)
	w.emu.SetFaults(fakehcloud.Faults{SlowImages: 1, SlowImageFor: time.Hour})
	cont := &recordingContinuer{}
	b := testBuilder(w, &fakeRemote{table: talosTable}, cont, Options{SnapshotWait: 20 * time.Millisecond})
	req := Request{Version: "v1.12.5", Arch: "amd64", Schematic: target.Schematic, Queue: queue}
	if resp, err := b.Handle(ctx, req); err != nil || resp.Results[0].State != InProgress || resp.Next != nil || len(cont.reqs) != 1 {
		t.Fatalf("a build waiting for its snapshot: %+v, %v, continuations %+v", resp, err, cont.reqs)
	}
	if c := cont.reqs[0]; c.Version != "v1.12.5" || !slices.Equal(c.Queue, queue) || b.verify(c) != nil {
		t.Errorf("continuation %+v does not carry the queue", c)
	}

	cont = &recordingContinuer{}
	b = testBuilder(newLocalCloud(t), &fakeRemote{table: talosTable}, cont, Options{})
	req = Request{Version: "v1.13.8", Arch: "amd64", Schematic: target.Schematic, Queue: queue} // not served
	var failed *FailedError
	if _, err := b.Handle(ctx, req); !errors.As(err, &failed) || len(cont.reqs) != 0 {
		t.Errorf("a failed build: %v, continuations %+v", err, cont.reqs)
	}

	b = testBuilder(newLocalCloud(t), &fakeRemote{table: talosTable}, failingContinuer{}, Options{})
	req = Request{Version: "v1.12.5", Arch: "amd64", Schematic: target.Schematic, Queue: queue}
	resp, err := b.Handle(ctx, req)
	if err == nil || !strings.Contains(err.Error(), "build to be retried: v1.12.5/amd64/ce4c9805 is done, but starting the next build of its queue, v1.13.9, failed") ||
		resp.Results[0].State != Done {
		t.Errorf("a next build that cannot be started: %+v, %v", resp, err)
	}
}

type failingContinuer struct{}

func (failingContinuer) Continue(context.Context, Request) error { return errors.New("throttled") }

// TestRunUntilDoneFollowsTheQueue: outside Lambda the queue is built in
// this process, in order.
func TestRunUntilDoneFollowsTheQueue(t *testing.T) {
	w := newLocalCloud(t)
	b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{})
	resp, err := b.RunUntilDone(context.Background(), Request{Version: "v1.12.5", Arch: "arm64", Schematic: target.Schematic,
		Queue: []Next{{Version: "v1.13.9"}}})
	if err != nil || len(resp.Results) != 2 || resp.Results[0].Version != "v1.12.5" || resp.Results[1].Version != "v1.13.9" ||
		resp.Results[1].State != Done {
		t.Fatalf("%+v, %v", resp, err)
	}
	if _, _, images := w.counts(); images != 2 {
		t.Errorf("%d snapshots, want 2", images)
	}
}

// resolver resolves schematics as a factory that is down, or up.
type resolver struct {
	ids []string
	err error
}

func (r resolver) Resolve(context.Context) ([]string, error) { return r.ids, r.err }

// TestCustomizationResolvedWhenNeeded: a request for a configured schematic
// needs no factory to be checked; one that may name the customization's is
// retried while the factory cannot say its ID, and accepted once it has.
func TestCustomizationResolvedWhenNeeded(t *testing.T) {
	ctx := context.Background()
	custom := strings.Repeat("c", 64)
	newBuilder := func(r resolver) *Builder {
		b := testBuilder(newLocalCloud(t), &fakeRemote{table: talosTable}, nil, Options{})
		b.resolver = r
		return b
	}
	down := newBuilder(resolver{ids: []string{target.Schematic}, err: errors.New("SCHEMATIC_CUSTOMIZATION: no answer")})
	if err := down.resolveSchematics(ctx, Request{Version: "v1.13.9", Schematic: target.Schematic}); err != nil {
		t.Errorf("a configured schematic: %v", err)
	}
	for _, r := range []Request{{Version: "v1.13.9"}, {Version: "v1.13.9", Schematic: custom}} {
		if _, err := down.Handle(ctx, r); err == nil || !strings.Contains(err.Error(), "build to be retried: the request may name the schematic of SCHEMATIC_CUSTOMIZATION") {
			t.Errorf("%+v: %v", r, err)
		}
	}
	up := newBuilder(resolver{ids: []string{target.Schematic, custom}})
	if err := up.resolveSchematics(ctx, Request{Version: "v1.13.9"}); err != nil {
		t.Fatal(err)
	}
	if ts, err := up.Targets(Request{Version: "v1.13.9", Arch: "amd64"}); err != nil || len(ts) != 2 || ts[1].Schematic != custom {
		t.Errorf("targets once resolved: %v, %v", ts, err)
	}
}
