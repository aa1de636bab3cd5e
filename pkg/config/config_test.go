package config

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

const schematicA = "1111111111111111111111111111111111111111111111111111111111111111"

func load(t *testing.T, env map[string]string) (Config, error) {
	t.Helper()
	return LoadFrom(context.Background(), envconfig.MapLookuper(env), nil)
}

func TestDefaults(t *testing.T) {
	c, err := load(t, map[string]string{"HCLOUD_TOKEN": "secret"})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		HCloudToken:      "secret",
		HCloudEndpoint:   "https://api.hetzner.cloud/v1",
		FactoryURL:       "https://factory.talos.dev",
		GitHubAPIURL:     "https://api.github.com/",
		Architectures:    []string{"amd64", "arm64"},
		ServerTypesAMD64: []string{"cx23", "cpx11"},
		ServerTypesARM64: []string{"cax11"},
		Locations:        []string{"fsn1", "nbg1", "hel1"},
		ServerImage:      "debian-13",
		TrackMinors:      2,
		KeepOthers:       2,
		MaxBuildsPerPoll: 4,
		BuildServerTTL:   2 * time.Hour,
		StepTimeout:      time.Minute,
		InstallTimeout:   8 * time.Minute,
		SnapshotWait:     2 * time.Minute,
		SnapshotTimeout:  30 * time.Minute,
		VerifyBoot:       true,
		VerifyTimeout:    5 * time.Minute,
		LeaseTTL:         90 * time.Second,
		FailureBackoff:   time.Hour,
		FailureLimit:     4,
		EventBusName:     "default",
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", c, want)
	}
	if got := c.Schematics(); !reflect.DeepEqual(got, []string{talos.QemuGuestAgentSchematic}) {
		t.Errorf("default schematics = %v", got)
	}
	if got := c.ServerTypes("arm64"); !reflect.DeepEqual(got, []string{"cax11"}) {
		t.Errorf("ServerTypes(arm64) = %v", got)
	}
	if got := c.ServerTypes("sparc"); got != nil {
		t.Errorf("ServerTypes(sparc) = %v", got)
	}
}

func TestEveryField(t *testing.T) {
	env := map[string]string{
		"HCLOUD_TOKEN":            "tok",
		"HCLOUD_ENDPOINT":         "http://127.0.0.1:8080/v1",
		"TALOS_FACTORY_URL":       "http://127.0.0.1:8081",
		"GITHUB_API_URL":          "http://127.0.0.1:8082/",
		"GITHUB_TOKEN":            "ghp_x",
		"ARCHITECTURES":           "arm64",
		"SERVER_TYPES_AMD64":      "cpx22",
		"SERVER_TYPES_ARM64":      "cax21,cax11",
		"LOCATIONS":               "hel1,fsn1",
		"SERVER_IMAGE":            "ubuntu-24.04",
		"SCHEMATIC_IDS":           schematicA + "," + talos.VanillaSchematic,
		"SCHEMATIC_CUSTOMIZATION": "customization: {}\n",
		"SNAPSHOT_LABELS":         "team=infra,example.com/cost-center=42",
		"CLUSTER_NAME":            "prod-1",
		"TRACK_MINORS":            "3",
		"TRACK_ALL_PATCHES":       "true",
		"TRACK_PRERELEASES":       "true",
		"MIN_VERSION":             "v1.12.0",
		"RETENTION_KEEP_OTHERS":   "0",
		"MAX_BUILDS_PER_POLL":     "10",
		"BUILD_SERVER_TTL":        "90m",
		"BUILDER_FUNCTION_NAME":   "stack-builder",
		"STEP_TIMEOUT":            "2s",
		"INSTALL_TIMEOUT":         "10s",
		"SNAPSHOT_WAIT":           "1s",
		"SNAPSHOT_TIMEOUT":        "5m",
		"VERIFY_BOOT":             "false",
		"VERIFY_TIMEOUT":          "3m",
		"LEASE_TTL":               "3s",
		"FAILURE_BACKOFF":         "15m",
		"FAILURE_LIMIT":           "2",
		"EVENT_BUS_NAME":          "builds",
	}
	c, err := load(t, env)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		HCloudToken:         "tok",
		HCloudEndpoint:      "http://127.0.0.1:8080/v1",
		FactoryURL:          "http://127.0.0.1:8081",
		GitHubAPIURL:        "http://127.0.0.1:8082/",
		GitHubToken:         "ghp_x",
		Architectures:       []string{"arm64"},
		ServerTypesAMD64:    []string{"cpx22"},
		ServerTypesARM64:    []string{"cax21", "cax11"},
		Locations:           []string{"hel1", "fsn1"},
		ServerImage:         "ubuntu-24.04",
		SchematicIDs:        []string{schematicA, talos.VanillaSchematic},
		SchematicYAML:       "customization: {}\n",
		SnapshotLabels:      map[string]string{"team": "infra", "example.com/cost-center": "42"},
		Cluster:             "prod-1",
		TrackMinors:         3,
		TrackAllPatches:     true,
		Prereleases:         true,
		MinVersion:          "v1.12.0",
		KeepOthers:          0,
		MaxBuildsPerPoll:    10,
		BuildServerTTL:      90 * time.Minute,
		BuilderFunctionName: "stack-builder",
		StepTimeout:         2 * time.Second,
		InstallTimeout:      10 * time.Second,
		SnapshotWait:        time.Second,
		SnapshotTimeout:     5 * time.Minute,
		VerifyTimeout:       3 * time.Minute,
		LeaseTTL:            3 * time.Second,
		FailureBackoff:      15 * time.Minute,
		FailureLimit:        2,
		EventBusName:        "builds",
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
	if got := c.Schematics(); !reflect.DeepEqual(got, want.SchematicIDs) {
		t.Errorf("Schematics() = %v", got)
	}
}

func TestRejections(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string // one problem line, exactly
	}{
		{"no token", map[string]string{"HCLOUD_TOKEN": ""},
			"HCLOUD_TOKEN: is required (a Hetzner Cloud API token with read/write access), or HCLOUD_TOKEN_SECRET naming a secret that holds it"},
		{"token whitespace", map[string]string{"HCLOUD_TOKEN": "abc def"}, "HCLOUD_TOKEN: contains whitespace"},
		{"endpoint", map[string]string{"HCLOUD_ENDPOINT": "api.hetzner.cloud"},
			`HCLOUD_ENDPOINT: "api.hetzner.cloud" is not an http(s) URL`},
		{"factory scheme", map[string]string{"TALOS_FACTORY_URL": "ftp://factory.talos.dev"},
			`TALOS_FACTORY_URL: "ftp://factory.talos.dev" is not an http(s) URL`},
		{"github creds", map[string]string{"GITHUB_API_URL": "https://u:p@api.github.com/"},
			`GITHUB_API_URL: "https://***@api.github.com/" must not carry credentials`},
		{"endpoint query", map[string]string{"HCLOUD_ENDPOINT": "https://api.hetzner.cloud/v1?token=abc"},
			`HCLOUD_ENDPOINT: "https://api.hetzner.cloud/v1?***" must not carry a query: it is a base URL that paths are appended to`},
		{"endpoint http", map[string]string{"HCLOUD_ENDPOINT": "http://api.hetzner.cloud/v1"},
			`HCLOUD_ENDPOINT: "http://api.hetzner.cloud/v1" is plain http, which would send the Hetzner Cloud token in clear text; ` +
				"use https (http is accepted only for loopback hosts: 127.0.0.0/8, ::1, localhost)"},
		{"endpoint http on a private address", map[string]string{"HCLOUD_ENDPOINT": "http://10.0.0.1:8080/v1"},
			`HCLOUD_ENDPOINT: "http://10.0.0.1:8080/v1" is plain http, which would send the Hetzner Cloud token in clear text; ` +
				"use https (http is accepted only for loopback hosts: 127.0.0.0/8, ::1, localhost)"},
		{"endpoint http on a name that merely starts like loopback", map[string]string{"HCLOUD_ENDPOINT": "http://127.0.0.1.example.com/v1"},
			`HCLOUD_ENDPOINT: "http://127.0.0.1.example.com/v1" is plain http, which would send the Hetzner Cloud token in clear text; ` +
				"use https (http is accepted only for loopback hosts: 127.0.0.0/8, ::1, localhost)"},
		{"factory http", map[string]string{"TALOS_FACTORY_URL": "http://factory.talos.dev"},
			`TALOS_FACTORY_URL: "http://factory.talos.dev" is plain http, which would let anyone on the way change the disk images the snapshots are made of; ` +
				"use https (http is accepted only for loopback hosts: 127.0.0.0/8, ::1, localhost)"},
		{"github http with a token", map[string]string{"GITHUB_API_URL": "http://ghe.example.com/api/v3/", "GITHUB_TOKEN": "ghp_x"},
			`GITHUB_API_URL: "http://ghe.example.com/api/v3/" is plain http, which would send GITHUB_TOKEN in clear text; ` +
				"use https (http is accepted only for loopback hosts: 127.0.0.0/8, ::1, localhost)"},
		{"arch", map[string]string{"ARCHITECTURES": "amd64,sparc"}, `ARCHITECTURES: "sparc" is not amd64 or arm64`},
		{"arch twice", map[string]string{"ARCHITECTURES": "amd64,amd64"}, `ARCHITECTURES: "amd64" is listed twice`},
		{"arch empty", map[string]string{"ARCHITECTURES": ","}, `ARCHITECTURES: "" is not amd64 or arm64`},
		{"server image", map[string]string{"SERVER_IMAGE": "Debian 13"},
			`SERVER_IMAGE: "Debian 13" is not a Hetzner system image name like debian-13 or ubuntu-24.04`},
		{"server image empty", map[string]string{"SERVER_IMAGE": ""},
			`SERVER_IMAGE: "" is not a Hetzner system image name like debian-13 or ubuntu-24.04`},
		{"server image id", map[string]string{"SERVER_IMAGE": "114690387"},
			`SERVER_IMAGE: "114690387" is not a Hetzner system image name like debian-13 or ubuntu-24.04`},
		{"type arm on amd", map[string]string{"SERVER_TYPES_AMD64": "cax11"},
			`SERVER_TYPES_AMD64: "cax11" is an Arm64 server type; x86 types are cx*, cpx*, ccx*`},
		{"type amd on arm", map[string]string{"SERVER_TYPES_ARM64": "cx23"},
			`SERVER_TYPES_ARM64: "cx23" is not an Arm64 server type (cax*)`},
		{"type garbage", map[string]string{"SERVER_TYPES_ARM64": "big;rm"},
			`SERVER_TYPES_ARM64: "big;rm" is not a Hetzner server type name like cx23 or cax11`},
		{"types empty for built arch", map[string]string{"ARCHITECTURES": "arm64", "SERVER_TYPES_ARM64": ""},
			"SERVER_TYPES_ARM64: is empty but arm64 is built; e.g. cax11"},
		{"location", map[string]string{"LOCATIONS": "fsn1,Falkenstein 1"},
			`LOCATIONS: "Falkenstein 1" is not a location name like fsn1`},
		{"locations empty", map[string]string{"LOCATIONS": ""}, "LOCATIONS: is empty; e.g. fsn1,nbg1,hel1"},
		{"schematic upper", map[string]string{"SCHEMATIC_IDS": strings.ToUpper(schematicA[:60]) + "ABCD"},
			`SCHEMATIC_IDS: "` + strings.ToUpper(schematicA[:60]) + `ABCD" is not a schematic ID (64 lowercase hex digits)`},
		{"schematic short", map[string]string{"SCHEMATIC_IDS": "abc"},
			`SCHEMATIC_IDS: "abc" is not a schematic ID (64 lowercase hex digits)`},
		{"customization too big", map[string]string{"SCHEMATIC_CUSTOMIZATION": strings.Repeat("x", 65<<10)},
			"SCHEMATIC_CUSTOMIZATION: is 66560 bytes; at most 64 KiB"},
		{"label value", map[string]string{"SNAPSHOT_LABELS": "team=in fra"},
			"SNAPSHOT_LABELS: label team=in fra: label value 'in fra' (key: team) is not correctly formatted; " +
				"keys are [prefix/]name with name ≤ 63 characters, values ≤ 63 characters, alphanumeric with -_. inside"},
		{"label hetzner prefix", map[string]string{"SNAPSHOT_LABELS": "hetzner.cloud/x=1"},
			`SNAPSHOT_LABELS: label key "hetzner.cloud/x": the prefix hetzner.cloud/ is reserved by Hetzner`},
		{"label reserved", map[string]string{"SNAPSHOT_LABELS": "os=linux"},
			`SNAPSHOT_LABELS: "os" is set by the builder itself; reserved: os, talos_version, talos_schematic_id, version, arch, cluster and hcloud-k8s.io/*`},
		{"label own prefix", map[string]string{"SNAPSHOT_LABELS": "hcloud-k8s.io/step=x"},
			`SNAPSHOT_LABELS: "hcloud-k8s.io/step" is set by the builder itself; reserved: os, talos_version, talos_schematic_id, version, arch, cluster and hcloud-k8s.io/*`},
		{"cluster", map[string]string{"CLUSTER_NAME": "-prod"},
			"CLUSTER_NAME: label cluster=-prod: label value '-prod' (key: cluster) is not correctly formatted; " +
				"keys are [prefix/]name with name ≤ 63 characters, values ≤ 63 characters, alphanumeric with -_. inside"},
		{"minors", map[string]string{"TRACK_MINORS": "0"}, "TRACK_MINORS: 0; at least 1 (the newest minor release line)"},
		{"min version", map[string]string{"MIN_VERSION": "1.12"},
			`MIN_VERSION: "1.12" is not a version like v1.13.9 or v1.14.0-beta.1`},
		{"keep", map[string]string{"RETENTION_KEEP_OTHERS": "-1"}, "RETENTION_KEEP_OTHERS: -1; 0 or more"},
		{"max builds", map[string]string{"MAX_BUILDS_PER_POLL": "0"}, "MAX_BUILDS_PER_POLL: 0; at least 1"},
		{"ttl", map[string]string{"BUILD_SERVER_TTL": "5m"},
			"BUILD_SERVER_TTL: 5m0s; at least 30m (a build takes up to ~20 minutes)"},
		{"step timeout", map[string]string{"STEP_TIMEOUT": "0s"}, "STEP_TIMEOUT: 0s; between 1s and 5m"},
		{"install timeout", map[string]string{"INSTALL_TIMEOUT": "16m"}, "INSTALL_TIMEOUT: 16m0s; between 1s and 12m"},
		{"install timeout of a whole invocation", map[string]string{"INSTALL_TIMEOUT": "15m"}, "INSTALL_TIMEOUT: 15m0s; between 1s and 12m"},
		{"verify timeout", map[string]string{"VERIFY_TIMEOUT": "13m"}, "VERIFY_TIMEOUT: 13m0s; between 1s and 12m"},
		{"verify and step past one invocation", map[string]string{"VERIFY_TIMEOUT": "12m", "STEP_TIMEOUT": "3m"},
			"VERIFY_TIMEOUT: 12m plus STEP_TIMEOUT 3m is more than 14m: a step must fit one Builder invocation (at most 15m) with a minute to spare"},
		{"install and step past one invocation", map[string]string{"INSTALL_TIMEOUT": "12m", "STEP_TIMEOUT": "3m"},
			"INSTALL_TIMEOUT: 12m plus STEP_TIMEOUT 3m is more than 14m: a step must fit one Builder invocation (at most 15m) with a minute to spare"},
		{"step timeout near 15m", map[string]string{"STEP_TIMEOUT": "14m"}, "STEP_TIMEOUT: 14m0s; between 1s and 5m"},
		{"snapshot wait", map[string]string{"SNAPSHOT_WAIT": "-1s"}, "SNAPSHOT_WAIT: -1s; between 1s and 12m"},
		{"snapshot timeout", map[string]string{"SNAPSHOT_TIMEOUT": "3h"}, "SNAPSHOT_TIMEOUT: 3h0m0s; at least 10s and less than BUILD_SERVER_TTL (2h0m0s), which deletes the build server"},
		{"lease", map[string]string{"LEASE_TTL": "1s"}, "LEASE_TTL: 1s; between 3s and 15m"},
		{"failure backoff short", map[string]string{"FAILURE_BACKOFF": "30s"},
			"FAILURE_BACKOFF: 30s; between 1m and 24h (e.g. the poll interval, 1h)"},
		{"failure backoff long", map[string]string{"FAILURE_BACKOFF": "25h"},
			"FAILURE_BACKOFF: 25h; between 1m and 24h (e.g. the poll interval, 1h)"},
		{"failure limit", map[string]string{"FAILURE_LIMIT": "0"}, "FAILURE_LIMIT: 0; between 1 and 100 failures before a target is parked"},
		{"failure limit high", map[string]string{"FAILURE_LIMIT": "101"}, "FAILURE_LIMIT: 101; between 1 and 100 failures before a target is parked"},
		{"function", map[string]string{"BUILDER_FUNCTION_NAME": "my builder"},
			`BUILDER_FUNCTION_NAME: "my builder" is not a Lambda function name or ARN`},
		{"event bus", map[string]string{"EVENT_BUS_NAME": "my bus"},
			`EVENT_BUS_NAME: "my bus" is not an EventBridge bus name or ARN, like default; empty for no events`},
		{"event bus of another service", map[string]string{"EVENT_BUS_NAME": "arn:aws:sns:eu-central-1:123456789012:builds"},
			`EVENT_BUS_NAME: "arn:aws:sns:eu-central-1:123456789012:builds" is not an EventBridge bus name or ARN, like default; empty for no events`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"HCLOUD_TOKEN": "tok"}
			for k, v := range tt.env {
				env[k] = v
			}
			_, err := load(t, env)
			var verr *ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("err = %v, want *ValidationError", err)
			}
			if len(verr.Problems) != 1 || verr.Problems[0] != tt.want {
				t.Errorf("problems = %q\nwant [%q]", verr.Problems, tt.want)
			}
		})
	}
}

func TestAllProblemsAtOnce(t *testing.T) {
	_, err := load(t, map[string]string{
		"ARCHITECTURES":       "sparc",
		"MAX_BUILDS_PER_POLL": "0",
		"LOCATIONS":           "",
	})
	var verr *ValidationError
	if !errors.As(err, &verr) {
		t.Fatalf("err = %v", err)
	}
	for _, v := range []string{"HCLOUD_TOKEN:", "ARCHITECTURES:", "MAX_BUILDS_PER_POLL:", "LOCATIONS:"} {
		if !strings.Contains(err.Error(), "\n  "+v) {
			t.Errorf("error lacks %s:\n%v", v, err)
		}
	}
	if len(verr.Problems) != 4 {
		t.Errorf("%d problems, want 4: %q", len(verr.Problems), verr.Problems)
	}
}

func TestTokenNeverInErrors(t *testing.T) {
	const token = "s3cr3t-token with space"
	_, err := load(t, map[string]string{"HCLOUD_TOKEN": token, "TRACK_MINORS": "x"})
	if err == nil {
		t.Fatal("want error")
	}
	_, err2 := load(t, map[string]string{"HCLOUD_TOKEN": token})
	for _, e := range []error{err, err2} {
		if e != nil && strings.Contains(e.Error(), "s3cr3t") {
			t.Errorf("error leaks the token: %v", e)
		}
	}
}

// TestURLsRedacted checks that no configuration error shows what may be a
// secret in a URL: user information and queries, parsable or not.
func TestURLsRedacted(t *testing.T) {
	tests := []struct{ url, shown string }{
		{"https://user:s3cret@api.hetzner.cloud/v1", "https://***@api.hetzner.cloud/v1"},
		{"https://s3cret@api.hetzner.cloud", "https://***@api.hetzner.cloud"},
		{"http://tok:s3cret@api.example.com/v1?token=s3cret", "http://***@api.example.com/v1?***"},
		{"https://api.example.com/v1?access_token=s3cret#frag", "https://api.example.com/v1?***#frag"},
		{"https://u:s3cret@ho st/%zz", "https://***@ho st/%zz"},
		{"https://u:p@ss:s3cret@host:8080/x", "https://***@host:8080/x"},
		{"ftp://u:s3cret@example.com", "ftp://***@example.com"},
		{"u:s3cret@example.com/v1", "***@example.com/v1"},
		{"https://api.example.com/a@b?x=s3cret", "https://api.example.com/a@b?***"},
	}
	for _, tt := range tests {
		if got := redactURL(tt.url); got != tt.shown {
			t.Errorf("redactURL(%q) = %q, want %q", tt.url, got, tt.shown)
		}
		for _, name := range []string{"HCLOUD_ENDPOINT", "TALOS_FACTORY_URL", "GITHUB_API_URL"} {
			_, err := load(t, map[string]string{"HCLOUD_TOKEN": "tok", name: tt.url})
			if err == nil {
				t.Errorf("%s=%q accepted", name, tt.url)
				continue
			}
			if strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), strconv.Quote(tt.shown)) {
				t.Errorf("%s=%q: error %q, want it to show only %q", name, tt.url, err, tt.shown)
			}
		}
	}
}

func TestAcceptedValues(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
	}{
		{"arn function", map[string]string{"BUILDER_FUNCTION_NAME": "arn:aws:lambda:eu-central-1:123456789012:function:s-builder"}},
		{"qualified function", map[string]string{"BUILDER_FUNCTION_NAME": "s-builder:$LATEST"}},
		{"dedicated x86", map[string]string{"SERVER_TYPES_AMD64": "ccx13"}},
		// Whether Hetzner sells a type, and where, is asked at build time.
		{"types not sold in the EU or any more", map[string]string{"SERVER_TYPES_AMD64": "cpx11,cx22"}},
		{"other images", map[string]string{"SERVER_IMAGE": "ubuntu-24.04"}},
		{"image with a longer name", map[string]string{"SERVER_IMAGE": "centos-stream-10"}},
		{"no arm types when arm not built", map[string]string{"ARCHITECTURES": "amd64", "SERVER_TYPES_ARM64": ""}},
		{"empty label value", map[string]string{"SNAPSHOT_LABELS": "pinned="}},
		{"prerelease minimum", map[string]string{"MIN_VERSION": "v1.14.0-alpha.0"}},
		{"customization only", map[string]string{"SCHEMATIC_CUSTOMIZATION": "customization: {}"}},
		// The local world: plain http to loopback carries nothing off the machine.
		{"http on loopback", map[string]string{"HCLOUD_ENDPOINT": "http://127.0.0.1:8080/v1",
			"TALOS_FACTORY_URL": "http://127.45.6.7:8081", "GITHUB_API_URL": "http://[::1]:8082/", "GITHUB_TOKEN": "ghp_x"}},
		{"http on localhost", map[string]string{"HCLOUD_ENDPOINT": "http://localhost:8080/v1", "TALOS_FACTORY_URL": "http://LOCALHOST"}},
		// Without a token GitHub gets nothing worth protecting.
		{"github http without a token", map[string]string{"GITHUB_API_URL": "http://ghe.example.com/api/v3/"}},
		{"no events", map[string]string{"EVENT_BUS_NAME": ""}},
		{"event bus by ARN", map[string]string{"EVENT_BUS_NAME": "arn:aws:events:eu-central-1:123456789012:event-bus/builds"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"HCLOUD_TOKEN": "tok"}
			for k, v := range tt.env {
				env[k] = v
			}
			if _, err := load(t, env); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestEmptyEventBus: an empty EVENT_BUS_NAME, as the template sets it for
// no events, stays empty; only an unset one is the default bus.
func TestEmptyEventBus(t *testing.T) {
	c, err := load(t, map[string]string{"HCLOUD_TOKEN": "tok", "EVENT_BUS_NAME": ""})
	if err != nil || c.EventBusName != "" {
		t.Errorf("EVENT_BUS_NAME=\"\": %q, %v; want \"\"", c.EventBusName, err)
	}
}

func TestMalformedNumbersAreReadErrors(t *testing.T) {
	for _, env := range []map[string]string{
		{"TRACK_MINORS": "two"},
		{"BUILD_SERVER_TTL": "2 hours"},
		{"TRACK_PRERELEASES": "maybe"},
	} {
		env["HCLOUD_TOKEN"] = "tok"
		_, err := load(t, env)
		if err == nil || !strings.HasPrefix(err.Error(), "read configuration:") {
			t.Errorf("%v: err = %v", env, err)
		}
	}
}

type fakeSecrets map[string]string

func (f fakeSecrets) Read(_ context.Context, ref string) (string, error) {
	v, ok := f[ref]
	if !ok {
		return "", errors.New("ResourceNotFoundException: no such secret")
	}
	return v, nil
}

func TestTokensFromSecrets(t *testing.T) {
	secrets := fakeSecrets{"hcloud": "h-token", "ssm:/gh": "g-token"}
	tests := []struct {
		name          string
		env           map[string]string
		secrets       SecretReader
		hcloud, ghTok string
		err           string
	}{
		{name: "both from secrets", env: map[string]string{"HCLOUD_TOKEN_SECRET": "hcloud", "GITHUB_TOKEN_SECRET": "ssm:/gh"},
			secrets: secrets, hcloud: "h-token", ghTok: "g-token"},
		{name: "plain token", env: map[string]string{"HCLOUD_TOKEN": "plain"}, hcloud: "plain"},
		{name: "both set", env: map[string]string{"HCLOUD_TOKEN": "plain", "HCLOUD_TOKEN_SECRET": "hcloud"}, secrets: secrets,
			err: "HCLOUD_TOKEN and HCLOUD_TOKEN_SECRET are both set; set one"},
		{name: "missing secret", env: map[string]string{"HCLOUD_TOKEN_SECRET": "nope"}, secrets: secrets,
			err: "HCLOUD_TOKEN_SECRET: ResourceNotFoundException"},
		{name: "no store", env: map[string]string{"HCLOUD_TOKEN_SECRET": "hcloud"},
			err: "HCLOUD_TOKEN_SECRET is set but no secret store is configured"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := LoadFrom(context.Background(), envconfig.MapLookuper(tt.env), tt.secrets)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || c.HCloudToken != tt.hcloud || c.GitHubToken != tt.ghTok {
				t.Errorf("tokens %q %q, err %v", c.HCloudToken, c.GitHubToken, err)
			}
		})
	}
}
