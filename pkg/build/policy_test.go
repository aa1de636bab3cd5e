package build

import (
	"context"
	"strings"
	"testing"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/release"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

func TestRequestsFollowThePolicy(t *testing.T) {
	qga, vanilla := talos.QemuGuestAgentSchematic, talos.VanillaSchematic
	strict := Options{Schematics: []string{qga}, MinVersion: "v1.12.0"}
	pre := Options{Schematics: []string{qga}, MinVersion: "v1.12.0", Prereleases: true}
	const allowedStrict = "allowed: the configured schematics " + talos.QemuGuestAgentSchematic +
		" (SCHEMATIC_IDS, SCHEMATIC_CUSTOMIZATION), versions from MIN_VERSION v1.12.0 on, no prereleases (TRACK_PRERELEASES=false)"
	tests := []struct {
		name string
		opts Options
		req  Request
		want []string // substrings of the error; none: accepted
	}{
		{"configured schematic at the minimum", strict, Request{Version: "v1.12.0", Schematic: qga}, nil},
		{"no schematic named", strict, Request{Version: "v1.13.9"}, nil},
		{"older patch of an eligible line", strict, Request{Version: "v1.12.1"}, nil},
		{"unconfigured schematic", strict, Request{Version: "v1.13.9", Schematic: vanilla},
			[]string{"schematic: " + vanilla + " is not a configured schematic", allowedStrict}},
		{"below the minimum", strict, Request{Version: "v1.11.6"},
			[]string{"version: v1.11.6 is below MIN_VERSION v1.12.0", allowedStrict}},
		{"prerelease of the minimum is below it", pre, Request{Version: "v1.12.0-rc.1"},
			[]string{"version: v1.12.0-rc.1 is below MIN_VERSION v1.12.0",
				"versions from MIN_VERSION v1.12.0 on, prereleases too (TRACK_PRERELEASES=true)"}},
		{"prerelease not tracked", strict, Request{Version: "v1.14.0-beta.1"},
			[]string{"version: v1.14.0-beta.1 is a prerelease and prereleases are not tracked", allowedStrict}},
		{"prerelease tracked", pre, Request{Version: "v1.14.0-beta.1"}, nil},
		{"everything wrong at once", strict, Request{Version: "v1.10.0-alpha.0", Schematic: vanilla},
			[]string{"is not a configured schematic", "is a prerelease", "is below MIN_VERSION", allowedStrict}},
		{"no minimum", Options{Schematics: []string{qga, vanilla}}, Request{Version: "v0.1.0", Schematic: vanilla}, nil},
		{"error names every configured schematic", Options{Schematics: []string{qga, vanilla}},
			Request{Version: "v1.13.9-rc.0"}, []string{"the configured schematics " + qga + ", " + vanilla + " (", "any version"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newLocalCloud(t)
			b := testBuilder(w, &fakeRemote{table: talosTable}, nil, tt.opts)
			ts, err := b.Targets(tt.req)
			if tt.want == nil {
				if err != nil || len(ts) == 0 {
					t.Fatalf("Targets(%+v) = %v, %v; want accepted", tt.req, ts, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Targets(%+v) = %v; want refused", tt.req, ts)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nlacks %q", err, w)
				}
			}
			// Refused before anything is looked up, let alone created.
			resp, err := b.Handle(context.Background(), tt.req)
			if err == nil || !strings.HasPrefix(err.Error(), "invalid request: ") || len(resp.Results) != 0 {
				t.Errorf("Handle = %+v, %v; want the invalid request error", resp, err)
			}
			if calls := w.cloud.callLog(); len(calls) != 0 {
				t.Errorf("a refused request called the cloud: %v", calls)
			}
			if n := len(w.factory.Requests()); n != 0 {
				t.Errorf("a refused request asked the factory %d times", n)
			}
		})
	}
}

// TestPolicyIsThePollers checks that a request's version is accepted
// exactly when the Poller's release policy could track it.
func TestPolicyIsThePollers(t *testing.T) {
	w := newLocalCloud(t)
	versions := []string{"v1.11.9", "v1.12.0-alpha.0", "v1.12.0-rc.1", "v1.12.0", "v1.12.1", "v1.13.9", "v1.14.0-beta.1", "v2.0.0"}
	for _, min := range []string{"", "v1.12.0", "v1.12.0-rc.1"} {
		for _, prereleases := range []bool{false, true} {
			pol, err := release.NewPolicy(2, false, prereleases, min)
			if err != nil {
				t.Fatal(err)
			}
			b := testBuilder(w, &fakeRemote{}, nil, Options{MinVersion: min, Prereleases: prereleases})
			for _, v := range versions {
				tv, err := talos.ParseVersion(v)
				if err != nil {
					t.Fatal(err)
				}
				eligible := pol.Eligible(release.Release{Version: tv, Prerelease: tv.Prerelease()})
				if _, err := b.Targets(Request{Version: v}); (err == nil) != eligible {
					t.Errorf("MIN_VERSION=%q TRACK_PRERELEASES=%v: %s accepted = %v (%v), the Poller's policy says %v",
						min, prereleases, v, err == nil, err, eligible)
				}
			}
		}
	}
}
