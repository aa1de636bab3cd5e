package fakehcloud

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"
)

// The catalog: what Hetzner sells in 2026, as far as the builder cares.
// Names, disks, architectures and where each type is sold follow the API's
// GET /server_types (infra/README.md, the row on server types and where each
// is sold); IDs, prices and dates are plausible, not authoritative. cx22 is gone (removed January 2026:
// not listed, creating one is invalid_input); cpx11 is still sold in the US
// but no longer in the EU; CX and CAX are sold in the EU only.

var locations = []schema.Location{
	{ID: 1, Name: "fsn1", Description: "Falkenstein DC Park 1", Country: "DE", City: "Falkenstein", Latitude: 50.47612, Longitude: 12.370071, NetworkZone: "eu-central"},
	{ID: 2, Name: "nbg1", Description: "Nuremberg DC Park 1", Country: "DE", City: "Nuremberg", Latitude: 49.452102, Longitude: 11.076665, NetworkZone: "eu-central"},
	{ID: 3, Name: "hel1", Description: "Helsinki DC Park 1", Country: "FI", City: "Helsinki", Latitude: 60.169855, Longitude: 24.938379, NetworkZone: "eu-central"},
	{ID: 4, Name: "ash", Description: "Ashburn, VA", Country: "US", City: "Ashburn, VA", Latitude: 39.045821, Longitude: -77.487073, NetworkZone: "us-east"},
	{ID: 5, Name: "hil", Description: "Hillsboro, OR", Country: "US", City: "Hillsboro, OR", Latitude: 45.54222, Longitude: -122.95194, NetworkZone: "us-west"},
	{ID: 6, Name: "sin", Description: "Singapore", Country: "SG", City: "Singapore", Latitude: 1.283333, Longitude: 103.833333, NetworkZone: "ap-southeast"},
}

// datacenterNames are the (deprecated) datacenters, one per location.
var datacenterNames = map[string]struct {
	id   int64
	name string
}{
	"fsn1": {4, "fsn1-dc14"}, "nbg1": {2, "nbg1-dc3"}, "hel1": {3, "hel1-dc2"},
	"ash": {5, "ash-dc1"}, "hil": {6, "hil-dc1"}, "sin": {7, "sin-dc1"},
}

var (
	euLocations  = []string{"fsn1", "nbg1", "hel1"}
	usLocations  = []string{"ash", "hil"}
	allLocations = []string{"fsn1", "nbg1", "hel1", "ash", "hil", "sin"}
)

// serverTypeSpec is a server type and the locations listing it.
type serverTypeSpec struct {
	schema.ServerType
	locations []typeLocation
	// hourly and monthly net prices in EUR.
	hourly, monthly float64
}

// typeLocation is a location listing a server type. The API reference
// (https://docs.hetzner.cloud/reference/cloud#server-types, field
// locations; changelog 2025-09-24 "per location server types", quoted in
// hcloud-go's CHANGELOG v2.25.0) says a type is only supported in the
// locations listed, deprecated in one whose deprecation is set, and
// unavailable there once deprecation.unavailable_after is past. The
// type-wide deprecation field is deprecated in favour of these.
type typeLocation struct {
	name        string
	deprecation *schema.DeprecationInfo
}

// sold tells whether t can be created in location now.
func (t serverTypeSpec) sold(location string) bool {
	for _, l := range t.locations {
		if l.name == location {
			return l.deprecation == nil || time.Now().Before(l.deprecation.UnavailableAfter)
		}
	}
	return false
}

// firstSold is where a create without location places t.
func (t serverTypeSpec) firstSold() string {
	for _, l := range t.locations {
		if t.sold(l.name) {
			return l.name
		}
	}
	return ""
}

func at(names []string, deprecation *schema.DeprecationInfo) []typeLocation {
	out := make([]typeLocation, len(names))
	for i, n := range names {
		out[i] = typeLocation{name: n, deprecation: deprecation}
	}
	return out
}

// cpx11's end in the EU: listed there with a deprecation that is past, so
// unavailable; dates illustrative.
var cpx11EU = &schema.DeprecationInfo{Announced: date(2025, 10, 16), UnavailableAfter: date(2026, 1, 1)}

var serverTypes = []serverTypeSpec{
	{schema.ServerType{ID: 22, Name: "cpx11", Description: "CPX11", Category: "regular_purpose", Cores: 2, Memory: 2, Disk: 40, StorageType: "local", CPUType: "shared", Architecture: "x86"},
		append(at(euLocations, cpx11EU), at(usLocations, nil)...), 0.0080, 4.99},
	{schema.ServerType{ID: 45, Name: "cax11", Description: "CAX11", Category: "cost_optimized", Cores: 2, Memory: 4, Disk: 40, StorageType: "local", CPUType: "shared", Architecture: "arm"}, at(euLocations, nil), 0.0064, 3.99},
	{schema.ServerType{ID: 93, Name: "cax21", Description: "CAX21", Category: "cost_optimized", Cores: 4, Memory: 8, Disk: 80, StorageType: "local", CPUType: "shared", Architecture: "arm"}, at(euLocations, nil), 0.0104, 6.49},
	{schema.ServerType{ID: 114, Name: "cx23", Description: "CX23", Category: "cost_optimized", Cores: 2, Memory: 4, Disk: 40, StorageType: "local", CPUType: "shared", Architecture: "x86"}, at(euLocations, nil), 0.0056, 3.49},
	{schema.ServerType{ID: 116, Name: "cpx22", Description: "CPX22", Category: "regular_purpose", Cores: 2, Memory: 4, Disk: 80, StorageType: "local", CPUType: "shared", Architecture: "x86"}, at(allLocations, nil), 0.0096, 5.99},
}

// systemImage is an operating system image offered for both architectures.
type systemImage struct {
	name, flavor, version, description string
	ids                                map[string]int64 // by architecture
	created, deprecated                time.Time
}

var systemImages = []systemImage{
	{"ubuntu-20.04", "ubuntu", "20.04", "Ubuntu 20.04", map[string]int64{"x86": 15512617, "arm": 103908130}, date(2020, 4, 23), date(2025, 6, 1)},
	{"ubuntu-22.04", "ubuntu", "22.04", "Ubuntu 22.04", map[string]int64{"x86": 67794396, "arm": 103908070}, date(2022, 4, 21), time.Time{}},
	{"ubuntu-24.04", "ubuntu", "24.04", "Ubuntu 24.04", map[string]int64{"x86": 161547269, "arm": 161547270}, date(2024, 4, 25), time.Time{}},
	{"debian-12", "debian", "12", "Debian 12", map[string]int64{"x86": 114690387, "arm": 114690389}, date(2023, 6, 13), time.Time{}},
	{"debian-13", "debian", "13", "Debian 13", map[string]int64{"x86": 310557660, "arm": 310557661}, date(2025, 8, 12), time.Time{}},
}

func date(y int, m time.Month, d int) time.Time { return time.Date(y, m, d, 8, 0, 0, 0, time.UTC) }

// systemImageRecords returns the system images as image records.
func systemImageRecords() []*Image {
	var out []*Image
	for _, si := range systemImages {
		for _, arch := range []string{"x86", "arm"} {
			out = append(out, &Image{
				ID: si.ids[arch], Type: "system", Status: "available", Name: si.name,
				Description: si.description, Architecture: arch, OSFlavor: si.flavor, OSVersion: si.version,
				DiskSize: 5, Labels: map[string]string{}, Created: si.created, Deprecated: si.deprecated,
			})
		}
	}
	return out
}

func findLocation(idOrName string) (schema.Location, bool) {
	for _, l := range locations {
		if l.Name == idOrName || strconv.FormatInt(l.ID, 10) == idOrName {
			return l, true
		}
	}
	return schema.Location{}, false
}

func findServerType(ref schema.IDOrName) (serverTypeSpec, bool) {
	for _, t := range serverTypes {
		if (ref.ID != 0 && t.ID == ref.ID) || (ref.Name != "" && t.Name == ref.Name) {
			return t, true
		}
	}
	return serverTypeSpec{}, false
}

func price(net float64) schema.Price {
	return schema.Price{Net: fmt.Sprintf("%.10f", net), Gross: fmt.Sprintf("%.10f", net*1.19)}
}

// serverTypeSchema renders t with its prices and, per location, its
// deprecation and whether it can be placed there now. The type-wide
// deprecation stays null: no type of the catalog is deprecated everywhere.
func (c *Cloud) serverTypeSchema(t serverTypeSpec) schema.ServerType {
	out := t.ServerType
	out.Prices = nil
	out.Locations = nil
	for _, tl := range t.locations {
		l, _ := findLocation(tl.name)
		traffic := uint64(1) << 40 // 1 TiB outside the EU
		if slices.Contains(euLocations, tl.name) {
			traffic = 20 << 40
		}
		out.Prices = append(out.Prices, schema.PricingServerTypePrice{
			Location: tl.name, PriceHourly: price(t.hourly), PriceMonthly: price(t.monthly),
			IncludedTraffic: traffic, PricePerTBTraffic: price(1),
		})
		sold := t.sold(tl.name)
		loc := schema.ServerTypeLocation{
			ID: l.ID, Name: tl.name, Available: sold && !c.faults.unavailable(Placement{t.Name, tl.name}),
			Recommended: sold && tl.deprecation == nil,
		}
		if tl.deprecation != nil {
			d := *tl.deprecation
			loc.Deprecation = &d
		}
		out.Locations = append(out.Locations, loc)
	}
	return out
}

func (c *Cloud) listServerTypes(r *http.Request) (int, any, error) {
	q := r.URL.Query()
	var out []serverTypeSpec
	for _, t := range serverTypes {
		if matchAny(q, "name", t.Name) {
			out = append(out, t)
		}
	}
	if err := sortItems(out, q["sort"], sortFields[serverTypeSpec]{
		"id":   func(a, b serverTypeSpec) int { return cmp.Compare(a.ID, b.ID) },
		"name": func(a, b serverTypeSpec) int { return cmp.Compare(a.Name, b.Name) },
	}); err != nil {
		return 0, nil, err
	}
	return listResponse(q, "server_types", out, c.serverTypeSchema)
}
