package main

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakeevents"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakefactory"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/announce"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
)

// The events the deployed Builder puts on the account's default bus
// (infra/fakeevents), as a rule would see them.

// detail checks that the bus holds exactly the events of the detail types
// given, from our source on the default bus, and decodes the last one's
// detail into v.
func detail(t *testing.T, bus *fakeevents.Bus, v any, detailTypes ...string) {
	t.Helper()
	events := bus.Events()
	var got []string
	for _, ev := range events {
		got = append(got, ev.DetailType)
		if ev.Source != announce.Source || ev.Bus != fakeevents.DefaultBus {
			t.Errorf("event %+v, want source %s on the default bus", ev, announce.Source)
		}
	}
	if !slices.Equal(got, detailTypes) {
		t.Fatalf("events %q, want %q", got, detailTypes)
	}
	if v != nil {
		if err := json.Unmarshal(events[len(events)-1].Detail, v); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEventsOfABuild: a build announces its snapshot, with the cluster;
// the request again, a no-op, announces nothing.
func TestEventsOfABuild(t *testing.T) {
	w := newWorld(t, setup{env: map[string]string{"CLUSTER_NAME": "prod"}})
	start := time.Now()
	resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
	elapsed := time.Since(start)
	if ferr != "" || resp.Results[0].State != build.Done {
		t.Fatalf("%+v %s", resp, ferr)
	}
	res := resp.Results[0]
	var got announce.Available
	detail(t, w.Stack.Events, &got, announce.SnapshotAvailable)
	snaps := w.snapshots()
	if len(snaps) != 1 || snaps[0].ID != res.SnapshotID {
		t.Fatalf("snapshots %+v, want the result's %d", snaps, res.SnapshotID)
	}
	tg := target("amd64")
	if got.Version != tg.Version || got.Architecture != tg.Arch || got.Schematic != tg.Schematic || got.Cluster != "prod" ||
		got.ImageID != res.SnapshotID || got.Location != res.Location || got.Location != "fsn1" {
		t.Errorf("detail %+v, want snapshot %d of %v in fsn1 of cluster prod", got, res.SnapshotID, tg)
	}
	if !maps.Equal(got.Labels, snaps[0].Labels) || got.Labels["os"] != "talos" || got.Labels["cluster"] != "prod" {
		t.Errorf("labels %v, want the snapshot's %v", got.Labels, snaps[0].Labels)
	}
	// The server's created time has whole seconds: the build may look up
	// to a second longer than it took.
	if got.BuildSeconds < 0 || time.Duration(got.BuildSeconds)*time.Second > elapsed+time.Second {
		t.Errorf("build_seconds %d, want at most the %s the build took (and a second)", got.BuildSeconds, elapsed)
	}

	if resp, ferr = w.invoke(`{"version":"v1.13.9","arch":"amd64"}`); ferr != "" || resp.Results[0].State != build.Done {
		t.Fatalf("no-op: %+v %s", resp, ferr)
	}
	detail(t, w.Stack.Events, nil, announce.SnapshotAvailable)
}

// TestEventOfAFailure: a build that fails for good announces the reason;
// the next request, held back by the failure record, announces nothing.
func TestEventOfAFailure(t *testing.T) {
	w := newWorld(t, setup{})
	w.Stack.Factory.SetTruncate(fakefactory.TruncateShort)
	res := w.failure(`{"version":"v1.13.9","arch":"arm64"}`)
	var got announce.Failed
	detail(t, w.Stack.Events, &got, announce.BuildFailed)
	tg := target("arm64")
	if got.Version != tg.Version || got.Architecture != tg.Arch || got.Schematic != tg.Schematic || got.Cluster != "" ||
		got.Step != "install" || got.Code != "download" || got.Code != res.Code || got.Error != res.Error {
		t.Errorf("detail %+v, want the result's %+v", got, res)
	}
	if res := w.failure(`{"version":"v1.13.9","arch":"arm64"}`); res.Code != "backed-off" {
		t.Fatalf("second request: %+v", res)
	}
	detail(t, w.Stack.Events, nil, announce.BuildFailed)
}

// TestRefusedEventKeepsTheBuild: a bus that refuses the event leaves the
// build done, and the log says why.
func TestRefusedEventKeepsTheBuild(t *testing.T) {
	w := newWorld(t, setup{})
	w.Stack.Events.Refuse("AccessDeniedException", "not authorized to perform events:PutEvents")
	resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
	if ferr != "" || resp.Results[0].State != build.Done {
		t.Fatalf("%+v %s", resp, ferr)
	}
	w.checkDone(target("amd64"))
	detail(t, w.Stack.Events, nil)
	var logged bool
	for _, inv := range w.Lambda.Invocations("builder") {
		for _, l := range inv.Logs {
			logged = logged || strings.Contains(l, "could not be announced") && strings.Contains(l, "AccessDeniedException")
		}
	}
	if !logged {
		t.Error("the refused event is not in the log")
	}
}
