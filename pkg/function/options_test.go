package function

import (
	"context"
	"fmt"
	"maps"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/sethvargo/go-envconfig"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/config"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// load reads a configuration from env, with HCLOUD_TOKEN set.
func load(t *testing.T, env map[string]string, secrets config.SecretReader) config.Config {
	t.Helper()
	env = maps.Clone(env)
	if env == nil {
		env = map[string]string{}
	}
	env["HCLOUD_TOKEN"] = "tok"
	c, err := config.LoadFrom(context.Background(), envconfig.MapLookuper(env), secrets)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestBuildOptions(t *testing.T) {
	c := load(t, map[string]string{
		"SERVER_IMAGE": "ubuntu-24.04", "SERVER_TYPES_AMD64": "cpx11", "LOCATIONS": "ash",
		"MIN_VERSION": "v1.12.0", "TRACK_PRERELEASES": "true",
	}, nil)
	o := BuildOptions(c, []string{talos.QemuGuestAgentSchematic})
	if o.ServerImage != "ubuntu-24.04" || !reflect.DeepEqual(o.ServerTypes["amd64"], []string{"cpx11"}) ||
		!reflect.DeepEqual(o.ServerTypes["arm64"], []string{"cax11"}) || !reflect.DeepEqual(o.Locations, []string{"ash"}) ||
		o.MinVersion != "v1.12.0" || !o.Prereleases {
		t.Errorf("options = %+v", o)
	}
}

// secrets is a config.SecretReader holding one secret per name.
type secrets map[string]string

func (s secrets) Read(_ context.Context, ref string) (string, error) {
	v, ok := s[ref]
	if !ok {
		return "", fmt.Errorf("no secret %q", ref)
	}
	return v, nil
}

func TestPollOptionsGitHubToken(t *testing.T) {
	for _, tc := range []struct {
		name      string
		env       map[string]string
		anonymous bool
	}{
		{"no token", map[string]string{}, true},
		{"token", map[string]string{"GITHUB_TOKEN": "ghp_x"}, false},
		{"token from a secret", map[string]string{"GITHUB_TOKEN_SECRET": "github-token"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := load(t, tc.env, secrets{"github-token": "ghp_y"})
			opts, err := PollOptions(cfg, cfg.Schematics())
			if err != nil {
				t.Fatal(err)
			}
			if opts.AnonymousGitHub != tc.anonymous {
				t.Errorf("AnonymousGitHub = %v, want %v", opts.AnonymousGitHub, tc.anonymous)
			}
		})
	}
}

// custom changes every setting the configuration digest covers.
var custom = map[string]string{
	"CLUSTER_NAME": "prod", "SNAPSHOT_LABELS": "team=infra,env=prod", "LOCATIONS": "ash,hil",
	"SERVER_TYPES_AMD64": "cpx11", "TALOS_FACTORY_URL": "http://127.0.0.1:8080", "STEP_TIMEOUT": "2s",
	"INSTALL_TIMEOUT": "20s", "SNAPSHOT_WAIT": "5s", "SNAPSHOT_TIMEOUT": "1m", "LEASE_TTL": "10s",
	"SERVER_IMAGE": "ubuntu-24.04",
}

// TestConfigDigest: the failure records' configuration digest is the one
// computed from the configuration before the mapping moved here (a new
// value would make every record stale, resetting every backoff once), it
// changes with every setting a build depends on and with no other, and
// the Builder writes records under the digest the Poller reads them with.
func TestConfigDigest(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"defaults", nil, "a58e68d84a"},
		{"every setting changed", custom, "1c13af2637"},
	} {
		c := load(t, tc.env, nil)
		if got := BuildOptions(c, nil).Failures.Config; got != tc.want {
			t.Errorf("%s: digest %s, want %s", tc.name, got, tc.want)
		}
	}

	base := BuildOptions(load(t, nil, nil), nil).Failures.Config
	for _, tc := range []struct {
		env     map[string]string
		changes bool
	}{
		{map[string]string{"TALOS_FACTORY_URL": "https://factory.example.com"}, true},
		{map[string]string{"SERVER_TYPES_AMD64": "cpx11"}, true},
		{map[string]string{"SERVER_TYPES_ARM64": "cax21"}, true},
		{map[string]string{"LOCATIONS": "hel1"}, true},
		{map[string]string{"SERVER_IMAGE": "ubuntu-24.04"}, true},
		{map[string]string{"CLUSTER_NAME": "prod"}, true},
		{map[string]string{"STEP_TIMEOUT": "2m"}, true},
		{map[string]string{"INSTALL_TIMEOUT": "9m"}, true},
		{map[string]string{"SNAPSHOT_WAIT": "3m"}, true},
		{map[string]string{"SNAPSHOT_TIMEOUT": "40m"}, true},
		{map[string]string{"LEASE_TTL": "2m"}, true},
		{map[string]string{"SNAPSHOT_LABELS": "team=infra"}, true},
		{map[string]string{"VERIFY_BOOT": "false"}, true},
		{map[string]string{"VERIFY_TIMEOUT": "3m"}, false},
		{map[string]string{"FAILURE_LIMIT": "7"}, false},
		{map[string]string{"FAILURE_BACKOFF": "2h"}, false},
		{map[string]string{"MAX_BUILDS_PER_POLL": "9"}, false},
		{map[string]string{"TRACK_MINORS": "3"}, false},
		{map[string]string{"SCHEMATIC_IDS": strings.Repeat("a", 64)}, false},
		{map[string]string{"GITHUB_TOKEN": "ghp_x"}, false},
	} {
		c := load(t, tc.env, nil)
		builder := BuildOptions(c, c.Schematics()).Failures
		poller, err := PollOptions(c, c.Schematics())
		if err != nil {
			t.Fatal(err)
		}
		if got := builder.Config != base; got != tc.changes {
			t.Errorf("%v: digest changed %v, want %v", tc.env, got, tc.changes)
		}
		if poller.Failures != builder {
			t.Errorf("%v: the Poller reads records under %+v, the Builder writes them under %+v", tc.env, poller.Failures, builder)
		}
	}
}

// TestConfigIsMappedAtTheEdge: pkg/build and pkg/poll take their settings
// as options; only the edge (this package, the mains) knows pkg/config.
func TestConfigIsMappedAtTheEdge(t *testing.T) {
	const module = "github.com/hcloud-k8s/hcloud-k8s/"
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", module+"pkg/build", module+"pkg/poll").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, module+"pkg/build") || !slices.Contains(deps, module+"pkg/poll") {
		t.Fatalf("go list -deps does not list the packages themselves: %v", deps)
	}
	if slices.Contains(deps, module+"pkg/config") {
		t.Errorf("pkg/build or pkg/poll imports pkg/config; map the configuration in pkg/function")
	}
}
