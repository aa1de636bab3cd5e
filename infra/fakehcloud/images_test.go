package fakehcloud

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
)

// addSnapshots adds snapshots labelled like the builder's and the peers'.
func addSnapshots(t *testing.T, c *Cloud) map[string]int64 {
	t.Helper()
	ids := map[string]int64{}
	for name, labels := range map[string]map[string]string{
		"talos-13-amd":  {"os": "talos", "talos_version": "v1.13.9", "arch": "amd64", "managed": "yes"},
		"talos-12-amd":  {"os": "talos", "talos_version": "v1.12.4", "arch": "amd64", "managed": "yes"},
		"talos-13-arm":  {"os": "talos", "talos_version": "v1.13.9", "arch": "arm64"},
		"talos-manual":  {"os": "talos", "cluster": "prod"},
		"debian-custom": {"os": "debian"},
	} {
		arch := "x86"
		if labels["arch"] == "arm64" {
			arch = "arm"
		}
		img, err := c.AddImage(Image{Description: name, Architecture: arch, Labels: labels, Digest: "sha256:" + name})
		if err != nil {
			t.Fatalf("add %s: %v", name, err)
		}
		ids[name] = img.ID
	}
	return ids
}

func TestLabelSelectors(t *testing.T) {
	e := newEnv(t, Options{})
	ids := addSnapshots(t, e.cloud)
	tests := []struct {
		selector string
		want     []string // descriptions; nil with invalid
		invalid  bool
	}{
		{selector: "os=talos", want: []string{"talos-12-amd", "talos-13-amd", "talos-13-arm", "talos-manual"}},
		{selector: "os==talos,arch=amd64", want: []string{"talos-12-amd", "talos-13-amd"}},
		{selector: "os=talos,talos_version!=v1.13.9", want: []string{"talos-12-amd", "talos-manual"}},
		{selector: "managed", want: []string{"talos-12-amd", "talos-13-amd"}},
		{selector: "os=talos,!managed", want: []string{"talos-13-arm", "talos-manual"}},
		{selector: "talos_version in (v1.12.4, v1.13.9),arch=amd64", want: []string{"talos-12-amd", "talos-13-amd"}},
		{selector: "os notin (talos)", want: []string{"debian-custom"}},
		{selector: "cluster notin (prod,dev),os=talos", want: []string{"talos-12-amd", "talos-13-amd", "talos-13-arm"}},
		{selector: " os = debian ", want: []string{"debian-custom"}},
		{selector: "os=windows", want: []string{}},
		{selector: "os=", want: []string{}},
		{selector: "os in (talos", invalid: true},
		{selector: "os)=talos", invalid: true},
		{selector: "os=talos,", invalid: true},
		{selector: "os=tal os", invalid: true},
		{selector: "-os=talos", invalid: true},
		{selector: "!", invalid: true},
		{selector: "os in ((a))", invalid: true},
		{selector: "=talos", invalid: true},
	}
	for _, tt := range tests {
		t.Run(tt.selector, func(t *testing.T) {
			imgs, err := e.client.Image.AllWithOpts(ctx(t), hcloud.ImageListOpts{
				ListOpts: hcloud.ListOpts{LabelSelector: tt.selector}, Type: []hcloud.ImageType{hcloud.ImageTypeSnapshot},
			})
			if tt.invalid {
				wantAPIError(t, err, hcloud.ErrorCodeInvalidInput, http.StatusBadRequest)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := []string{}
			for _, img := range imgs {
				got = append(got, img.Description)
				if img.ID != ids[img.Description] {
					t.Errorf("image %s has ID %d, want %d", img.Description, img.ID, ids[img.Description])
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestListImagesFilters(t *testing.T) {
	e := newEnv(t, Options{})
	addSnapshots(t, e.cloud)
	system, err := e.client.Image.AllWithOpts(ctx(t), hcloud.ImageListOpts{Type: []hcloud.ImageType{hcloud.ImageTypeSystem}})
	if err != nil {
		t.Fatal(err)
	}
	withDeprecated, err := e.client.Image.AllWithOpts(ctx(t), hcloud.ImageListOpts{Type: []hcloud.ImageType{hcloud.ImageTypeSystem}, IncludeDeprecated: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(system) != 8 || len(withDeprecated) != 10 {
		t.Fatalf("system images: %d, with deprecated %d; want 8 and 10", len(system), len(withDeprecated))
	}
	arm, err := e.client.Image.AllWithOpts(ctx(t), hcloud.ImageListOpts{
		Type: []hcloud.ImageType{hcloud.ImageTypeSnapshot}, Architecture: []hcloud.Architecture{hcloud.ArchitectureARM},
		Status: []hcloud.ImageStatus{hcloud.ImageStatusAvailable},
	})
	if err != nil || len(arm) != 1 || arm[0].Description != "talos-13-arm" {
		t.Fatalf("arm snapshots: %v, %v", arm, err)
	}
	img, _, err := e.client.Image.GetForArchitecture(ctx(t), "ubuntu-24.04", hcloud.ArchitectureARM)
	if err != nil || img == nil || img.Architecture != hcloud.ArchitectureARM || img.Type != hcloud.ImageTypeSystem {
		t.Fatalf("ubuntu-24.04 arm: %+v, %v", img, err)
	}
	newest, _, err := e.client.Image.List(ctx(t), hcloud.ImageListOpts{
		Type: []hcloud.ImageType{hcloud.ImageTypeSystem}, Sort: []string{"created:desc"}, ListOpts: hcloud.ListOpts{PerPage: 1},
	})
	if err != nil || len(newest) != 1 || newest[0].Name != "debian-13" {
		t.Fatalf("newest system image: %v, %v", newest, err)
	}
	_, _, err = e.client.Image.List(ctx(t), hcloud.ImageListOpts{Sort: []string{"size"}})
	wantAPIError(t, err, hcloud.ErrorCodeInvalidInput, http.StatusBadRequest)
}

func TestImageUpdateAndDelete(t *testing.T) {
	e := newEnv(t, Options{})
	ids := addSnapshots(t, e.cloud)
	img := &hcloud.Image{ID: ids["talos-manual"]}
	got, _, err := e.client.Image.Update(ctx(t), img, hcloud.ImageUpdateOpts{
		Description: hcloud.Ptr("renamed"), Labels: map[string]string{"os": "talos"},
	})
	if err != nil || got.Description != "renamed" || len(got.Labels) != 1 {
		t.Fatalf("update: %+v, %v", got, err)
	}
	_, _, err = e.client.Image.Update(ctx(t), img, hcloud.ImageUpdateOpts{Labels: map[string]string{"k": strings.Repeat("v", 64)}})
	wantAPIError(t, err, hcloud.ErrorCodeInvalidInput, http.StatusBadRequest)
	if _, err := e.client.Image.Delete(ctx(t), img); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.cloud.Image(img.ID); ok {
		t.Fatal("image not deleted")
	}
	_, err = e.client.Image.Delete(ctx(t), img)
	wantAPIError(t, err, hcloud.ErrorCodeNotFound, http.StatusNotFound)
	_, err = e.client.Image.Delete(ctx(t), &hcloud.Image{ID: 114690387})
	wantAPIError(t, err, hcloud.ErrorCodeForbidden, http.StatusForbidden)
}

func TestBackupDiesWithServer(t *testing.T) {
	e := newEnv(t, Options{})
	srv := e.createServer(t, hcloud.ServerCreateOpts{Name: "box"})
	var imgs []*hcloud.Image
	for range 2 {
		res, _, err := e.client.Server.CreateImage(ctx(t), srv, &hcloud.ServerCreateImageOpts{Type: hcloud.ImageTypeBackup})
		e.wait(t, res.Action, err)
		imgs = append(imgs, res.Image)
	}
	if _, _, err := e.client.Image.Update(ctx(t), imgs[1], hcloud.ImageUpdateOpts{Type: hcloud.ImageTypeSnapshot}); err != nil {
		t.Fatal(err)
	}
	del, _, err := e.client.Server.DeleteWithResult(ctx(t), srv)
	e.wait(t, del.Action, err)
	if _, ok := e.cloud.Image(imgs[0].ID); ok {
		t.Error("backup outlived its server")
	}
	if v, ok := e.cloud.Image(imgs[1].ID); !ok || v.Type != "snapshot" || v.BoundTo != 0 {
		t.Errorf("converted backup: %+v, %v", v, ok)
	}
}

func TestAddImage(t *testing.T) {
	e := newEnv(t, Options{})
	ids := addSnapshots(t, e.cloud)
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	old, err := e.cloud.AddImage(Image{Description: "old", Created: created})
	if err != nil {
		t.Fatal(err)
	}
	digests := map[int64]string{}
	for _, img := range e.cloud.Images() {
		digests[img.ID] = img.Digest
		if img.ID == old.ID && !img.Created.Equal(created) {
			t.Errorf("created = %v, want %v", img.Created, created)
		}
	}
	if got := digests[ids["talos-13-arm"]]; got != "sha256:talos-13-arm" {
		t.Fatalf("digest = %q", got)
	}
	if _, err := e.cloud.AddImage(Image{Labels: map[string]string{"bad key": "x"}}); err == nil {
		t.Fatal("AddImage accepted an invalid label")
	}
}

func TestParseSelector(t *testing.T) {
	tests := []struct {
		in   string
		want selector
	}{
		{"", nil},
		{"a=b", selector{{"a", "=", []string{"b"}}}},
		{"a==b", selector{{"a", "=", []string{"b"}}}},
		{"a!=b", selector{{"a", "!=", []string{"b"}}}},
		{"example.com/a", selector{{"example.com/a", "exists", nil}}},
		{"!a", selector{{"a", "!exists", nil}}},
		{"a in (x, y),b notin (z)", selector{{"a", "in", []string{"x", "y"}}, {"b", "notin", []string{"z"}}}},
	}
	for _, tt := range tests {
		got, err := parseSelector(tt.in)
		if err != nil {
			t.Errorf("parse %q: %v", tt.in, err)
			continue
		}
		if len(got) != len(tt.want) {
			t.Errorf("parse %q = %+v, want %+v", tt.in, got, tt.want)
			continue
		}
		for i := range got {
			if got[i].key != tt.want[i].key || got[i].op != tt.want[i].op || !slices.Equal(got[i].values, tt.want[i].values) {
				t.Errorf("parse %q = %+v, want %+v", tt.in, got, tt.want)
			}
		}
	}
}
