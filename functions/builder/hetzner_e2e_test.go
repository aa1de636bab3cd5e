//go:build e2e

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/config"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/function"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// TestHetznerEndToEnd builds one real snapshot on Hetzner Cloud through the
// Builder's own code path, checks it with a separate client and deletes it.
// Everything it creates carries cluster=<run id>, and teardown deletes every
// server, SSH key and snapshot with that label, whatever happened.
//
//	HCLOUD_TOKEN=... make e2e   # E2E_TALOS_VERSION (default v1.13.9), E2E_ARCH (default amd64)
func TestHetznerEndToEnd(t *testing.T) {
	token := os.Getenv("HCLOUD_TOKEN")
	if token == "" {
		t.Skip("HCLOUD_TOKEN is not set: skipping the end-to-end test on real Hetzner Cloud")
	}
	version := envOr("E2E_TALOS_VERSION", "v1.13.9")
	arch := envOr("E2E_ARCH", "amd64")
	id := make([]byte, 4)
	rand.Read(id)
	run := "e2e-" + hex.EncodeToString(id)
	t.Setenv("CLUSTER_NAME", run)
	t.Setenv("ARCHITECTURES", arch)

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	cfg, err := config.Load(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A separate, plain hcloud-go client checks and tears down.
	check := hcloud.NewClient(hcloud.WithToken(token), hcloud.WithEndpoint(cfg.HCloudEndpoint))
	selector := "cluster=" + run
	t.Cleanup(func() { teardown(t, check, selector) })

	factory := &talos.Factory{BaseURL: cfg.FactoryURL}
	schematics, err := function.SchematicSet(cfg, factory).Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The Builder talks to Hetzner through a loopback proxy that reads the
	// answers to server creates: Hetzner mails a root password for every
	// server created without an SSH key, and the answer is the only place
	// that shows whether one was issued.
	endpoint, passwords := watchRootPasswords(t, cfg.HCloudEndpoint)
	// The Builder logs the partitions it read back from the written disk.
	written := newPartitionLog(slog.NewJSONHandler(os.Stderr, nil))
	b := build.New(build.Deps{
		Cloud:   cloud.New(cloud.Options{Token: cfg.HCloudToken, Endpoint: endpoint, Version: "e2e"}),
		Factory: factory,
		Logger:  slog.New(written),
	}, function.BuildOptions(cfg, schematics))
	resp, err := b.RunUntilDone(ctx, build.Request{Version: version, Arch: arch})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	res := resp.Results[0]
	t.Logf("built snapshot %d in %s with %s", res.SnapshotID, res.Location, res.ServerType)

	img, _, err := check.Image.GetByID(ctx, res.SnapshotID)
	if err != nil || img == nil {
		t.Fatalf("snapshot %d: %v", res.SnapshotID, err)
	}
	for k, v := range map[string]string{"os": "talos", "talos_version": version, "version": version, "arch": arch,
		"talos_schematic_id": schematics[0][:32], "cluster": run} {
		if img.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, img.Labels[k], v)
		}
	}
	if img.Status != hcloud.ImageStatusAvailable || img.Type != hcloud.ImageTypeSnapshot {
		t.Errorf("snapshot is %s %s", img.Type, img.Status)
	}
	// The snapshot must create servers of the architecture's smallest disk.
	if smallest := smallestDisk(t, check, img.Architecture); img.DiskSize != float32(smallest) {
		t.Errorf("snapshot disk %v GB, want the smallest %s disk, %d GB", img.DiskSize, img.Architecture, smallest)
	}
	servers, err := check.Server.AllWithOpts(ctx, hcloud.ServerListOpts{ListOpts: hcloud.ListOpts{LabelSelector: selector}})
	if err != nil || len(servers) != 0 {
		t.Errorf("build servers left: %d (%v)", len(servers), err)
	}
	if parts := written.partitions(); !slices.Contains(parts, "EFI") || !slices.Contains(parts, "META") {
		t.Errorf("partition table written: %q, want a GPT with EFI and META", parts)
	} else {
		t.Logf("partition table written: %q", parts)
	}
	if n := passwords.Load(); n != 0 {
		t.Errorf("%d server creates were answered with a root password (mailed to the project owner)", n)
	}
}

// partitionLog passes records on and keeps the partitions of the Builder's
// "image written and verified", from whichever logger derived from it.
type partitionLog struct {
	slog.Handler
	found *foundPartitions
}

type foundPartitions struct {
	mu    sync.Mutex
	parts []string
}

func newPartitionLog(h slog.Handler) *partitionLog {
	return &partitionLog{Handler: h, found: &foundPartitions{}}
}

func (h *partitionLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "image written and verified" {
		r.Attrs(func(a slog.Attr) bool {
			if p, ok := a.Value.Any().([]string); ok && a.Key == "partitions" {
				h.found.mu.Lock()
				h.found.parts = p
				h.found.mu.Unlock()
			}
			return true
		})
	}
	return h.Handler.Handle(ctx, r)
}

func (h *partitionLog) WithAttrs(as []slog.Attr) slog.Handler {
	return &partitionLog{Handler: h.Handler.WithAttrs(as), found: h.found}
}

func (h *partitionLog) WithGroup(name string) slog.Handler {
	return &partitionLog{Handler: h.Handler.WithGroup(name), found: h.found}
}

func (h *partitionLog) partitions() []string {
	h.found.mu.Lock()
	defer h.found.mu.Unlock()
	return h.found.parts
}

// watchRootPasswords serves a loopback reverse proxy to the Hetzner API
// that counts the server creates answered with a root password.
func watchRootPasswords(t *testing.T, endpoint string) (string, *atomic.Int64) {
	target, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: target.Scheme, Host: target.Host})
	director := proxy.Director
	proxy.Director = func(r *http.Request) {
		director(r)
		r.Host = target.Host
	}
	proxy.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method != http.MethodPost || !strings.HasSuffix(resp.Request.URL.Path, "/servers") {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(body))
		if err != nil {
			return err
		}
		var created struct {
			RootPassword *string `json:"root_password"`
		}
		if json.Unmarshal(body, &created) == nil && created.RootPassword != nil {
			n.Add(1)
		}
		return nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + target.Path, &n
}

// smallestDisk is the smallest disk of the architecture's server types that
// are not deprecated everywhere, as GET /server_types lists them.
func smallestDisk(t *testing.T, c *hcloud.Client, arch hcloud.Architecture) int {
	types, err := c.ServerType.All(context.Background())
	if err != nil {
		t.Fatalf("server types: %v", err)
	}
	smallest := 0
	for _, st := range types {
		current := !st.IsDeprecated() && (len(st.Locations) == 0 ||
			slices.ContainsFunc(st.Locations, func(l hcloud.ServerTypeLocation) bool { return !l.IsDeprecated() }))
		if st.Architecture == arch && current && (smallest == 0 || st.Disk < smallest) {
			smallest = st.Disk
		}
	}
	return smallest
}

func teardown(t *testing.T, c *hcloud.Client, selector string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	opts := hcloud.ListOpts{LabelSelector: selector}
	servers, err := c.Server.AllWithOpts(ctx, hcloud.ServerListOpts{ListOpts: opts})
	if err != nil {
		t.Errorf("teardown: list servers: %v", err)
	}
	for _, s := range servers {
		if _, _, err := c.Server.DeleteWithResult(ctx, s); err != nil {
			t.Errorf("teardown: delete server %s: %v", s.Name, err)
		}
	}
	keys, err := c.SSHKey.AllWithOpts(ctx, hcloud.SSHKeyListOpts{ListOpts: opts})
	if err != nil {
		t.Errorf("teardown: list ssh keys: %v", err)
	}
	for _, k := range keys {
		if _, err := c.SSHKey.Delete(ctx, k); err != nil {
			t.Errorf("teardown: delete ssh key %s: %v", k.Name, err)
		}
	}
	imgs, err := c.Image.AllWithOpts(ctx, hcloud.ImageListOpts{ListOpts: opts, Type: []hcloud.ImageType{hcloud.ImageTypeSnapshot}})
	if err != nil {
		t.Errorf("teardown: list snapshots: %v", err)
	}
	for _, img := range imgs {
		if _, err := c.Image.Delete(ctx, img); err != nil {
			t.Errorf("teardown: delete snapshot %d: %v", img.ID, err)
		}
	}
	t.Logf("teardown: deleted %d servers, %d ssh keys, %d snapshots labelled %s", len(servers), len(keys), len(imgs), selector)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
