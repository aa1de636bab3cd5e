package poll_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack/stacktest"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/poll"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/release"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// TestGitHubDownStillCleansUp: with GitHub answering every request with
// its rate limit error, a poll still re-drives a stuck build and, once that
// is past BUILD_SERVER_TTL, collects its server and an orphaned lease key.
// It builds and prunes nothing (it does not know the tracked versions),
// says so in its report and fails, so that the alarm for stale polls sees
// a GitHub outage that lasts.
func TestGitHubDownStillCleansUp(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, stack.Options{ActionDurations: slowCreate}, map[string]string{"RETENTION_KEEP_OTHERS": "0"})
	d.addOld("v1.10.0", "amd64", 1000*time.Hour) // beyond retention
	stuck := build.Target{Version: "v1.13.9", Arch: "amd64", Schematic: talos.QemuGuestAgentSchematic}
	d.breakBuild(stuck)
	orphan, err := d.cloud.CreateSSHKey(context.Background(), "talos-amd64-orphan", newPublicKey(t), selectorLabels(label.RoleSelector(label.RoleLease)))
	if err != nil {
		t.Fatal(err)
	}
	d.st.GitHub.ForceSecondaryRateLimit(http.StatusForbidden, time.Minute, 1000)

	rep, err := d.run(false)
	if !release.IsRateLimited(err) {
		t.Fatalf("err = %v, want GitHub's rate limit", err)
	}
	check(t, "re-drives", targets(rep.Redrives), []string{"v1.13.9/amd64"})
	check(t, "builds, prunes", []int{len(rep.Builds), len(rep.Prune)}, []int{0, 0})
	check(t, "Builder payloads", requests(d.rec.take()), []string{"v1.13.9/amd64"})
	checkSkipped(t, rep, "builds and pruning: the tracked versions are unknown: list releases:")

	d.now = func() time.Time { return time.Now().Add(3 * time.Hour) }
	rep, err = d.run(false)
	if !release.IsRateLimited(err) {
		t.Fatalf("err = %v, want GitHub's rate limit", err)
	}
	check(t, "collected servers", len(rep.CollectServers), 1)
	check(t, "collected keys", len(rep.CollectKeys), 1)
	servers, keys := d.leftovers()
	if len(servers) != 0 || len(keys) != 0 {
		t.Errorf("left: servers %+v, keys %+v", servers, keys)
	}
	if _, ok := d.st.Cloud.Image(rep.CollectKeys[0].ID); ok || rep.CollectKeys[0].ID != orphan.ID {
		t.Errorf("collected key %+v, want the orphan %d", rep.CollectKeys[0], orphan.ID)
	}
	check(t, "snapshots (nothing pruned)", d.snapshots(), []string{"v1.10.0/amd64"})
}

func checkSkipped(t *testing.T, rep poll.Report, want ...string) {
	t.Helper()
	if len(rep.Skipped) != len(want) {
		t.Fatalf("skipped %q, want %q", rep.Skipped, want)
	}
	for i, s := range rep.Skipped {
		if !strings.HasPrefix(s, want[i]) {
			t.Errorf("skipped %q, want it to begin with %q", s, want[i])
		}
	}
}

// hangingFactory stands between the functions and the image factory; while
// down, it takes every request and answers none, like a factory that hangs.
type hangingFactory struct {
	down atomic.Bool
	srv  *httptest.Server
}

func newHangingFactory(t *testing.T, next http.Handler) *hangingFactory {
	h := &hangingFactory{}
	stop := make(chan struct{})
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h.down.Load() {
			// Read the body: only then does the server notice a client
			// that gives up.
			io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-stop:
			}
			return
		}
		next.ServeHTTP(w, r)
	}))
	t.Cleanup(h.srv.Close)
	t.Cleanup(func() { close(stop) })
	return h
}

// customization is a schematic customization the local factory registers.
const customization = "customization:\n  extraKernelArgs:\n    - net.ifnames=0\n"

// TestFactoryDownStillCleansUp: with SCHEMATIC_CUSTOMIZATION set and the
// image factory hanging, a poll still re-drives a stuck build and collects
// it once it is past BUILD_SERVER_TTL, within the factory client's
// timeouts: the builds of the configured schematic are deferred, those of
// the customization's skipped, and the report says why. The Builder takes a
// request for the configured schematic (and is retried as long as the
// factory does not answer its check) and has one that may need the
// customization retried. Once the factory answers, the customization is
// registered, once, and its builds start.
func TestFactoryDownStillCleansUp(t *testing.T) {
	t.Parallel()
	st := stacktest.Start(t, stack.Options{ActionDurations: slowCreate})
	factory := newHangingFactory(t, st.Factory)
	d := attach(t, st, localDeployment, map[string]string{"TALOS_FACTORY_URL": factory.srv.URL,
		"SCHEMATIC_IDS": talos.QemuGuestAgentSchematic, "SCHEMATIC_CUSTOMIZATION": customization, "MAX_BUILDS_PER_POLL": "10"})
	d.factory.HeadTimeout, d.factory.SchematicTimeout = 300*time.Millisecond, 300*time.Millisecond
	stuck := build.Target{Version: "v1.13.9", Arch: "amd64", Schematic: talos.QemuGuestAgentSchematic}
	d.breakBuild(stuck)
	factory.down.Store(true)

	start := time.Now()
	rep := d.poll(false)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the poll took %s", took)
	}
	check(t, "re-drives", targets(rep.Redrives), []string{"v1.13.9/amd64"})
	check(t, "builds", targets(rep.Builds), []string{})
	check(t, "deferred", targets(rep.Deferred), []string{"v1.12.8/amd64", "v1.12.8/arm64", "v1.13.9/arm64"})
	checkReasons(t, "deferred", rep.Deferred, "the image factory is building it", oneAtATime)
	checkSkipped(t, rep, "builds, re-drives and pruning of the customization's schematic: SCHEMATIC_CUSTOMIZATION: register schematic: no answer within 300ms")
	check(t, "Builder payloads", requests(d.rec.take()), []string{"v1.13.9/amd64"})

	ctx := context.Background()
	_, err := d.builder.Handle(ctx, build.Request{Version: "v1.12.8", Arch: "arm64", Schematic: talos.QemuGuestAgentSchematic})
	var retry *build.RetryError
	if !errors.As(err, &retry) || !strings.Contains(err.Error(), "the image factory is building") {
		t.Errorf("a request for the configured schematic: %v, want it retried for the factory's check", err)
	}
	if _, err := d.builder.Handle(ctx, build.Request{Version: "v1.12.8"}); err == nil ||
		!strings.Contains(err.Error(), "build to be retried: the request may name the schematic of SCHEMATIC_CUSTOMIZATION") {
		t.Errorf("a request for every schematic: %v, want it retried for the customization", err)
	}

	d.now = func() time.Time { return time.Now().Add(3 * time.Hour) }
	rep = d.poll(false)
	check(t, "collected servers", len(rep.CollectServers), 1)
	if servers, _ := d.leftovers(); len(servers) != 0 {
		t.Errorf("servers left: %+v", servers)
	}

	factory.down.Store(false)
	// Patient again: the local factory makes an image on its first request.
	d.factory.HeadTimeout, d.now = 0, time.Now
	for range 2 {
		rep = d.poll(true)
		checkSkipped(t, rep)
		var custom []string
		for _, it := range rep.Builds {
			if it.Schematic != talos.QemuGuestAgentSchematic {
				custom = append(custom, it.Version+"/"+it.Arch)
			}
		}
		check(t, "builds of the customization's schematic", custom, []string{"v1.12.8/amd64", "v1.12.8/arm64",
			"v1.13.9/amd64", "v1.13.9/arm64"})
	}
	if n := st.Factory.Count(http.MethodPost, "/schematics"); n != 1 {
		t.Errorf("the customization was registered %d times, want once", n)
	}
}

// TestTwoDeploymentsShareAProject deploys prod and staging, two clusters,
// into one Hetzner project, and then two more that share a cluster with
// one of them. prod builds the target staging's broken build holds without
// adopting staging's server, and never collects that server, least of all
// while its lease is held; staging collects it only once its lease is gone.
// A second deployment of cluster prod, and one of two deployments without
// CLUSTER_NAME, are refused with a clear error, and their Builder creates
// nothing.
func TestTwoDeploymentsShareAProject(t *testing.T) {
	t.Parallel()
	st := stacktest.Start(t, stack.Options{ActionDurations: slowCreate})
	prod := attach(t, st, "eu-central-1.prod-builder", map[string]string{"CLUSTER_NAME": "prod"})
	staging := attach(t, st, "eu-central-1.staging-builder", map[string]string{"CLUSTER_NAME": "staging"})
	prod.poll(true)
	staging.poll(true)

	tg := build.Target{Version: "v1.13.9", Arch: "amd64", Schematic: talos.QemuGuestAgentSchematic}
	staging.breakBuild(tg)
	stagingServer := st.Cloud.Servers()[0]
	if res, err := prod.builder.RunUntilDone(context.Background(), build.Request{Version: tg.Version, Arch: tg.Arch}); err != nil ||
		res.Results[0].State != build.Done {
		t.Fatalf("prod's build: %+v, %v", res, err)
	}
	var snaps []string
	for _, img := range st.Cloud.Images() {
		if img.Type == "snapshot" {
			snaps = append(snaps, img.Labels[label.Cluster]+":"+img.Labels[label.TalosVersion])
		}
	}
	check(t, "snapshots", snaps, []string{"prod:v1.13.9"})
	if servers := st.Cloud.Servers(); len(servers) != 1 || servers[0].ID != stagingServer.ID ||
		servers[0].Labels[label.Step] != "install" {
		t.Fatalf("servers %+v, want staging's alone, untouched", servers)
	}

	// staging's build is under way: its lease is held (renewed) past
	// BUILD_SERVER_TTL on prod's clock.
	later := func() time.Time { return time.Now().Add(3 * time.Hour) }
	holdLease(t, staging, tg, later().Add(time.Hour))
	prod.now, staging.now = later, later
	rep := prod.poll(false)
	check(t, "prod collects", len(rep.CollectServers)+len(rep.CollectKeys), 0)
	check(t, "prod re-drives", len(rep.Redrives), 0)
	rep = staging.poll(false)
	check(t, "staging collects its server with a live lease", len(rep.CollectServers), 0)
	check(t, "staging's builds of the server's group wait for it", slices.Contains(targets(rep.Deferred), "v1.12.8/amd64"), true)
	_, keys := staging.leftovers()
	for _, k := range keys {
		if err := staging.cloud.DeleteSSHKey(context.Background(), &hcloud.SSHKey{ID: k.ID}); err != nil {
			t.Fatal(err)
		}
	}
	rep = staging.poll(false)
	check(t, "staging collects its server once its lease is gone", len(rep.CollectServers), 1)

	// A second deployment of cluster prod.
	mutations := prod.mutations()
	prod2 := attach(t, st, "eu-west-1.prod-builder", map[string]string{"CLUSTER_NAME": "prod"})
	prod2.now = later
	_, err := prod2.run(false)
	if !build.IsOtherDeployment(err) || !strings.Contains(err.Error(), "another deployment (eu-central-1.prod-builder, last seen") ||
		!strings.Contains(err.Error(), "CLUSTER_NAME=prod") {
		t.Errorf("a second deployment of cluster prod: %v", err)
	}
	res, err := prod2.builder.RunUntilDone(context.Background(), build.Request{Version: "v1.12.8", Arch: "arm64"})
	if err == nil || res.Results[0].State != build.Failed || !strings.Contains(res.Results[0].Error, "refusing to act: another deployment") {
		t.Errorf("the second deployment's Builder: %+v, %v", res, err)
	}
	if n := prod.mutations() - mutations; n != 0 {
		t.Errorf("the refused deployment made %d changing requests", n)
	}

	// The refused deployment's teardown deletes nothing of prod's; prod's
	// own gives up its claim, and prod2 may take the cluster.
	if _, err := prod2.poller().Teardown(context.Background(), false); !build.IsOtherDeployment(err) {
		t.Errorf("the refused deployment's teardown: %v", err)
	}
	if n := prod.mutations() - mutations; n != 0 {
		t.Errorf("the refused deployment made %d changing requests", n)
	}
	if _, err := prod.poller().Teardown(context.Background(), false); err != nil {
		t.Fatalf("prod's teardown: %v", err)
	}
	if _, err := prod2.run(false); err != nil {
		t.Errorf("prod2's poll after prod's teardown: %v", err)
	}

	// Two deployments without a cluster.
	a := attach(t, st, "eu-central-1.a-builder", nil)
	b := attach(t, st, "eu-central-1.b-builder", map[string]string{"TRACK_MINORS": "1"})
	a.poll(true) // a dry run claims nothing
	b.poll(false)
	if _, err := a.run(false); !build.IsOtherDeployment(err) || !strings.Contains(err.Error(), "an empty CLUSTER_NAME") {
		t.Errorf("the second deployment without a cluster: %v", err)
	}
}

// holdLease makes the lease key of d's build of tg, as its holder renews
// it, held until until.
func holdLease(t *testing.T, d *deployment, tg build.Target, until time.Time) {
	t.Helper()
	l := map[string]string{label.Managed: label.ManagedValue, label.TalosVersion: tg.Version, label.Arch: tg.Arch,
		label.TalosSchematic: tg.Schematic[:32], label.SchematicRest: tg.Schematic[32:],
		label.Role: label.RoleLease, label.LeaseOwner: "a-live-invocation",
		label.LeaseUntil: strconv.FormatInt(until.Unix(), 10)}
	if d.cfg.Cluster != "" {
		l[label.Cluster] = d.cfg.Cluster
	}
	if !build.LeaseActive(l, time.Now()) {
		t.Fatalf("lease labels %v are not active", l)
	}
	if _, err := d.cloud.CreateSSHKey(context.Background(), tg.Name(d.cfg.Cluster), newPublicKey(t), l); err != nil {
		t.Fatal(err)
	}
}
