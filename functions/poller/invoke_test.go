package main

import (
	"context"
	"encoding/json"
	"maps"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack/stacktest"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/poll"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/ssh"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// localEnv is what `make invoke FN=Poller` runs with on w's local world,
// with kv (name, value pairs) on top.
func (w *world) localEnv(kv ...string) map[string]string {
	le := stacktest.LocalEnv(w.Stack, stacktest.Bootstrap(w.t, "./functions/poller"))
	maps.Copy(le, env(kv))
	return le
}

// TestMakeInvokePoller runs the Poller through `make invoke` (its bootstrap
// under the Lambda Runtime Interface Emulator, a local run as sam local
// makes it) on the local cloud: a dry run needs no Builder; a poll whose
// Builder would be a function in an AWS account is refused before it acts;
// a poll with the Builder behind a local Lambda endpoint builds.
func TestMakeInvokePoller(t *testing.T) {
	w := newWorld(t)

	stdout, stderr, exit := stacktest.Make(t, w.localEnv(), "invoke", "FN=Poller", "EVENT=events/dry-run.json")
	if exit != 0 {
		t.Fatalf("dry run without BUILDER_FUNCTION_NAME exited %d\n%s\n%s", exit, stdout, stderr)
	}
	var dry poll.Report
	if err := json.Unmarshal([]byte(stdout), &dry); err != nil || !dry.DryRun || len(dry.Builds) == 0 {
		t.Fatalf("dry run reported %s (%v), want a dry run that plans builds", stdout, err)
	}

	for _, tt := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"no Builder", w.localEnv(), "BUILDER_FUNCTION_NAME: is required to start builds"},
		// As sam local resolves ${AWS::StackName}-builder without env.json.
		{"a Builder in the AWS account", w.localEnv("BUILDER_FUNCTION_NAME", "local-builder"), "never in an AWS account"},
	} {
		stdout, stderr, exit := stacktest.Make(t, tt.env, "invoke", "FN=Poller", "EVENT=events/schedule.json")
		if exit == 0 || !strings.Contains(stdout, tt.want) {
			t.Errorf("%s: exit %d, stdout %s; want a refusal naming %q; stderr:\n%s", tt.name, exit, stdout, tt.want, stderr)
		}
	}
	if n := len(w.Lambda.Invocations("builder")); n != 0 || len(w.Stack.Cloud.Servers()) != 0 {
		t.Fatalf("refused polls acted: %d Builder invocations, servers %v", n, w.Stack.Cloud.Servers())
	}

	stdout, stderr, exit = stacktest.Make(t, w.localEnv("BUILDER_FUNCTION_NAME", "builder", "AWS_ENDPOINT_URL_LAMBDA", w.Lambda.URL()),
		"invoke", "FN=Poller", "EVENT=events/schedule.json")
	if exit != 0 {
		t.Fatalf("poll exited %d\n%s\n%s", exit, stdout, stderr)
	}
	var rep poll.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil || rep.DryRun {
		t.Fatalf("poll reported %s: %v", stdout, err)
	}
	w.WaitIdle()
	if got, want := w.snapshots(), targets(rep.Builds); !slices.Equal(got, want) || len(want) == 0 || !slices.Equal(want, targets(dry.Builds)) {
		t.Errorf("snapshots %v after a poll that started %v (the dry run planned %v)", got, want, targets(dry.Builds))
	}
	w.checkNothingLeft()
}

// buildResources makes, through the Hetzner API, what a deployment leaves
// while a build runs (a build server and its lease key, as the Builder
// labels them), the same of another deployment (cluster=other), a server
// nobody manages and a snapshot of ours. It returns the names teardown
// must delete.
func buildResources(t *testing.T, w *world, prefix string) []string {
	t.Helper()
	c := hcloud.NewClient(hcloud.WithEndpoint(w.Stack.HCloudURL), hcloud.WithToken(w.Stack.Token))
	ctx := context.Background()
	target := map[string]string{"hcloud-k8s.io/managed-by": "image-builder", "talos_version": "v1.13.9", "arch": "amd64",
		"talos_schematic_id": talos.QemuGuestAgentSchematic[:32], "hcloud-k8s.io/schematic-rest": talos.QemuGuestAgentSchematic[32:]}
	with := func(kv ...string) map[string]string {
		l := map[string]string{}
		for k, v := range target {
			l[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			l[kv[i]] = kv[i+1]
		}
		return l
	}
	until := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	var ours []string
	for _, r := range []struct {
		name   string
		labels map[string]string
		ours   bool
	}{
		{prefix + "-ours", with("hcloud-k8s.io/role", "build-server"), true},
		{prefix + "-other", with("hcloud-k8s.io/role", "build-server", "cluster", "other"), false},
		{prefix + "-unmanaged", map[string]string{"hcloud-k8s.io/role": "build-server"}, false},
	} {
		pub, err := ssh.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		// The lease key carries the server's labels but for its role.
		keyLabels := map[string]string{"hcloud-k8s.io/role": "lease", "hcloud-k8s.io/until": until}
		for k, v := range r.labels {
			if k != "hcloud-k8s.io/role" {
				keyLabels[k] = v
			}
		}
		key, _, err := c.SSHKey.Create(ctx, hcloud.SSHKeyCreateOpts{Name: r.name, PublicKey: pub.AuthorizedKey(), Labels: keyLabels})
		if err != nil {
			t.Fatal(err)
		}
		start := false
		if _, _, err := c.Server.Create(ctx, hcloud.ServerCreateOpts{Name: r.name, ServerType: &hcloud.ServerType{Name: "cx23"},
			Image: &hcloud.Image{Name: "debian-13"}, Location: &hcloud.Location{Name: "fsn1"}, SSHKeys: []*hcloud.SSHKey{key},
			StartAfterCreate: &start, Labels: r.labels}); err != nil {
			t.Fatal(err)
		}
		if r.ours {
			ours = append(ours, r.name)
		}
	}
	if _, err := w.Stack.Cloud.AddImage(fakehcloud.Image{Type: "snapshot", Status: "available", Description: prefix + "-snapshot",
		Architecture: "x86", Labels: with("os", "talos", "version", "v1.13.9")}); err != nil {
		t.Fatal(err)
	}
	return ours
}

// TestTeardown deletes a deployment's build servers and lease keys before
// `sam delete`, both ways the README shows: `make invoke` of the teardown
// event (a local run) and `make teardown` (the AWS CLI invoking the
// deployed Poller, here through the local Lambda endpoint). Another
// deployment's and unmanaged servers and every snapshot stay.
func TestTeardown(t *testing.T) {
	w := newWorld(t)
	teardown := func(t *testing.T, args []string, env map[string]string) poll.TeardownReport {
		t.Helper()
		stdout, stderr, exit := stacktest.Make(t, env, args...)
		if exit != 0 {
			t.Fatalf("make %v exited %d\n%s\n%s", args, exit, stdout, stderr)
		}
		var rep poll.TeardownReport
		if err := json.Unmarshal([]byte(strings.TrimSpace(stdout)), &rep); err != nil {
			t.Fatalf("report %s: %v", stdout, err)
		}
		return rep
	}
	check := func(t *testing.T, rep poll.TeardownReport, ours []string, prefix string) {
		t.Helper()
		var servers, keys []string
		for _, r := range rep.Servers {
			servers = append(servers, r.Name)
		}
		for _, r := range rep.Keys {
			keys = append(keys, r.Name)
		}
		if !slices.Equal(servers, ours) || !slices.Equal(keys, ours) || rep.HeldLeases != 1 ||
			len(rep.RemainingServers)+len(rep.RemainingKeys) != 0 {
			t.Errorf("teardown deleted servers %v, keys %v, %d held, remaining %v %v; want %v", servers, keys,
				rep.HeldLeases, rep.RemainingServers, rep.RemainingKeys, ours)
		}
		if !slices.ContainsFunc(rep.KeptSnapshots, func(r poll.Resource) bool { return r.Name == prefix+"-snapshot" }) {
			t.Errorf("kept snapshots %+v, want %s-snapshot listed", rep.KeptSnapshots, prefix)
		}
		var left []string
		for _, s := range w.Stack.Cloud.Servers() {
			if strings.HasPrefix(s.Name, prefix) {
				left = append(left, s.Name)
			}
		}
		slices.Sort(left)
		if want := []string{prefix + "-other", prefix + "-unmanaged"}; !slices.Equal(left, want) {
			t.Errorf("servers left %v, want %v", left, want)
		}
	}

	t.Run("make invoke", func(t *testing.T) {
		ours := buildResources(t, w, "invoke")
		env := w.localEnv()
		dry := teardown(t, []string{"invoke", "FN=Poller", "EVENT=events/teardown-dry-run.json"}, env)
		if !dry.DryRun || len(dry.Servers) != 1 || len(w.Stack.Cloud.Servers()) != 3 {
			t.Fatalf("dry run reported %+v and left %d servers, want 1 planned and 3 left", dry, len(w.Stack.Cloud.Servers()))
		}
		check(t, teardown(t, []string{"invoke", "FN=Poller", "EVENT=events/teardown.json"}, env), ours, "invoke")
	})

	t.Run("make teardown", func(t *testing.T) {
		if _, err := exec.LookPath("aws"); err != nil {
			t.Skip("the AWS CLI is not installed: make teardown runs aws lambda invoke")
		}
		ours := buildResources(t, w, "deployed")
		env := w.localEnv("AWS_ENDPOINT_URL_LAMBDA", w.Lambda.URL(), "AWS_DEFAULT_REGION", "eu-central-1")
		check(t, teardown(t, []string{"teardown", "POLLER=poller"}, env), ours, "deployed")
		if n := len(w.Lambda.Invocations("poller")); n != 1 {
			t.Errorf("the deployed Poller ran %d times, want once (no CLI retry)", n)
		}
	})
}
