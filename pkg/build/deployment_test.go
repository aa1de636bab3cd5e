package build

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
)

func TestDeploymentID(t *testing.T) {
	for _, tt := range []struct{ function, region, want string }{
		{"prod-builder", "eu-central-1", "eu-central-1.prod-builder"},
		{"prod-builder:live", "eu-central-1", "eu-central-1.prod-builder"},
		{"arn:aws:lambda:eu-west-1:123456789012:function:prod-builder", "", "eu-west-1.prod-builder"},
		{"arn:aws:lambda:eu-west-1:123456789012:function:prod-builder:7", "eu-central-1", "eu-west-1.prod-builder"},
		{"prod-builder", "", "prod-builder"},
		{"", "eu-central-1", ""},
		{strings.Repeat("b", 64), "eu-central-1", "sha256-"},
		{"_builder", "eu-central-1", "eu-central-1._builder"},
	} {
		got := DeploymentID(tt.function, tt.region)
		if got != tt.want && !(strings.HasSuffix(tt.want, "-") && strings.HasPrefix(got, tt.want)) {
			t.Errorf("DeploymentID(%q, %q) = %q, want %q", tt.function, tt.region, got, tt.want)
		}
		if got != "" && label.Check(label.Deployment, got) != nil {
			t.Errorf("DeploymentID(%q, %q) = %q: not a label value", tt.function, tt.region, got)
		}
	}
}

// TestMarker: the first deployment of a cluster claims it; another of the
// same cluster is refused until the first has not been seen for
// MarkerTTL, and then takes over; other clusters are not concerned.
func TestMarker(t *testing.T) {
	ctx := context.Background()
	w := newLocalCloud(t)
	t0 := time.Now()
	a := Deployment{Cluster: "prod", ID: "eu-central-1.a"}
	b := Deployment{Cluster: "prod", ID: "eu-central-1.b"}
	seen := func() string {
		k, _ := w.api.SSHKeyByName(ctx, a.MarkerName())
		if k == nil {
			return "none"
		}
		return k.Labels[label.Deployment] + "@" + strconv.FormatInt(markerSeen(k).Sub(t0.Truncate(time.Second)).Milliseconds()/1000, 10)
	}
	steps := []struct {
		what string
		do   func() error
		err  string // in the error; "" none
		want string // the marker: owner@seconds after t0
	}{
		{"a checks: no marker", func() error { return a.Check(ctx, w.api, t0) }, "", "none"},
		{"a claims", func() error { return a.Claim(ctx, w.api, t0) }, "", "eu-central-1.a@0"},
		{"a polls again soon", func() error { return a.Claim(ctx, w.api, t0.Add(10*time.Minute)) }, "", "eu-central-1.a@0"},
		{"a polls an hour later", func() error { return a.Claim(ctx, w.api, t0.Add(2*time.Hour)) }, "", "eu-central-1.a@7200"},
		{"b checks", func() error { return b.Check(ctx, w.api, t0.Add(3*time.Hour)) }, "another deployment (eu-central-1.a", "eu-central-1.a@7200"},
		{"b claims", func() error { return b.Claim(ctx, w.api, t0.Add(3*time.Hour)) }, "CLUSTER_NAME=prod", "eu-central-1.a@7200"},
		{"b of another cluster claims", func() error { return Deployment{Cluster: "staging", ID: b.ID}.Claim(ctx, w.api, t0) }, "", "eu-central-1.a@7200"},
		{"b claims after MarkerTTL", func() error { return b.Claim(ctx, w.api, t0.Add(2*time.Hour+MarkerTTL+time.Minute)) }, "", "eu-central-1.b@" + strconv.Itoa(7200+int(MarkerTTL/time.Second)+60)},
		{"a is refused", func() error { return a.Claim(ctx, w.api, t0.Add(2*time.Hour+MarkerTTL+2*time.Minute)) }, "another deployment (eu-central-1.b", "eu-central-1.b@" + strconv.Itoa(7200+int(MarkerTTL/time.Second)+60)},
		{"no identity checks nothing", func() error { return Deployment{Cluster: "prod"}.Claim(ctx, w.api, t0) }, "", "eu-central-1.b@" + strconv.Itoa(7200+int(MarkerTTL/time.Second)+60)},
	}
	for _, s := range steps {
		err := s.do()
		if (s.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), s.err)) {
			t.Errorf("%s: err = %v, want %q", s.what, err, s.err)
		}
		if s.err != "" && !IsOtherDeployment(err) {
			t.Errorf("%s: %v is not an *OtherDeploymentError", s.what, err)
		}
		if got := seen(); got != s.want {
			t.Errorf("%s: marker %s, want %s", s.what, got, s.want)
		}
	}
	if _, keys, _ := w.counts(); keys != 2 {
		t.Errorf("%d keys, want the markers of prod and staging", keys)
	}
	// Someone's key of the marker's name is not taken for a marker.
	w = newLocalCloud(t)
	w.createKey(a.MarkerName(), map[string]string{"owner": "alice"})
	if err := a.Claim(ctx, w.api, t0); err == nil || !strings.Contains(err.Error(), "is not the image builder's marker") {
		t.Errorf("a foreign key of the marker's name: %v", err)
	}
}

// TestBuilderRefusesOtherDeployment: while another deployment claims the
// cluster, the Builder acts on nothing, not even a build under way.
func TestBuilderRefusesOtherDeployment(t *testing.T) {
	ctx := context.Background()
	w := newLocalCloud(t)
	if err := (Deployment{ID: "eu-central-1.other"}).Claim(ctx, w.api, time.Now()); err != nil {
		t.Fatal(err)
	}
	labels := target.targetLabels("")
	labels[label.Role], labels[label.Step] = label.RoleBuildServer, string(StepInstall)
	w.createServer(labels) // the other's build under way
	before := len(mutating(w.cloud.callLog()))
	b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{Deployment: "eu-central-1.me"})
	for _, tg := range []Target{target, {Version: "v1.12.5", Arch: "arm64", Schematic: target.Schematic}} {
		res := b.Build(ctx, tg, Request{})
		if res.State != Failed || !strings.Contains(res.Error, "refusing to act: another deployment (eu-central-1.other") {
			t.Errorf("%s: %+v", tg, res)
		}
	}
	if m := mutating(w.cloud.callLog())[before:]; len(m) != 0 {
		t.Errorf("the refused Builder changed the project: %v", m)
	}
}

// TestForeignIsNotAdopted: a server or key under a build's name that is not
// this deployment's is not adopted, taken over or deleted, whenever the
// build meets it, and the refusal records no failure.
func TestForeignIsNotAdopted(t *testing.T) {
	ctx := context.Background()
	other := target.targetLabels("staging")
	other[label.Role], other[label.Step] = label.RoleBuildServer, string(StepInstall)
	for _, tt := range []struct {
		name  string
		setup func(w *localCloud)
		err   string
	}{
		{"another cluster's server of the name", func(w *localCloud) {
			w.createServer(other)
		}, "server " + target.Name("") + " is not this deployment's build of v1.13.9/amd64/ce4c9805 (cluster staging"},
		{"an unmanaged server of the name", func(w *localCloud) {
			w.createServer(map[string]string{"app": "web"})
		}, "(cluster (none), hcloud-k8s.io/managed-by=\"\""},
		{"a server of the name appears before the create", func(w *localCloud) {
			w.cloud.hook = func(call string) {
				if call == "CreateServer" {
					w.createServer(other)
				}
			}
		}, "adopt server " + target.Name("") + ": server " + target.Name("") + " is not this deployment's"},
		{"someone's SSH key of the name", func(w *localCloud) {
			w.createKey(target.Name(""), map[string]string{"owner": "alice"})
		}, "SSH key " + target.Name("") + " is not this deployment's build"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newLocalCloud(t)
			tt.setup(w)
			b := testBuilder(w, &fakeRemote{table: talosTable}, nil, Options{})
			res := b.Build(ctx, target, Request{})
			if res.State != Failed || !strings.Contains(res.Error, tt.err) {
				t.Fatalf("result %+v, want failed with %q", res, tt.err)
			}
			// The foreign one stays, nothing else is left.
			servers, keys, _ := w.counts()
			if servers+keys != 1 {
				t.Errorf("%d servers, %d keys, want the foreign one alone", servers, keys)
			}
			for _, c := range w.cloud.callLog() {
				if c == "DeleteServer" || strings.HasPrefix(c, "SetServerLabels") || c == "EnableRescue" || c == "CreateSSHKey:failure" {
					t.Errorf("acted on the foreign server: %v", w.cloud.callLog())
				}
			}
		})
	}
}
