package fakehcloud

import (
	"net/http"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
)

// TestServerTypesMatchFacts reads the catalog through hcloud-go's
// ServerType client, as the builder does: disks, architectures and where
// each type is sold as GET /server_types answers (infra/README.md, the row
// on server types), deprecation per location.
func TestServerTypesMatchFacts(t *testing.T) {
	e := newEnv(t, Options{})
	all, err := e.client.ServerType.All(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*hcloud.ServerType{}
	for _, st := range all {
		byName[st.Name] = st
	}
	eu, us := []string{"fsn1", "nbg1", "hel1"}, []string{"ash", "hil"}
	tests := []struct {
		name       string
		arch       hcloud.Architecture
		disk       int
		sold       []string // available and not deprecated
		deprecated []string // listed, deprecated, unavailable
	}{
		{"cx23", hcloud.ArchitectureX86, 40, eu, nil},
		{"cpx22", hcloud.ArchitectureX86, 80, append(append([]string{}, eu...), "ash", "hil", "sin"), nil},
		{"cpx11", hcloud.ArchitectureX86, 40, us, eu},
		{"cax11", hcloud.ArchitectureARM, 40, eu, nil},
		{"cax21", hcloud.ArchitectureARM, 80, eu, nil},
	}
	for _, tt := range tests {
		st := byName[tt.name]
		if st == nil {
			t.Errorf("%s is not listed", tt.name)
			continue
		}
		if st.Architecture != tt.arch || st.Disk != tt.disk || st.IsDeprecated() {
			t.Errorf("%s: %s, %d GB, deprecated %v; want %s, %d GB, not deprecated as a whole",
				tt.name, st.Architecture, st.Disk, st.IsDeprecated(), tt.arch, tt.disk)
		}
		got := map[string]hcloud.ServerTypeLocation{}
		for _, l := range st.Locations {
			got[l.Location.Name] = l
		}
		if len(got) != len(tt.sold)+len(tt.deprecated) {
			t.Errorf("%s is listed in %d locations, want %d", tt.name, len(got), len(tt.sold)+len(tt.deprecated))
		}
		for _, name := range tt.sold {
			if l, ok := got[name]; !ok || !l.Available || l.IsDeprecated() {
				t.Errorf("%s in %s: listed %v, available %v, deprecated %v; want sold", tt.name, name, ok, l.Available, l.IsDeprecated())
			}
		}
		for _, name := range tt.deprecated {
			l, ok := got[name]
			if !ok || l.Available || !l.IsDeprecated() || !l.UnavailableAfter().Before(time.Now()) ||
				!l.DeprecationAnnounced().Before(l.UnavailableAfter()) {
				t.Errorf("%s in %s: listed %v, available %v, deprecation %+v; want deprecated and past unavailable_after",
					tt.name, name, ok, l.Available, l.Deprecation)
			}
		}
	}
	if st := byName["cx22"]; st != nil {
		t.Errorf("cx22 is listed: %+v", st)
	}

	// Where a type is listed but past its unavailable_after, creating it is
	// the same 422 as where it is not sold at all; where it is sold, fine.
	_, _, err = e.client.Server.Create(ctx(t), hcloud.ServerCreateOpts{Name: "eu", ServerType: &hcloud.ServerType{Name: "cpx11"},
		Image: &hcloud.Image{Name: "debian-13"}, Location: &hcloud.Location{Name: "nbg1"}})
	wantAPIError(t, err, hcloud.ErrorCodeInvalidInput, http.StatusUnprocessableEntity)
	srv := e.createServer(t, hcloud.ServerCreateOpts{Name: "us", ServerType: &hcloud.ServerType{Name: "cpx11"}})
	if srv.Location.Name != "ash" {
		t.Errorf("cpx11 without a location went to %s, want ash (the first location selling it)", srv.Location.Name)
	}
}

// TestSnapshotDiskIsTheServerTypeDisk: a snapshot's disk_size is its
// server's disk, as the real API reports it (infra/README.md, the row on a
// snapshot's disk_size), so a snapshot of an 80 GB type cannot create 40 GB
// servers.
func TestSnapshotDiskIsTheServerTypeDisk(t *testing.T) {
	e := newEnv(t, Options{})
	for _, tt := range []struct {
		typ, location string
		disk          float32
	}{
		{"cx23", "fsn1", 40},
		{"cpx22", "nbg1", 80},
		{"cpx11", "hil", 40},
		{"cax11", "hel1", 40},
		{"cax21", "fsn1", 80},
	} {
		srv := e.createServer(t, hcloud.ServerCreateOpts{Name: tt.typ, ServerType: &hcloud.ServerType{Name: tt.typ},
			Location: &hcloud.Location{Name: tt.location}, StartAfterCreate: hcloud.Ptr(false)})
		if srv.PrimaryDiskSize != int(tt.disk) {
			t.Errorf("%s: primary disk %d GB, want %v", tt.typ, srv.PrimaryDiskSize, tt.disk)
		}
		res, _, err := e.client.Server.CreateImage(ctx(t), srv, &hcloud.ServerCreateImageOpts{Type: hcloud.ImageTypeSnapshot})
		e.wait(t, res.Action, err)
		img, _, err := e.client.Image.GetByID(ctx(t), res.Image.ID)
		if err != nil || img.DiskSize != tt.disk {
			t.Errorf("%s: snapshot disk_size %v (%v), want %v", tt.typ, img.DiskSize, err, tt.disk)
		}
	}
}

// TestRootPasswordsAreCounted: only a create without SSH keys is answered
// with a root password (which real Hetzner mails), and each is counted.
func TestRootPasswordsAreCounted(t *testing.T) {
	e := newEnv(t, Options{})
	key, _, err := e.client.SSHKey.Create(ctx(t), hcloud.SSHKeyCreateOpts{Name: "k", PublicKey: newPublicKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	for i, tt := range []struct {
		keys []*hcloud.SSHKey
		want int
	}{
		{[]*hcloud.SSHKey{key}, 0},
		{nil, 1},
		{[]*hcloud.SSHKey{key}, 1},
		{nil, 2},
	} {
		res, _, err := e.client.Server.Create(ctx(t), hcloud.ServerCreateOpts{Name: "s" + string(rune('a'+i)),
			ServerType: &hcloud.ServerType{Name: "cx23"}, Image: &hcloud.Image{Name: "debian-13"}, SSHKeys: tt.keys})
		if err != nil {
			t.Fatal(err)
		}
		if (res.RootPassword != "") != (len(tt.keys) == 0) {
			t.Errorf("create %d with %d keys: root password %q", i, len(tt.keys), res.RootPassword)
		}
		if got := e.cloud.RootPasswords(); got != tt.want {
			t.Errorf("after create %d: RootPasswords() = %d, want %d", i, got, tt.want)
		}
	}
}

// TestServerLimit: at the project's server quota a create fails with
// resource_limit_exceeded (403 by default, 422 as Hetzner sometimes
// answers) and creates nothing; below it, creates succeed again.
func TestServerLimit(t *testing.T) {
	for _, tt := range []struct {
		name   string
		fault  Fault
		status int
	}{
		{"default 403", Fault{}, http.StatusForbidden},
		{"422", Fault{http.StatusUnprocessableEntity, "resource_limit_exceeded", "server limit exceeded"}, http.StatusUnprocessableEntity},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Options{Faults: Faults{ServerLimit: 1, ServerLimitError: tt.fault}})
			first := e.createServer(t, hcloud.ServerCreateOpts{Name: "one"})
			_, _, err := e.client.Server.Create(ctx(t), hcloud.ServerCreateOpts{Name: "two",
				ServerType: &hcloud.ServerType{Name: "cx23"}, Image: &hcloud.Image{Name: "debian-13"}})
			wantAPIError(t, err, hcloud.ErrorCodeResourceLimitExceeded, tt.status)
			if n := len(e.cloud.Servers()); n != 1 {
				t.Fatalf("%d servers, want 1", n)
			}
			del, _, err := e.client.Server.DeleteWithResult(ctx(t), first)
			e.wait(t, del.Action, err)
			e.createServer(t, hcloud.ServerCreateOpts{Name: "two"})
		})
	}
}
