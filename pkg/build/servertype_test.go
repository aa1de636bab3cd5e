package build

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
)

// TestPlanServers plans on the catalog the API lists (infra/README.md, Hetzner: 40 GB x86
// cx23 in the EU and cpx11 in the US, deprecated in the EU; 80 GB cpx22;
// 40 GB arm cax11, 80 GB cax21), and on catalogs changed from it.
func TestPlanServers(t *testing.T) {
	listed := newLocalCloud(t).catalog()
	deprecatedSmall := serverType("cx11", hcloud.ArchitectureX86, 20, nil)
	deprecatedSmall.Deprecation = &hcloud.DeprecationInfo{Announced: time.Now().Add(-time.Hour), UnavailableAfter: time.Now().Add(time.Hour)}
	goneEverywhere := serverType("cx12", hcloud.ArchitectureX86, 20, locations([]string{"fsn1"},
		&hcloud.DeprecationInfo{Announced: time.Now().Add(-time.Hour), UnavailableAfter: time.Now().Add(time.Hour)}))
	tests := []struct {
		name       string
		catalog    func() []*hcloud.ServerType // default: listed
		arch       string
		configured []string
		types      []string
		skipped    []string
		err        string
	}{
		{name: "bigger disk dropped", arch: "amd64", configured: []string{"cx23", "cpx22"},
			types: []string{"cx23"}, skipped: []string{"cpx22: 80 GB disk, bigger than the smallest x86 disk (40 GB)"}},
		{name: "order kept", arch: "amd64", configured: []string{"cpx11", "cpx22", "cx23"},
			types: []string{"cpx11", "cx23"}, skipped: []string{"cpx22: 80 GB disk"}},
		{name: "arm", arch: "arm64", configured: []string{"cax21", "cax11"},
			types: []string{"cax11"}, skipped: []string{"cax21: 80 GB disk, bigger than the smallest arm disk (40 GB)"}},
		{name: "wrong architecture and unknown", arch: "arm64", configured: []string{"cx23", "cax99", "cax11"},
			types: []string{"cax11"}, skipped: []string{"cx23: an x86 type, not arm", "cax99: unknown to the Hetzner API"}},
		{name: "none left", arch: "arm64", configured: []string{"cax21", "cx22"},
			skipped: []string{"cax21: 80 GB disk", "cx22: unknown"},
			err: "no configured server type builds arm64 snapshots on the smallest disk (40 GB, e.g. cax11) that every arm server can use: " +
				"cax21: 80 GB disk, bigger than the smallest arm disk (40 GB); cx22: unknown to the Hetzner API; set SERVER_TYPES_ARM64"},
		{name: "deprecated types do not set the smallest disk", arch: "amd64",
			catalog:    func() []*hcloud.ServerType { return append(slices.Clone(listed), deprecatedSmall, goneEverywhere) },
			configured: []string{"cx23", "cx11"}, types: []string{"cx23", "cx11"}},
		{name: "no type of the architecture", arch: "arm64", configured: []string{"cax11"},
			catalog: func() []*hcloud.ServerType {
				return slices.DeleteFunc(slices.Clone(listed), func(st *hcloud.ServerType) bool { return st.Architecture != hcloud.ArchitectureX86 })
			},
			err: "the Hetzner API lists no arm server type that is not deprecated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cat := listed
			if tt.catalog != nil {
				cat = tt.catalog()
			}
			p, err := planServers(cat, tt.arch, tt.configured)
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Errorf("err = %v\nwant %s", err, tt.err)
				}
			} else if err != nil || p.disk != 40 {
				t.Errorf("plan = %+v, %v; want 40 GB", p, err)
			}
			if got := typeNames(p.types); !slices.Equal(got, tt.types) {
				t.Errorf("types = %v, want %v", got, tt.types)
			}
			if len(p.skipped) != len(tt.skipped) {
				t.Fatalf("skipped = %+v, want %q", p.skipped, tt.skipped)
			}
			for i, s := range p.skipped {
				if got := s.name + ": " + s.reason; !strings.HasPrefix(got, tt.skipped[i]) {
					t.Errorf("skipped[%d] = %q, want %q…", i, got, tt.skipped[i])
				}
			}
		})
	}
}

func TestSold(t *testing.T) {
	listed := newLocalCloud(t).catalog()
	cpx11 := listed[slices.IndexFunc(listed, func(st *hcloud.ServerType) bool { return st.Name == "cpx11" })]
	for loc, want := range map[string]bool{"ash": true, "hil": true, "fsn1": false, "sin": false} {
		if got := sold(cpx11, loc, time.Now()); got != want {
			t.Errorf("cpx11 sold in %s = %v, want %v", loc, got, want)
		}
	}
	// Deprecated but before unavailable_after: still sold.
	fsn1 := cpx11.Locations[slices.IndexFunc(cpx11.Locations, func(l hcloud.ServerTypeLocation) bool { return l.Location.Name == "fsn1" })]
	if !fsn1.IsDeprecated() || !sold(cpx11, "fsn1", fsn1.UnavailableAfter().Add(-7*24*time.Hour)) {
		t.Error("cpx11 not sold in fsn1 a week before it became unavailable there")
	}
	if !sold(serverType("cx99", hcloud.ArchitectureX86, 40, nil), "fsn1", time.Now()) {
		t.Error("a type without per-location data is not tried")
	}
}

// TestNoUsableTypeCreatesNoServer: configured types that would all make
// snapshots with a bigger disk fail the build before any server exists.
func TestNoUsableTypeCreatesNoServer(t *testing.T) {
	w := newLocalCloud(t)
	b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{ServerTypes: map[string][]string{"arm64": {"cax21"}}})
	res := b.Build(context.Background(), Target{Version: "v1.13.9", Arch: "arm64", Schematic: target.Schematic}, Request{})
	if res.State != Failed || res.Step != StepServer || !strings.Contains(res.Error, "cax21: 80 GB disk") {
		t.Errorf("result = %+v", res)
	}
	if creates := w.cloud.createLog(); len(creates) != 0 {
		t.Errorf("servers created: %+v", creates)
	}
	if s, k, i := w.counts(); s+k+i != 0 {
		t.Errorf("left %d servers, %d keys, %d images", s, k, i)
	}
}

// TestServerLimitIsAClearFailure: the project's quota fails the build at
// once, naming the limit: no retry, no other location or type.
func TestServerLimitIsAClearFailure(t *testing.T) {
	w := newLocalCloud(t)
	w.emu.SetFaults(fakehcloud.Faults{Refuse: map[string]fakehcloud.Fault{"POST /v1/servers": fakehcloud.FaultServerLimitExceeded}})
	b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{ServerTypes: map[string][]string{"amd64": {"cx23", "cpx11"}},
		Locations: []string{"fsn1", "nbg1", "ash"}})
	res := b.Build(context.Background(), target, Request{})
	if res.State != Failed || !strings.HasPrefix(res.Error, "the project's server limit is reached") ||
		!strings.Contains(res.Error, "server limit exceeded") {
		t.Errorf("result = %+v", res)
	}
	if creates := w.cloud.createLog(); len(creates) != 1 {
		t.Errorf("%d creates, want 1: %+v", len(creates), creates)
	}
	if s, k, _ := w.counts(); s != 0 || k != 0 {
		t.Errorf("left %d servers, %d keys", s, k)
	}
}

// TestServerIsCreatedWithTheLeaseKey: a key at create keeps Hetzner from
// mailing a root password; the lease key is the build's.
func TestServerIsCreatedWithTheLeaseKey(t *testing.T) {
	w := newLocalCloud(t)
	b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{ServerImage: "ubuntu-24.04"})
	if res := b.Build(context.Background(), target, Request{}); res.State != Done {
		t.Fatalf("result = %+v", res)
	}
	creates := w.cloud.createLog()
	if len(creates) != 1 {
		t.Fatalf("creates = %+v", creates)
	}
	c := creates[0]
	if len(c.SSHKeys) != 1 || c.SSHKeys[0].Name != target.Name("") || c.SSHKeys[0].ID == 0 || c.Image != "ubuntu-24.04" {
		t.Errorf("created with keys %+v, image %s; want the lease key and the configured image", c.SSHKeys, c.Image)
	}
	if n := w.emu.RootPasswords(); n != 0 {
		t.Errorf("%d root passwords mailed", n)
	}
}

// serverType and locations make the server types the API does not list.
func serverType(name string, arch hcloud.Architecture, disk int, locs []hcloud.ServerTypeLocation) *hcloud.ServerType {
	return &hcloud.ServerType{Name: name, Architecture: arch, Disk: disk, Locations: locs}
}

func locations(names []string, deprecation *hcloud.DeprecationInfo) []hcloud.ServerTypeLocation {
	var out []hcloud.ServerTypeLocation
	for _, n := range names {
		out = append(out, hcloud.ServerTypeLocation{Location: &hcloud.Location{Name: n}, Available: deprecation == nil,
			DeprecatableResource: hcloud.DeprecatableResource{Deprecation: deprecation}})
	}
	return out
}
