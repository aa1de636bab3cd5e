package main

import (
	"encoding/json"
	"maps"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack/stacktest"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/poll"
)

// TestDeploymentsShareAProject deploys three stacks' functions against one
// Hetzner project: prod and staging, whose first polls run at once and
// build the same target side by side, each its own server and snapshot,
// and prod2, a second deployment of cluster prod, whose Poller and Builder
// refuse to act and say why.
func TestDeploymentsShareAProject(t *testing.T) {
	st := stacktest.Start(t, stack.Options{})
	fns := map[string]stacktest.Function{}
	for name, cluster := range map[string]string{"prod": "prod", "staging": "staging", "prod2": "prod"} {
		env := map[string]string{"CLUSTER_NAME": cluster, "ARCHITECTURES": "amd64", "TRACK_MINORS": "1"}
		fns[name+"-builder"] = stacktest.Function{Package: "./functions/builder", Env: env, PoolSize: 2}
		pollerEnv := map[string]string{"BUILDER_FUNCTION_NAME": name + "-builder"}
		maps.Copy(pollerEnv, env)
		fns[name+"-poller"] = stacktest.Function{Package: "./functions/poller", Env: pollerEnv, PoolSize: 1}
	}
	w := stacktest.Deploy(t, st, fns)

	var wg sync.WaitGroup
	for _, name := range []string{"prod", "staging"} {
		wg.Go(func() {
			out, failed := w.Invoke(name+"-poller", `{}`)
			var rep poll.Report
			if failed != "" || json.Unmarshal(out, &rep) != nil || !slices.Equal(targets(rep.Builds), []string{"v1.13.9/amd64"}) {
				t.Errorf("%s's poll: %s %s", name, failed, out)
			}
		})
	}
	wg.Wait()
	w.WaitIdle()
	var snaps []string
	for _, img := range st.Cloud.Images() {
		if img.Type == "snapshot" {
			snaps = append(snaps, img.Labels["cluster"]+":"+img.Labels["talos_version"]+"/"+img.Labels["arch"])
		}
	}
	sort.Strings(snaps)
	if !slices.Equal(snaps, []string{"prod:v1.13.9/amd64", "staging:v1.13.9/amd64"}) {
		t.Errorf("snapshots %v, want one of each cluster", snaps)
	}
	servers := map[string]string{}
	for _, d := range []string{"prod", "staging"} {
		for _, inv := range w.Lambda.Invocations(d + "-builder") {
			s := serverOf(inv.Result)
			if other, ok := servers[s]; ok && other != d {
				t.Errorf("prod and staging built on the same server %s", s)
			}
			servers[s] = d
		}
	}

	_, failed := w.Invoke("prod2-poller", `{}`)
	if !strings.Contains(failed, "refusing to act: another deployment (eu-central-1.prod-builder") ||
		!strings.Contains(failed, "CLUSTER_NAME=prod") {
		t.Errorf("prod2's poll: %q", failed)
	}
	// A refusal is a failed result, not a function error: Lambda's retries
	// would be refused the same way.
	out, failed := w.Invoke("prod2-builder", `{"version":"v1.13.9","arch":"amd64","force":true}`)
	var resp struct {
		Results []struct{ State, Code, Error string } `json:"results"`
	}
	if failed != "" || json.Unmarshal(out, &resp) != nil || len(resp.Results) != 1 || resp.Results[0].State != "failed" ||
		resp.Results[0].Code != "other-deployment" ||
		!strings.Contains(resp.Results[0].Error, "refusing to act: another deployment (eu-central-1.prod-builder") {
		t.Errorf("prod2's build: %q %s", failed, out)
	}
	w.WaitIdle()
	if s := st.Cloud.Servers(); len(s) != 0 {
		t.Errorf("servers left: %+v", s)
	}
	var markers []string
	for _, k := range st.Cloud.SSHKeys() {
		markers = append(markers, k.Labels["cluster"]+":"+k.Labels["hcloud-k8s.io/deployment"])
	}
	sort.Strings(markers)
	if !slices.Equal(markers, []string{"prod:eu-central-1.prod-builder", "staging:eu-central-1.staging-builder"}) {
		t.Errorf("keys left: %v, want the two markers", markers)
	}
}

// serverOf returns the server name in a Builder response.
func serverOf(result []byte) string {
	var resp struct {
		Results []struct {
			Server string `json:"server"`
		} `json:"results"`
	}
	if json.Unmarshal(result, &resp) != nil || len(resp.Results) == 0 {
		return ""
	}
	return resp.Results[0].Server
}

// TestPollerStartsWithTheFactoryDown: with SCHEMATIC_CUSTOMIZATION set and
// nothing answering at the factory's address, the Poller starts and polls:
// its builds wait, and the report says why.
func TestPollerStartsWithTheFactoryDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	w := newWorld(t, "TALOS_FACTORY_URL", dead, "SCHEMATIC_CUSTOMIZATION", "customization:\n  extraKernelArgs:\n    - net.ifnames=0\n",
		"SCHEMATIC_IDS", "ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515")
	rep := w.poll(`{"dry_run":true}`)
	if len(rep.Skipped) != 1 || !strings.HasPrefix(rep.Skipped[0], "builds, re-drives and pruning of the customization's schematic: SCHEMATIC_CUSTOMIZATION: register schematic:") {
		t.Errorf("skipped %q", rep.Skipped)
	}
	if len(rep.Builds) != 0 || len(rep.Deferred) != 4 {
		t.Errorf("builds %v, deferred %v; want the configured schematic's deferred", targets(rep.Builds), targets(rep.Deferred))
	}
}
