package main

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack/stacktest"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// TestMakeInvokeContinuesLocally runs a Builder build through `make invoke`
// (scripts/invoke: the bootstrap under the Lambda Runtime Interface
// Emulator, as sam local runs it) on the local cloud, with a snapshot that
// outlasts SNAPSHOT_WAIT, so that the build hands over to a new invocation
// twice or more. A local run follows those continuations in its own
// invocation: a deployed-looking function of the name it is given, which a
// continuation through the Lambda API would reach, is never invoked.
func TestMakeInvokeContinuesLocally(t *testing.T) {
	st := stacktest.Start(t, stack.Options{ActionDurations: map[string]time.Duration{"create_image": 2500 * time.Millisecond}})
	const deployed = "hcloud-k8s-builder"
	w := stacktest.Deploy(t, st, map[string]stacktest.Function{
		deployed: {Package: "./functions/builder", PoolSize: 1},
	})

	env := stacktest.LocalEnv(st, stacktest.Bootstrap(t, "./functions/builder"))
	maps.Copy(env, map[string]string{
		"SNAPSHOT_WAIT":            "1s",
		"AWS_LAMBDA_FUNCTION_NAME": deployed,
		"AWS_ENDPOINT_URL_LAMBDA":  w.Lambda.URL(),
	})
	stdout, stderr, exit := stacktest.Make(t, env, "invoke", "FN=Builder", "EVENT=events/build.json")
	if exit != 0 {
		t.Fatalf("make invoke exited %d\nstdout:\n%s\nstderr:\n%s", exit, stdout, stderr)
	}
	var resp build.Response
	if err := json.Unmarshal([]byte(stdout), &resp); err != nil || len(resp.Results) != 1 || resp.Results[0].State != build.Done {
		t.Fatalf("response %s (%v), want one target done; stderr:\n%s", stdout, err, stderr)
	}
	want := build.Target{Version: "v1.13.9", Arch: "amd64", Schematic: talos.QemuGuestAgentSchematic}
	var snaps int
	for _, img := range st.Cloud.Images() {
		if tg, ok := build.TargetFromLabels(img.Labels); ok && img.Type == "snapshot" && img.Status == "available" && tg == want {
			snaps++
		}
	}
	if snaps != 1 {
		t.Errorf("%d available snapshots of %v, want 1", snaps, want)
	}
	// Every invocation takes the lease anew: a key per hand-over.
	if leases := st.Cloud.CountRequests("POST", "/v1/ssh_keys"); leases < 2 {
		t.Errorf("%d lease keys created, want 2 or more: the build did not hand over", leases)
	}
	if !strings.Contains(stderr, "snapshot still being created") {
		t.Errorf("no hand-over in the log:\n%s", stderr)
	}
	if n := len(w.Lambda.Invocations(deployed)); n != 0 {
		t.Errorf("the local run invoked %s %d times through the Lambda API, want 0", deployed, n)
	}
	if s, k := st.Cloud.Servers(), st.Cloud.SSHKeys(); len(s)+len(k) != 0 {
		t.Errorf("left behind: servers %+v, keys %+v", s, k)
	}
}
