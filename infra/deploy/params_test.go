package deploy

import (
	"context"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/config"
)

// paramVars maps each parameter the functions read to its environment
// variable.
func paramVars(t *testing.T, tpl map[string]any) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, name := range functions {
		for v, value := range envVars(function(t, tpl, name)) {
			if p, ok := at(value, "Ref").(string); ok {
				out[p] = v
			}
		}
	}
	return out
}

// durationVars are the variables pkg/config reads as durations.
func durationVars(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	typ := reflect.TypeFor[config.Config]()
	for i := range typ.NumField() {
		if typ.Field(i).Type == reflect.TypeFor[time.Duration]() {
			name, _, _ := strings.Cut(typ.Field(i).Tag.Get("env"), ",")
			out[name] = true
		}
	}
	return out
}

// durationValues are durations written as people write them (90s, 8m,
// 8m30s, 2h, 1h30m, 1h30m15s): every second to 16m, every 30s to 4h, and
// odd and broken ones.
func durationValues() []string {
	out := []string{"", "0", "0s", "-1m", "1ms", "500ms", "1.5h", "1h0m0s", "10", "m", "1d", "01m", " 1m", "1m ",
		"5000h", "1h60m"}
	forms := func(secs int) {
		h, m, s := secs/3600, secs%3600/60, secs%60
		out = append(out, strconv.Itoa(secs)+"s")
		if secs >= 60 {
			mins := secs / 60
			if s == 0 {
				out = append(out, fmt.Sprintf("%dm", mins))
			} else {
				out = append(out, fmt.Sprintf("%dm%ds", mins, s))
			}
		}
		if h > 0 {
			switch {
			case m == 0 && s == 0:
				out = append(out, fmt.Sprintf("%dh", h))
			case s == 0:
				out = append(out, fmt.Sprintf("%dh%dm", h, m))
			default:
				out = append(out, fmt.Sprintf("%dh%dm%ds", h, m, s))
			}
		}
	}
	for secs := 1; secs <= 16*60; secs++ {
		forms(secs)
	}
	for secs := 16*60 + 30; secs <= 4*3600; secs += 30 {
		forms(secs)
	}
	return out
}

// candidates are values tried for each parameter that is not a duration:
// what people write, and what pkg/config refuses.
var candidates = map[string][]string{
	"ARCHITECTURES": {"amd64", "arm64", "amd64,arm64", "arm64,amd64", "", "amd64,amd64", "arm64,arm64", "x86",
		"amd64,", ",amd64", "AMD64", "amd64, arm64", "amd64,arm64,amd64", "amd64 arm64"},
	"SERVER_TYPES_AMD64": {"cx23", "cx23,cpx11", "ccx13", "cpx11,cx23,ccx13", "", "cax11", "cx23,cax11", "cx2",
		"cx1234", "CX23", "cx23,", "cx23, cpx11", "cx23;cpx11"},
	"SERVER_TYPES_ARM64": {"cax11", "cax11,cax21", "", "cx23", "cax1", "cax11,cx23", "CAX11", ",cax11"},
	"LOCATIONS": {"fsn1", "fsn1,nbg1,hel1", "ash", "us-east", "", "a", "FSN1", "fsn1,", "1fsn", "fsn1 ,nbg1",
		strings.Repeat("a", 31), strings.Repeat("a", 32), "fsn_1", "fsn1,,nbg1"},
	"SERVER_IMAGE": {"debian-13", "ubuntu-24.04", "centos-stream-10", "", "Debian-13", "debian_13", "-x", "1x",
		strings.Repeat("a", 63), strings.Repeat("a", 64), "debian-13.", "debian..13", "debian 13"},
	"SCHEMATIC_IDS": {"", strings.Repeat("a", 64), strings.Repeat("a", 64) + "," + strings.Repeat("b", 64),
		strings.Repeat("A", 64), strings.Repeat("a", 63), strings.Repeat("a", 65), "x", strings.Repeat("a", 64) + ",",
		strings.Repeat("g", 64)},
	"SCHEMATIC_CUSTOMIZATION": {"", "customization: {systemExtensions: {officialExtensions: [siderolabs/qemu-guest-agent]}}",
		strings.Repeat("#", 64<<10), strings.Repeat("#", 64<<10+1)},
	"SNAPSHOT_LABELS": {"", "type=infra", "type=infra,team=ops", "example.com/team=infra", "pinned=", "a=b,a=c",
		"os=talos", "cluster=x", "version=v1", "arch=amd64", "talos_version=x", "talos_schematic_id=x",
		"hcloud-k8s.io/x=1", "hetzner.cloud/x=1", "a", "=b", "a=b=c", "a b=c", "k=" + strings.Repeat("v", 63),
		"k=" + strings.Repeat("v", 64), strings.Repeat("k", 63) + "=v", strings.Repeat("k", 64) + "=v", "a=b,",
		"-a=b", "a=-b", "team=in fra", "ü=1", "a/b/c=1", "osx=1", "my.os=1", " a=b"},
	"CLUSTER_NAME": {"", "prod", "prod-1", "a.b_c-d", strings.Repeat("a", 63), strings.Repeat("a", 64), "-x", "x-",
		"in fra", "ü", "a/b"},
	"TRACK_MINORS":          {"1", "2", "10", "999", "", "0", "-1", "01", "08", "0x10", "1.5", "x", "99999999999999999999"},
	"RETENTION_KEEP_OTHERS": {"0", "2", "999", "", "-1", "08", "0x2", "2.0", "x", "99999999999999999999"},
	"MAX_BUILDS_PER_POLL":   {"1", "4", "999", "", "0", "-1", "08", "x", "99999999999999999999"},
	"FAILURE_LIMIT":         {"1", "4", "100", "101", "", "0", "-1", "08", "0x4", "x", "99999999999999999999"},
	"MIN_VERSION": {"", "v1.12.0", "v1.14.0-beta.1", "v1.12.0-rc.0", "1.12.0", "v1.12", "v1.12.0+build",
		"v01.2.3", "v1.2.3-", "v1.2.3-01", "V1.2.3", "v1.2.3-" + strings.Repeat("a", 60)},
	"TRACK_ALL_PATCHES": {"true", "false", "", "yes", "1", "TRUE", "t"},
	"TRACK_PRERELEASES": {"true", "false", "", "yes", "1", "TRUE", "t"},
	"VERIFY_BOOT":       {"true", "false", "", "yes", "1", "TRUE", "t"},
	"HCLOUD_ENDPOINT": {"https://api.hetzner.cloud/v1", "https://api.hetzner.cloud/v1/", "https://10.0.0.1:8443/v1",
		"https://[::1]/v1", "http://api.hetzner.cloud/v1", "http://127.0.0.1:8080/v1", "https://user:pw@host/v1",
		"https://host/v1?token=x", "https://", "ftp://host", "https://host/v1#x", "https://host name/",
		"https://host/%zz", "https://host/a%20b", "api.hetzner.cloud", ""},
	"TALOS_FACTORY_URL": {"https://factory.talos.dev", "http://factory.talos.dev", "https://u@factory.talos.dev",
		"https://factory.talos.dev?x=1", "https://"},
	"GITHUB_API_URL": {"https://api.github.com/", "https://ghe.example.com/api/v3/", "http://api.github.com/",
		"https://x@api.github.com/", "https://api.github.com/?a=b", ":"},
	"EVENT_BUS_NAME": {"default", "", "builds", "arn:aws:events:eu-central-1:123456789012:event-bus/default",
		"my bus", "default,builds", "arn:aws:sns:eu-central-1:123456789012:builds", strings.Repeat("b", 257)},
}

// loadWith reads the configuration of a function whose settings are the
// defaults but for vars.
func loadWith(vars map[string]string) error {
	m := map[string]string{"HCLOUD_TOKEN": "t"}
	for k, v := range vars {
		m[k] = v
	}
	_, err := config.LoadFrom(context.Background(), envconfig.MapLookuper(m), fakeSecrets{})
	return err
}

// TestParameterPatterns holds each parameter to pkg/config: a value the
// configuration rejects (every other setting at its default) is rejected
// by the parameter's pattern, allowed values or length too, so that a stack
// that deploys also starts. The values a deployer would write are accepted.
func TestParameterPatterns(t *testing.T) {
	tpl := loadTemplate(t)
	params := obj(tpl["Parameters"])
	durations := durationVars(t)
	durationValues := durationValues()
	tried := 0
	for param, v := range paramVars(t, tpl) {
		values, ok := candidates[v]
		if durations[v] {
			values, ok = durationValues, true
		}
		if strings.HasSuffix(v, "_SECRET") {
			continue // a reference pkg/secret reads at run time; TestParameters covers it
		}
		if !ok {
			t.Errorf("parameter %s (%s) has no candidate values in this test", param, v)
			continue
		}
		t.Run(param, func(t *testing.T) {
			rejected, accepted := 0, 0
			for _, value := range values {
				cerr := loadWith(map[string]string{v: value})
				perr := allowed(obj(params[param]), value)
				tried++
				switch {
				case cerr != nil && perr == nil:
					t.Errorf("%s=%q deploys, but the functions refuse it: %v", param, value, cerr)
				case cerr != nil:
					rejected++
				case perr == nil:
					accepted++
				}
			}
			if rejected == 0 || accepted == 0 {
				t.Errorf("of %d values, pkg/config rejected %d and both accepted %d; want some of each", len(values), rejected, accepted)
			}
		})
	}
	for param, values := range map[string][]string{
		"Architectures": {"amd64,arm64", "arm64"}, "ServerTypesAmd64": {"cx23,cpx11", "ccx13"},
		"Locations": {"fsn1,nbg1,hel1", "ash"}, "ServerImage": {"ubuntu-24.04"}, "SnapshotLabels": {"type=infra,team=ops"},
		"ClusterName": {"prod-1"}, "MinVersion": {"v1.14.0-beta.1"}, "BuildServerTtl": {"1h", "90m", "1h30m", "24h"},
		"SnapshotTimeout": {"10s", "30m", "59m59s"}, "LeaseTtl": {"3s", "90s", "15m"}, "StepTimeout": {"1s", "90s", "2m"},
		"InstallTimeout": {"8m30s", "12m"}, "SnapshotWait": {"2m", "12m"}, "VerifyTimeout": {"5m", "12m"}, "HCloudEndpoint": {"https://10.0.0.1:8443/v1/"},
	} {
		for _, value := range values {
			if err := allowed(obj(params[param]), value); err != nil {
				t.Errorf("parameter %s: %v", param, err)
			}
		}
	}
	t.Logf("%d values tried", tried)
}

// TestParameterPairs: where pkg/config checks two settings together, the
// patterns split the range so that any two accepted values pass. The
// checks are sums and orders, so the extremes the patterns accept decide.
func TestParameterPairs(t *testing.T) {
	tpl := loadTemplate(t)
	params := obj(tpl["Parameters"])
	vars := paramVars(t, tpl)
	values := durationValues()
	// extreme returns the longest (or shortest) duration the parameter's
	// pattern accepts among the values.
	extreme := func(param string, longest bool) string {
		best, bestD := "", time.Duration(-1)
		for _, v := range values {
			d, err := time.ParseDuration(v)
			if err != nil || allowed(obj(params[param]), v) != nil {
				continue
			}
			if bestD < 0 || (longest && d > bestD) || (!longest && d < bestD) {
				best, bestD = v, d
			}
		}
		if best == "" {
			t.Fatalf("%s accepts none of the durations", param)
		}
		return best
	}
	for _, pair := range [][2]string{{"StepTimeout", "InstallTimeout"}, {"StepTimeout", "SnapshotWait"}, {"StepTimeout", "VerifyTimeout"}} {
		a, b := extreme(pair[0], true), extreme(pair[1], true)
		if err := loadWith(map[string]string{vars[pair[0]]: a, vars[pair[1]]: b}); err != nil {
			t.Errorf("%s=%s and %s=%s both deploy, but the functions refuse them: %v", pair[0], a, pair[1], b, err)
		}
	}
	snap, ttl := extreme("SnapshotTimeout", true), extreme("BuildServerTtl", false)
	if err := loadWith(map[string]string{vars["SnapshotTimeout"]: snap, vars["BuildServerTtl"]: ttl}); err != nil {
		t.Errorf("SnapshotTimeout=%s and BuildServerTtl=%s both deploy, but the functions refuse them: %v", snap, ttl, err)
	}
	// Every server type list needs a value: both architectures are built
	// by default and the patterns cannot see Architectures.
	for _, p := range []string{"ServerTypesAmd64", "ServerTypesArm64", "Locations"} {
		if allowed(obj(params[p]), "") == nil {
			t.Errorf("%s accepts an empty value", p)
		}
	}
}

// maxStackName is the longest stack name the README and the template's
// Description promise to deploy.
const maxStackName = 56

// TestStackNameLimit: every name the template derives from the stack name
// fits its service's limit for a stack name of maxStackName characters,
// and one character more breaks one: the limit is exactly that.
func TestStackNameLimit(t *testing.T) {
	tpl := loadTemplate(t)
	limits := map[string]int{"FunctionName": 64, "LogGroupName": 512} // Lambda API reference (CreateFunction, FunctionName: a name alone at most 64); CloudWatch Logs (CreateLogGroup: 512)
	longest := func(stack string) (string, bool) {
		fits, worst := true, ""
		var walk func(v any)
		walk = func(v any) {
			switch v := v.(type) {
			case map[string]any:
				for k, e := range v {
					if limit, ok := limits[k]; ok {
						sub, _ := at(e, "Fn::Sub").(string)
						if sub == "" {
							t.Fatalf("%s = %v, want a !Sub of the stack name", k, e)
						}
						name := strings.ReplaceAll(sub, "${AWS::StackName}", stack)
						if strings.Contains(name, "${") {
							t.Fatalf("%s %q depends on more than the stack name", k, sub)
						}
						if len(name) > limit {
							fits, worst = false, name
						}
					}
					walk(e)
				}
			case []any:
				for _, e := range v {
					walk(e)
				}
			}
		}
		walk(tpl["Resources"])
		return worst, fits
	}
	if name, ok := longest(strings.Repeat("s", maxStackName)); !ok {
		t.Errorf("a stack name of %d characters makes %q, too long", maxStackName, name)
	}
	if _, ok := longest(strings.Repeat("s", maxStackName+1)); ok {
		t.Errorf("a stack name of %d characters still fits: the limit is higher than documented", maxStackName+1)
	}
	want := fmt.Sprintf("at most %d characters", maxStackName)
	for _, doc := range []struct{ name, text string }{
		{"template.yaml Description", fmt.Sprint(tpl["Description"])},
		{"README.md", string(readRepoFile(t, "README.md"))},
	} {
		if !strings.Contains(doc.text, want) {
			t.Errorf("%s does not say the stack name is %s", doc.name, want)
		}
	}
}
