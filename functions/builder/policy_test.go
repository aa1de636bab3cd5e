package main

import (
	"strings"
	"testing"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// TestRequestsOutsidePolicyCreateNothing invokes the deployed Builder with
// requests the local factory would serve but the configuration does not
// build: each is refused with what is allowed, before the function asks the
// cloud or the factory anything. A request at MIN_VERSION still builds.
func TestRequestsOutsidePolicyCreateNothing(t *testing.T) {
	w := newWorld(t, setup{env: map[string]string{"MIN_VERSION": "v1.13.0"}})
	allowed := "allowed: the configured schematics " + talos.QemuGuestAgentSchematic +
		" (SCHEMATIC_IDS, SCHEMATIC_CUSTOMIZATION), versions from MIN_VERSION v1.13.0 on, no prereleases (TRACK_PRERELEASES=false)"
	for _, tt := range []struct {
		payload, want      string
		schematic, version string // what the payload asks for, which the factory serves
	}{
		{`{"version":"v1.13.9","arch":"amd64","schematic":"` + talos.VanillaSchematic + `"}`,
			"schematic: " + talos.VanillaSchematic + " is not a configured schematic", talos.VanillaSchematic, "v1.13.9"},
		{`{"version":"v1.12.8","arch":"amd64"}`, "version: v1.12.8 is below MIN_VERSION v1.13.0",
			talos.QemuGuestAgentSchematic, "v1.12.8"},
		{`{"version":"v1.14.0-beta.1","arch":"amd64","force":true}`,
			"version: v1.14.0-beta.1 is a prerelease and prereleases are not tracked", talos.QemuGuestAgentSchematic, "v1.14.0-beta.1"},
	} {
		// Only the policy stands between the request and a snapshot that
		// consumers would boot: the factory serves the image.
		if _, _, err := w.Stack.Factory.Image(tt.schematic, tt.version, "amd64"); err != nil {
			t.Fatalf("the local factory does not serve what %s asks for: %v", tt.payload, err)
		}
		_, ferr := w.invoke(tt.payload)
		if !strings.HasPrefix(ferr, "invalid request: ") || !strings.Contains(ferr, tt.want) || !strings.Contains(ferr, allowed) {
			t.Errorf("%s: error %q\nwant %q and %q", tt.payload, ferr, tt.want, allowed)
		}
	}
	if reqs := w.Stack.Cloud.Requests(); len(reqs) != 0 {
		t.Errorf("refused requests reached the cloud: %+v", reqs)
	}
	if reqs := w.Stack.Factory.Requests(); len(reqs) != 0 {
		t.Errorf("refused requests reached the factory: %+v", reqs)
	}
	if s := w.snapshots(); len(s) != 0 {
		t.Errorf("snapshots: %+v", s)
	}
	w.checkNothingLeft()

	resp, ferr := w.invoke(`{"version":"v1.13.0","arch":"amd64"}`)
	if ferr != "" || len(resp.Results) != 1 || resp.Results[0].State != build.Done {
		t.Fatalf("a request at MIN_VERSION: %+v %s", resp, ferr)
	}
	w.checkDone(build.Target{Version: "v1.13.0", Arch: "amd64", Schematic: talos.QemuGuestAgentSchematic})
}
