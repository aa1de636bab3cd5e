package poll

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
)

// memCloud is a Hetzner project in memory that answers label selectors of
// the forms the Poller uses (k=v, !k and k in (a,b), comma-separated) and
// deletes. A teardown needs nothing else: the embedded Cloud is nil, and
// any other call panics.
type memCloud struct {
	Cloud
	servers []*hcloud.Server
	keys    []*hcloud.SSHKey
	images  []*hcloud.Image
	fail    map[string]bool // names whose deletion fails
	deleted []string
}

func selects(selector string, labels map[string]string) bool {
	for selector != "" {
		var term string
		if i := strings.Index(selector, " in ("); i >= 0 && i < strings.IndexByte(selector+",", ',') {
			end := strings.IndexByte(selector, ')')
			term, selector = selector[:end+1], strings.TrimPrefix(selector[end+1:], ",")
			k, set, _ := strings.Cut(strings.TrimSuffix(term, ")"), " in (")
			if !slices.Contains(strings.Split(set, ","), labels[k]) {
				return false
			}
			continue
		}
		term, selector, _ = strings.Cut(selector, ",")
		if k, ok := strings.CutPrefix(term, "!"); ok {
			if _, has := labels[k]; has {
				return false
			}
			continue
		}
		k, v, _ := strings.Cut(term, "=")
		if got, has := labels[k]; !has || got != v {
			return false
		}
	}
	return true
}

func (c *memCloud) Servers(_ context.Context, sel string) ([]*hcloud.Server, error) {
	var out []*hcloud.Server
	for _, s := range c.servers {
		if selects(sel, s.Labels) {
			out = append(out, s)
		}
	}
	return out, nil
}

func (c *memCloud) SSHKeys(_ context.Context, sel string) ([]*hcloud.SSHKey, error) {
	var out []*hcloud.SSHKey
	for _, k := range c.keys {
		if selects(sel, k.Labels) {
			out = append(out, k)
		}
	}
	return out, nil
}

func (c *memCloud) Snapshots(_ context.Context, sel string) ([]*hcloud.Image, error) {
	var out []*hcloud.Image
	for _, img := range c.images {
		if selects(sel, img.Labels) {
			out = append(out, img)
		}
	}
	return out, nil
}

func (c *memCloud) DeleteServer(_ context.Context, s *hcloud.Server) error {
	if c.fail[s.Name] {
		return errors.New("locked")
	}
	c.deleted = append(c.deleted, "server "+s.Name)
	c.servers = slices.DeleteFunc(c.servers, func(x *hcloud.Server) bool { return x.ID == s.ID })
	return nil
}

func (c *memCloud) DeleteSSHKey(_ context.Context, k *hcloud.SSHKey) error {
	if c.fail[k.Name] {
		return errors.New("boom")
	}
	c.deleted = append(c.deleted, "key "+k.Name)
	c.keys = slices.DeleteFunc(c.keys, func(x *hcloud.SSHKey) bool { return x.ID == k.ID })
	return nil
}

func (c *memCloud) DeleteImage(_ context.Context, img *hcloud.Image) error {
	c.deleted = append(c.deleted, "image "+img.Description)
	return nil
}

func TestParseTeardown(t *testing.T) {
	for _, tt := range []struct {
		payload            string
		teardown, dryRun   bool
		wantErr, pollDryRn bool
	}{
		{payload: `{"teardown":true}`, teardown: true},
		{payload: `{"teardown":true,"dry_run":true}`, teardown: true, dryRun: true},
		{payload: `{"dry_run":true}`, pollDryRn: true},
		{payload: `{"source":"hcloud-k8s.schedule"}`},
		{payload: ``},
		{payload: `{"teardown":"yes"}`, wantErr: true},
		{payload: `[`, wantErr: true},
	} {
		teardown, dryRun, err := ParseTeardown([]byte(tt.payload))
		if teardown != tt.teardown || dryRun != tt.dryRun || (err != nil) != tt.wantErr {
			t.Errorf("ParseTeardown(%s) = %v, %v, %v; want %v, %v, error %v", tt.payload, teardown, dryRun, err,
				tt.teardown, tt.dryRun, tt.wantErr)
		}
		// A teardown payload is never read as a poll by a Poller that
		// checks for it first; a poll payload stays one.
		if !tt.teardown && !tt.wantErr {
			if d, err := ParsePayload([]byte(tt.payload)); err != nil || d != tt.pollDryRn {
				t.Errorf("ParsePayload(%s) = %v, %v", tt.payload, d, err)
			}
		}
	}
}

func TestTeardown(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	target := build.Target{Version: "v1.13.9", Arch: "amd64", Schematic: qga}
	labels := func(kv ...string) map[string]string {
		l := map[string]string{label.Managed: label.ManagedValue, label.TalosVersion: target.Version,
			label.Arch: target.Arch, label.TalosSchematic: qga[:32], label.SchematicRest: qga[32:]}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(l, kv[i])
				continue
			}
			l[kv[i]] = kv[i+1]
		}
		return l
	}
	server := func(id int64, name string, l map[string]string) *hcloud.Server {
		l = maps.Clone(l)
		l[label.Role] = label.RoleBuildServer
		return &hcloud.Server{ID: id, Name: name, Labels: l, Created: now.Add(-time.Hour)}
	}
	key := func(id int64, name string, l map[string]string, until time.Time) *hcloud.SSHKey {
		l = maps.Clone(l)
		l[label.Role] = label.RoleLease
		l[label.LeaseUntil] = strconv.FormatInt(until.Unix(), 10)
		return &hcloud.SSHKey{ID: id, Name: name, Labels: l, Created: now.Add(-time.Hour)}
	}
	world := func() *memCloud {
		return &memCloud{
			servers: []*hcloud.Server{
				server(1, "ours-running", labels()),
				server(2, "ours-broken-target", labels(label.TalosVersion, "bogus")),
				server(3, "prod-running", labels(label.Cluster, "prod")),
				server(4, "unmanaged", labels(label.Managed, "")),
				server(5, "other-builder", labels(label.Managed, "someone-else")),
			},
			keys: []*hcloud.SSHKey{
				key(11, "ours-running", labels(), now.Add(time.Minute)),
				key(12, "ours-expired", labels(), now.Add(-time.Minute)),
				key(13, "prod-running", labels(label.Cluster, "prod"), now.Add(time.Minute)),
				{ID: 14, Name: "a user's key", Labels: labels()}, // no lease role
			},
			images: []*hcloud.Image{
				{ID: 21, Description: "ours", Labels: labels(label.OS, "talos")},
				{ID: 22, Description: "prod", Labels: labels(label.Cluster, "prod")},
			},
		}
	}
	names := func(rs []Resource) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.Name)
		}
		return out
	}
	tests := []struct {
		name              string
		cluster           string
		dryRun            bool
		fail              map[string]bool
		servers, keys     []string // torn down (or to be)
		deleted           []string
		held              int
		remaining, kept   []string
		wantErr           string
		leftServers       []string
		remainingKeyNames []string
	}{
		{
			name: "no cluster name", servers: []string{"ours-running", "ours-broken-target"},
			keys:    []string{"ours-running", "ours-expired"},
			deleted: []string{"server ours-running", "server ours-broken-target", "key ours-running", "key ours-expired"},
			held:    1, kept: []string{"ours"}, leftServers: []string{"prod-running", "unmanaged", "other-builder"},
		},
		{
			name: "cluster prod", cluster: "prod", servers: []string{"prod-running"}, keys: []string{"prod-running"},
			deleted: []string{"server prod-running", "key prod-running"}, held: 1, kept: []string{"prod"},
			leftServers: []string{"ours-running", "ours-broken-target", "unmanaged", "other-builder"},
		},
		{
			name: "dry run", dryRun: true, servers: []string{"ours-running", "ours-broken-target"},
			keys: []string{"ours-running", "ours-expired"}, held: 1, kept: []string{"ours"},
			leftServers: []string{"ours-running", "ours-broken-target", "prod-running", "unmanaged", "other-builder"},
		},
		{
			name: "a deletion fails", fail: map[string]bool{"ours-running": true},
			servers: []string{"ours-running", "ours-broken-target"}, keys: []string{"ours-running", "ours-expired"},
			deleted: []string{"server ours-broken-target", "key ours-expired"}, held: 1, kept: []string{"ours"},
			remaining: []string{"ours-running"}, remainingKeyNames: []string{"ours-running"},
			wantErr:     "delete server ours-running: locked",
			leftServers: []string{"ours-running", "prod-running", "unmanaged", "other-builder"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := world()
			c.fail = tt.fail
			p := New(Deps{Cloud: c, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return now }},
				Options{Rules: Rules{Cluster: tt.cluster}})
			rep, err := p.Teardown(context.Background(), tt.dryRun)
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			for _, c := range []struct {
				what      string
				got, want []string
			}{
				{"servers", names(rep.Servers), tt.servers},
				{"keys", names(rep.Keys), tt.keys},
				{"deleted", c.deleted, tt.deleted},
				{"remaining servers", names(rep.RemainingServers), tt.remaining},
				{"remaining keys", names(rep.RemainingKeys), tt.remainingKeyNames},
				{"kept snapshots", names(rep.KeptSnapshots), tt.kept},
			} {
				if !slices.Equal(c.got, c.want) {
					t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
				}
			}
			var left []string
			for _, s := range c.servers {
				left = append(left, s.Name)
			}
			if !slices.Equal(left, tt.leftServers) {
				t.Errorf("servers left in the project %q, want %q", left, tt.leftServers)
			}
			if rep.HeldLeases != tt.held || rep.DryRun != tt.dryRun {
				t.Errorf("held leases %d, dry run %v; want %d, %v", rep.HeldLeases, rep.DryRun, tt.held, tt.dryRun)
			}
			if len(c.images) != 2 || slices.ContainsFunc(c.deleted, func(d string) bool { return strings.HasPrefix(d, "image") }) {
				t.Errorf("a snapshot was deleted: %v", c.deleted)
			}
		})
	}
}

func TestTearsDown(t *testing.T) {
	managed := map[string]string{label.Managed: label.ManagedValue}
	prod := map[string]string{label.Managed: label.ManagedValue, label.Cluster: "prod"}
	for _, tt := range []struct {
		labels  map[string]string
		cluster string
		want    bool
	}{
		{managed, "", true},
		{managed, "prod", false},
		{prod, "prod", true},
		{prod, "", false},
		{prod, "dev", false},
		{map[string]string{label.Cluster: "prod"}, "prod", false},
		{map[string]string{label.Managed: "other"}, "", false},
	} {
		if got := tearsDown(tt.labels, tt.cluster); got != tt.want {
			t.Errorf("tearsDown(%v, %q) = %v, want %v", tt.labels, tt.cluster, got, tt.want)
		}
	}
}
