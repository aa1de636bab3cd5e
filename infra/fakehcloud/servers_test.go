package fakehcloud

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
)

// The builder's path: create stopped, enable rescue, power on into rescue,
// reset, power off, snapshot, delete.
func TestRescueBuildLifecycle(t *testing.T) {
	e := newEnv(t, Options{})
	pub := newPublicKey(t)
	key, _, err := e.client.SSHKey.Create(ctx(t), hcloud.SSHKeyCreateOpts{Name: "build-key", PublicKey: pub})
	if err != nil {
		t.Fatalf("create key: %v", err)
	}

	res, _, err := e.client.Server.Create(ctx(t), hcloud.ServerCreateOpts{
		Name: "talos-v1-13-9-amd64", ServerType: &hcloud.ServerType{Name: "cx23"},
		Image: &hcloud.Image{Name: "debian-12"}, Location: &hcloud.Location{Name: "fsn1"},
		SSHKeys: []*hcloud.SSHKey{key}, StartAfterCreate: hcloud.Ptr(false),
		Labels: map[string]string{"step": "server"},
	})
	if err != nil {
		t.Fatalf("create server: %v", err)
	}
	if res.RootPassword != "" || len(res.NextActions) != 0 || res.Action.Command != "create_server" {
		t.Fatalf("create result: password %q, next %d, action %q", res.RootPassword, len(res.NextActions), res.Action.Command)
	}
	if res.Server.Status != hcloud.ServerStatusInitializing || res.Server.PublicNet.IPv4.IP.String() == "" {
		t.Fatalf("new server: status %s ip %v", res.Server.Status, res.Server.PublicNet.IPv4.IP)
	}
	id := res.Server.ID
	e.wait(t, res.Action, nil)
	srv := e.getServer(t, id)
	if srv.Status != hcloud.ServerStatusOff || srv.Image.Name != "debian-12" || srv.Image.Architecture != hcloud.ArchitectureX86 {
		t.Fatalf("created server: status %s image %+v", srv.Status, srv.Image)
	}

	rescue, _, err := e.client.Server.EnableRescue(ctx(t), srv, hcloud.ServerEnableRescueOpts{
		Type: hcloud.ServerRescueTypeLinux64, SSHKeys: []*hcloud.SSHKey{key},
	})
	e.wait(t, rescue.Action, err)
	if rescue.RootPassword == "" || rescue.Action.Command != "enable_rescue" {
		t.Fatalf("enable rescue: %+v", rescue)
	}
	if srv = e.getServer(t, id); !srv.RescueEnabled || srv.Status != hcloud.ServerStatusOff {
		t.Fatalf("rescue enabled: %v, status %s (enabling must not boot)", srv.RescueEnabled, srv.Status)
	}
	if slices.Contains(e.machines.ops(id), "boot") {
		t.Fatal("enable_rescue booted the server")
	}

	a, _, err := e.client.Server.Poweron(ctx(t), srv)
	e.wait(t, a, err)
	if srv = e.getServer(t, id); srv.Status != hcloud.ServerStatusRunning || srv.RescueEnabled {
		t.Fatalf("after poweron: status %s, rescue %v; want running, rescue used up", srv.Status, srv.RescueEnabled)
	}
	boots := e.machines.boots(id)
	if len(boots) != 1 || boots[0] == nil || !slices.Equal(boots[0].AuthorizedKeys, []string{strings.TrimSpace(pub)}) {
		t.Fatalf("boots = %+v, want one rescue boot with the key", boots)
	}

	a, _, err = e.client.Server.Reset(ctx(t), srv)
	e.wait(t, a, err)
	if boots = e.machines.boots(id); len(boots) != 2 || boots[1] != nil {
		t.Fatalf("reset boots = %+v, want a second boot from disk", boots)
	}

	a, _, err = e.client.Server.Poweroff(ctx(t), srv)
	e.wait(t, a, err)
	if srv = e.getServer(t, id); srv.Status != hcloud.ServerStatusOff {
		t.Fatalf("after poweroff: %s", srv.Status)
	}

	img, _, err := e.client.Server.CreateImage(ctx(t), srv, &hcloud.ServerCreateImageOpts{
		Type: hcloud.ImageTypeSnapshot, Description: hcloud.Ptr("talos v1.13.9"),
		Labels: map[string]string{"os": "talos", "talos_version": "v1.13.9"},
	})
	if err != nil {
		t.Fatalf("create image: %v", err)
	}
	if img.Image.Status != hcloud.ImageStatusCreating || img.Image.CreatedFrom.ID != id {
		t.Fatalf("new image: %+v", img.Image)
	}
	e.wait(t, img.Action, nil)
	got, _, err := e.client.Image.GetByID(ctx(t), img.Image.ID)
	if err != nil || got.Status != hcloud.ImageStatusAvailable || got.Labels["os"] != "talos" ||
		got.Architecture != hcloud.ArchitectureX86 || got.ImageSize == 0 || got.DiskSize != 40 {
		t.Fatalf("snapshot: %+v, %v", got, err)
	}
	if view, _ := e.cloud.Image(img.Image.ID); view.Digest != fakeDigest(id) {
		t.Fatalf("digest = %q, want %q", view.Digest, fakeDigest(id))
	}

	del, _, err := e.client.Server.DeleteWithResult(ctx(t), srv)
	e.wait(t, del.Action, err)
	if s := e.listedServer(t, id); s != nil {
		t.Fatalf("deleted server still listed: %v", s)
	}
	want := []string{"create", "provision", "boot", "halt", "boot", "halt", "save", "delete"}
	if ops := e.machines.ops(id); !slices.Equal(ops, want) {
		t.Fatalf("machine calls = %v, want %v", ops, want)
	}
	// The snapshot outlives its server.
	if _, ok := e.cloud.Image(img.Image.ID); !ok {
		t.Fatal("snapshot deleted with its server")
	}
}

func TestCreateServerStartsByDefault(t *testing.T) {
	e := newEnv(t, Options{})
	res, _, err := e.client.Server.Create(ctx(t), hcloud.ServerCreateOpts{
		Name: "arm-box", ServerType: &hcloud.ServerType{Name: "cax11"}, Image: &hcloud.Image{Name: "ubuntu-24.04"},
	})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if res.RootPassword == "" {
		t.Error("no root password without SSH keys")
	}
	if len(res.NextActions) != 1 || res.NextActions[0].Command != "start_server" {
		t.Fatalf("next actions = %+v", res.NextActions)
	}
	if err := e.client.Action.WaitFor(ctx(t), append(res.NextActions, res.Action)...); err != nil {
		t.Fatal(err)
	}
	srv := e.getServer(t, res.Server.ID)
	if srv.Status != hcloud.ServerStatusRunning || srv.Image.Architecture != hcloud.ArchitectureARM ||
		srv.Location.Name != "fsn1" || srv.ServerType.Name != "cax11" {
		t.Fatalf("server: status %s arch %s location %s", srv.Status, srv.Image.Architecture, srv.Location.Name)
	}
	if boots := e.machines.boots(srv.ID); len(boots) != 1 || boots[0] != nil {
		t.Fatalf("boots = %+v, want one boot from disk", boots)
	}
}

func TestCreateServerRejects(t *testing.T) {
	e := newEnv(t, Options{Faults: Faults{Unavailable: []Placement{{"cax21", "hel1"}}}})
	e.createServer(t, hcloud.ServerCreateOpts{Name: "taken"})
	arm, _, err := e.client.Image.GetByNameAndArchitecture(ctx(t), "debian-12", hcloud.ArchitectureARM)
	if err != nil || arm == nil {
		t.Fatalf("arm image: %v", err)
	}
	tests := []struct {
		name   string
		opts   hcloud.ServerCreateOpts
		code   hcloud.ErrorCode
		status int
	}{
		{"duplicate name", hcloud.ServerCreateOpts{Name: "taken"}, hcloud.ErrorCodeUniquenessError, http.StatusConflict},
		{"not a hostname", hcloud.ServerCreateOpts{Name: "under_score"}, hcloud.ErrorCodeInvalidInput, http.StatusBadRequest},
		{"dash at end", hcloud.ServerCreateOpts{Name: "bad-"}, hcloud.ErrorCodeInvalidInput, http.StatusBadRequest},
		{"removed cx22", hcloud.ServerCreateOpts{Name: "a", ServerType: &hcloud.ServerType{Name: "cx22"}}, hcloud.ErrorCodeInvalidInput, http.StatusBadRequest},
		{"cpx11 in the EU", hcloud.ServerCreateOpts{Name: "a", ServerType: &hcloud.ServerType{Name: "cpx11"}, Location: &hcloud.Location{Name: "fsn1"}}, hcloud.ErrorCodeInvalidInput, http.StatusUnprocessableEntity},
		{"cx in ash", hcloud.ServerCreateOpts{Name: "a", Location: &hcloud.Location{Name: "ash"}}, hcloud.ErrorCodeInvalidInput, http.StatusUnprocessableEntity},
		{"cax in sin", hcloud.ServerCreateOpts{Name: "a", ServerType: &hcloud.ServerType{Name: "cax11"}, Location: &hcloud.Location{Name: "sin"}}, hcloud.ErrorCodeInvalidInput, http.StatusUnprocessableEntity},
		{"unknown location", hcloud.ServerCreateOpts{Name: "a", Location: &hcloud.Location{Name: "mars1"}}, hcloud.ErrorCodeInvalidInput, http.StatusBadRequest},
		{"unknown image", hcloud.ServerCreateOpts{Name: "a", Image: &hcloud.Image{Name: "windows-11"}}, hcloud.ErrorCodeInvalidInput, http.StatusBadRequest},
		{"arm image on x86", hcloud.ServerCreateOpts{Name: "a", Image: &hcloud.Image{ID: arm.ID}}, hcloud.ErrorCodeInvalidInput, http.StatusBadRequest},
		{"unknown ssh key", hcloud.ServerCreateOpts{Name: "a", SSHKeys: []*hcloud.SSHKey{{ID: 1}}}, hcloud.ErrorCodeInvalidInput, http.StatusBadRequest},
		{"bad label", hcloud.ServerCreateOpts{Name: "a", Labels: map[string]string{"-x": "y"}}, hcloud.ErrorCodeInvalidInput, http.StatusBadRequest},
		{"out of stock", hcloud.ServerCreateOpts{Name: "a", ServerType: &hcloud.ServerType{Name: "cax21"}, Location: &hcloud.Location{Name: "hel1"}}, hcloud.ErrorCodeResourceUnavailable, http.StatusPreconditionFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.opts.ServerType == nil {
				tt.opts.ServerType = &hcloud.ServerType{Name: "cx23"}
			}
			if tt.opts.Image == nil {
				tt.opts.Image = &hcloud.Image{Name: "debian-12"}
			}
			_, _, err := e.client.Server.Create(ctx(t), tt.opts)
			wantAPIError(t, err, tt.code, tt.status)
		})
	}
	if n := len(e.cloud.Servers()); n != 1 {
		t.Fatalf("%d servers after rejected creates, want 1", n)
	}
	// The same type elsewhere is in stock.
	e.createServer(t, hcloud.ServerCreateOpts{Name: "arm", ServerType: &hcloud.ServerType{Name: "cax21"}, Location: &hcloud.Location{Name: "nbg1"}})
	st, _, err := e.client.ServerType.GetByName(ctx(t), "cax21")
	if err != nil || st == nil {
		t.Fatalf("server type: %v", err)
	}
	for _, l := range st.Locations {
		if want := l.Location.Name != "hel1"; l.Available != want {
			t.Errorf("cax21 available in %s = %v, want %v", l.Location.Name, l.Available, want)
		}
	}
}

func TestUpdateServerReplacesLabels(t *testing.T) {
	e := newEnv(t, Options{})
	srv := e.createServer(t, hcloud.ServerCreateOpts{Name: "box", Labels: map[string]string{"a": "1", "b": "2"}})
	got, _, err := e.client.Server.Update(ctx(t), srv, hcloud.ServerUpdateOpts{Labels: map[string]string{"c": "3"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Labels) != 1 || got.Labels["c"] != "3" {
		t.Fatalf("labels after PUT = %v, want only c=3", got.Labels)
	}
	// Without labels the set stays; the name changes.
	got, _, err = e.client.Server.Update(ctx(t), srv, hcloud.ServerUpdateOpts{Name: "box2"})
	if err != nil || got.Name != "box2" || got.Labels["c"] != "3" {
		t.Fatalf("rename: %+v, %v", got, err)
	}
	_, _, err = e.client.Server.Update(ctx(t), srv, hcloud.ServerUpdateOpts{Labels: map[string]string{"hetzner.cloud/x": "y"}})
	wantAPIError(t, err, hcloud.ErrorCodeInvalidInput, http.StatusBadRequest)
	other := e.createServer(t, hcloud.ServerCreateOpts{Name: "other"})
	_, _, err = e.client.Server.Update(ctx(t), other, hcloud.ServerUpdateOpts{Name: "box2"})
	wantAPIError(t, err, hcloud.ErrorCodeUniquenessError, http.StatusConflict)
}

func TestLockedWhileActionRuns(t *testing.T) {
	e := newEnv(t, Options{ActionDurations: map[string]time.Duration{"create_image": 300 * time.Millisecond}})
	srv := e.createServer(t, hcloud.ServerCreateOpts{Name: "box", StartAfterCreate: hcloud.Ptr(false)})
	img, _, err := e.client.Server.CreateImage(ctx(t), srv, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := e.getServer(t, srv.ID); !s.Locked {
		t.Error("server not shown locked during create_image")
	}
	_, _, err = e.client.Server.Poweron(ctx(t), srv)
	wantAPIError(t, err, hcloud.ErrorCodeLocked, http.StatusLocked)
	_, _, err = e.client.Server.DeleteWithResult(ctx(t), srv)
	wantAPIError(t, err, hcloud.ErrorCodeLocked, http.StatusLocked)
	_, err = e.client.Image.Delete(ctx(t), img.Image)
	wantAPIError(t, err, hcloud.ErrorCodeLocked, http.StatusLocked)
	// Labels are not an action: the builder checkpoints while it waits.
	if _, _, err := e.client.Server.Update(ctx(t), srv, hcloud.ServerUpdateOpts{Labels: map[string]string{"step": "wait"}}); err != nil {
		t.Fatalf("update while locked: %v", err)
	}
	var progress []int
	err = e.client.Action.WaitForFunc(ctx(t), func(a *hcloud.Action) error {
		progress = append(progress, a.Progress)
		return nil
	}, img.Action)
	if err != nil {
		t.Fatal(err)
	}
	if len(progress) < 2 || progress[len(progress)-1] != 100 || !slices.IsSorted(progress) {
		t.Fatalf("progress = %v, want rising to 100", progress)
	}
	a, _, err := e.client.Server.Poweron(ctx(t), srv)
	e.wait(t, a, err)

	// The create action itself locks a new server.
	res, _, err := e.client.Server.Create(ctx(t), hcloud.ServerCreateOpts{
		Name: "fresh", ServerType: &hcloud.ServerType{Name: "cx23"}, Image: &hcloud.Image{Name: "debian-12"},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = e.client.Server.EnableRescue(ctx(t), res.Server, hcloud.ServerEnableRescueOpts{Type: hcloud.ServerRescueTypeLinux64})
	wantAPIError(t, err, hcloud.ErrorCodeLocked, http.StatusLocked)
}

func TestListServersFiltersAndPages(t *testing.T) {
	e := newEnv(t, Options{ActionDuration: time.Millisecond})
	for i := range 61 {
		role := "worker"
		if i%3 == 0 {
			role = "build"
		}
		_, _, err := e.client.Server.Create(ctx(t), hcloud.ServerCreateOpts{
			Name: "s" + string(rune('a'+i/26)) + string(rune('a'+i%26)), ServerType: &hcloud.ServerType{Name: "cx23"},
			Image: &hcloud.Image{Name: "debian-12"}, StartAfterCreate: hcloud.Ptr(false), Labels: map[string]string{"role": role},
		})
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
	}
	all, err := e.client.Server.AllWithOpts(ctx(t), hcloud.ServerListOpts{ListOpts: hcloud.ListOpts{PerPage: 25}})
	if err != nil || len(all) != 61 {
		t.Fatalf("all servers: %d, %v", len(all), err)
	}
	if n := e.cloud.CountRequests("GET", "/v1/servers"); n != 3 {
		t.Errorf("pages fetched = %d, want 3", n)
	}
	builds, err := e.client.Server.AllWithOpts(ctx(t), hcloud.ServerListOpts{ListOpts: hcloud.ListOpts{LabelSelector: "role=build"}})
	if err != nil || len(builds) != 21 {
		t.Fatalf("role=build: %d, %v", len(builds), err)
	}
	byName, _, err := e.client.Server.Get(ctx(t), "sbc")
	if err != nil || byName == nil || byName.Name != "sbc" {
		t.Fatalf("get by name: %v, %v", byName, err)
	}
	sorted, _, err := e.client.Server.List(ctx(t), hcloud.ServerListOpts{Sort: []string{"name:desc"}, ListOpts: hcloud.ListOpts{PerPage: 2}})
	if err != nil || len(sorted) != 2 || sorted[0].Name != "sci" {
		t.Fatalf("sorted: %v, %v", sorted, err)
	}
	eventually(t, "servers off", func() bool {
		off, err := e.client.Server.AllWithOpts(ctx(t), hcloud.ServerListOpts{Status: []hcloud.ServerStatus{hcloud.ServerStatusOff}})
		return err == nil && len(off) == 61
	})
}

func TestGuestPower(t *testing.T) {
	e := newEnv(t, Options{})
	key, _, err := e.client.SSHKey.Create(ctx(t), hcloud.SSHKeyCreateOpts{Name: "k", PublicKey: newPublicKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	srv := e.createServer(t, hcloud.ServerCreateOpts{Name: "box"})
	rescue, _, err := e.client.Server.EnableRescue(ctx(t), srv, hcloud.ServerEnableRescueOpts{Type: hcloud.ServerRescueTypeLinux64, SSHKeys: []*hcloud.SSHKey{key}})
	e.wait(t, rescue.Action, err)

	e.cloud.GuestPower(srv.ID, "reboot")
	eventually(t, "rescue boot after guest reboot", func() bool {
		boots := e.machines.boots(srv.ID)
		return len(boots) == 2 && boots[1] != nil
	})
	if s := e.getServer(t, srv.ID); s.Status != hcloud.ServerStatusRunning || s.RescueEnabled {
		t.Fatalf("after guest reboot: %s, rescue %v", s.Status, s.RescueEnabled)
	}
	e.cloud.GuestPower(srv.ID, "poweroff")
	if s := e.getServer(t, srv.ID); s.Status != hcloud.ServerStatusOff {
		t.Fatalf("after guest poweroff: %s", s.Status)
	}
	if hasOp(e.machines.ops(srv.ID), "halt") {
		t.Error("guest poweroff halted the machine again")
	}
}

func TestDefaultMachines(t *testing.T) {
	c := New(Options{ActionDuration: time.Millisecond})
	url, err := c.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	client := newClient(url, DefaultToken, 0)
	var ips []string
	for _, name := range []string{"one", "two"} {
		res, _, err := client.Server.Create(ctx(t), hcloud.ServerCreateOpts{
			Name: name, ServerType: &hcloud.ServerType{Name: "cpx22"}, Image: &hcloud.Image{Name: "debian-12"},
			Location: &hcloud.Location{Name: "ash"},
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := client.Action.WaitFor(ctx(t), append(res.NextActions, res.Action)...); err != nil {
			t.Fatal(err)
		}
		ips = append(ips, res.Server.PublicNet.IPv4.IP.String())
		img, _, err := client.Server.CreateImage(ctx(t), res.Server, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := client.Action.WaitFor(ctx(t), img.Action); err != nil {
			t.Fatal(err)
		}
		if v, _ := c.Image(img.Image.ID); v.Digest != emptyDigest {
			t.Fatalf("digest %q, want the empty digest", v.Digest)
		}
	}
	if !slices.Equal(ips, []string{"127.77.0.1", "127.77.0.2"}) {
		t.Fatalf("ips = %v", ips)
	}
}
