package build

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
)

// A snapshot's disk is its build server's disk, and a snapshot only creates
// servers whose disk is at least as big ("image disk is bigger than server
// type disk"; infra/README.md, Hetzner). A snapshot built on an 80 GB type cannot create
// the 40 GB nodes most clusters use, so a build server's disk must be the
// smallest any server of the architecture has.

// hcloudArch is the API's name of a Talos architecture.
var hcloudArch = map[string]hcloud.Architecture{"amd64": hcloud.ArchitectureX86, "arm64": hcloud.ArchitectureARM}

// serverPlan is what a build server of one architecture may be.
type serverPlan struct {
	disk    int                  // GB, the architecture's smallest
	types   []*hcloud.ServerType // the configured types with that disk, in configured order
	skipped []skippedType        // the configured types that are not used, and why
}

type skippedType struct{ name, reason string }

// planServers picks, from the configured types of arch in their order, those
// whose disk is the smallest among the non-deprecated types of arch the API
// lists (catalog, from GET /server_types).
func planServers(catalog []*hcloud.ServerType, arch string, configured []string) (serverPlan, error) {
	want, ok := hcloudArch[arch]
	if !ok {
		return serverPlan{}, fmt.Errorf("no server types for architecture %q", arch)
	}
	var p serverPlan
	var smallest []string
	for _, st := range catalog {
		if st.Architecture != want || deprecated(st) {
			continue
		}
		switch {
		case p.disk == 0 || st.Disk < p.disk:
			p.disk, smallest = st.Disk, []string{st.Name}
		case st.Disk == p.disk:
			smallest = append(smallest, st.Name)
		}
	}
	if p.disk == 0 {
		return serverPlan{}, fmt.Errorf("the Hetzner API lists no %s server type that is not deprecated", want)
	}
	slices.Sort(smallest)
	for _, name := range configured {
		i := slices.IndexFunc(catalog, func(st *hcloud.ServerType) bool { return st.Name == name })
		var reason string
		switch {
		case i < 0:
			reason = "unknown to the Hetzner API"
		case catalog[i].Architecture != want:
			reason = fmt.Sprintf("an %s type, not %s", catalog[i].Architecture, want)
		case catalog[i].Disk > p.disk:
			reason = fmt.Sprintf("%d GB disk, bigger than the smallest %s disk (%d GB)", catalog[i].Disk, want, p.disk)
		default:
			p.types = append(p.types, catalog[i])
			continue
		}
		p.skipped = append(p.skipped, skippedType{name, reason})
	}
	if len(p.types) == 0 {
		var why []string
		for _, s := range p.skipped {
			why = append(why, s.name+": "+s.reason)
		}
		return p, fmt.Errorf("no configured server type builds %s snapshots on the smallest disk (%d GB, e.g. %s) that every %s server can use: %s; set SERVER_TYPES_%s",
			arch, p.disk, strings.Join(smallest, ", "), want, strings.Join(why, "; "), strings.ToUpper(arch))
	}
	return p, nil
}

// deprecated tells whether st is deprecated as a whole, or in every location
// listing it. Hetzner's API reference (server types, field locations) makes
// the per-location deprecation the one that counts; the type-wide one is
// being phased out (hcloud-go CHANGELOG v2.25.0).
func deprecated(st *hcloud.ServerType) bool {
	return st.IsDeprecated() || len(st.Locations) > 0 && !slices.ContainsFunc(st.Locations, func(l hcloud.ServerTypeLocation) bool {
		return !l.IsDeprecated()
	})
}

// sold tells whether st can be created in location: listed there and not
// past its unavailable_after. Without per-location data the create decides.
func sold(st *hcloud.ServerType, location string, now time.Time) bool {
	if len(st.Locations) == 0 {
		return true
	}
	i := slices.IndexFunc(st.Locations, func(l hcloud.ServerTypeLocation) bool {
		return l.Location != nil && l.Location.Name == location
	})
	return i >= 0 && (!st.Locations[i].IsDeprecated() || now.Before(st.Locations[i].UnavailableAfter()))
}

func typeNames(ts []*hcloud.ServerType) []string {
	out := make([]string, len(ts))
	for i, st := range ts {
		out[i] = st.Name
	}
	return out
}
