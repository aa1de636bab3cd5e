package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/dlclark/regexp2"
	"github.com/sethvargo/go-envconfig"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/config"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/poll"
)

// functions are the template's functions by logical id.
var functions = []string{"Builder", "Poller"}

// builderName is the Builder's explicit name: its own policy and the
// Poller's name it as a string, not by a reference to the function.
var builderName = map[string]any{"Fn::Sub": "${AWS::StackName}-builder"}

// notGiven lists configuration a function deliberately does not get.
var notGiven = map[string]map[string]string{
	"Builder": {
		"BUILDER_FUNCTION_NAME": "it continues itself by AWS_LAMBDA_FUNCTION_NAME",
		"GITHUB_TOKEN_SECRET":   "it never calls GitHub, so its role may not read that token",
	},
	"Poller": {
		"EVENT_BUS_NAME": "only the Builder announces builds, so only its role may put events",
	},
}

// requiredInTemplate are variables without a pkg/config default whose
// parameter has none either: in AWS the Hetzner token has no other source.
var requiredInTemplate = map[string]bool{"HCLOUD_TOKEN_SECRET": true}

func loadTemplate(t *testing.T) map[string]any {
	t.Helper()
	tpl, err := parseTemplate(readRepoFile(t, "template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return tpl
}

// function returns a function's properties as SAM sees them: the Globals
// merged in, maps such as LoggingConfig key by key (SAM merges maps), the
// environment variables of both combined.
func function(t *testing.T, tpl map[string]any, name string) map[string]any {
	t.Helper()
	res := obj(at(tpl, "Resources", name))
	if res["Type"] != "AWS::Serverless::Function" {
		t.Fatalf("resource %s is %v, want an AWS::Serverless::Function", name, res["Type"])
	}
	props := map[string]any{}
	maps.Copy(props, obj(at(tpl, "Globals", "Function")))
	for k, v := range obj(res["Properties"]) {
		g, gok := props[k].(map[string]any)
		m, mok := v.(map[string]any)
		if gok && mok {
			merged := maps.Clone(g)
			maps.Copy(merged, m)
			v = merged
		}
		props[k] = v
	}
	vars := map[string]any{}
	maps.Copy(vars, obj(at(tpl, "Globals", "Function", "Environment", "Variables")))
	maps.Copy(vars, obj(at(res, "Properties", "Environment", "Variables")))
	props["Environment"] = map[string]any{"Variables": vars}
	return props
}

func envVars(fn map[string]any) map[string]any {
	return obj(at(fn, "Environment", "Variables"))
}

// configVar is an environment variable pkg/config reads.
type configVar struct {
	name       string
	def        string
	hasDefault bool
}

// configVars derives what pkg/config reads from the env tags of its Config.
func configVars(t *testing.T) map[string]configVar {
	t.Helper()
	vars := map[string]configVar{}
	typ := reflect.TypeFor[config.Config]()
	for i := range typ.NumField() {
		tag, ok := typ.Field(i).Tag.Lookup("env")
		if !ok {
			t.Fatalf("config.Config.%s has no env tag", typ.Field(i).Name)
		}
		name, opts, _ := strings.Cut(tag, ",")
		v := configVar{name: strings.TrimSpace(name)}
		// go-envconfig takes the rest of the tag after default= as the value.
		if _, def, ok := strings.Cut(opts, "default="); ok {
			v.def, v.hasDefault = def, true
		}
		vars[v.name] = v
	}
	if len(vars) < 10 {
		t.Fatalf("found %d variables in config.Config; the tag parsing is broken", len(vars))
	}
	return vars
}

// isToken reports whether name is a token that has a *_SECRET variable: in
// AWS it comes from there and never from the template.
func isToken(vars map[string]configVar, name string) bool {
	_, ok := vars[name+"_SECRET"]
	return ok
}

// fakeSecrets answers every secret reference with a token derived from it.
type fakeSecrets struct{}

func (fakeSecrets) Read(_ context.Context, ref string) (string, error) {
	return "token-from-" + ref, nil
}

func TestFunctionsRuntime(t *testing.T) {
	tpl := loadTemplate(t)
	makefile := string(readRepoFile(t, "Makefile"))
	for _, name := range functions {
		t.Run(name, func(t *testing.T) {
			fn := function(t, tpl, name)
			for _, c := range []struct {
				what      string
				got, want any
			}{
				{"Runtime", fn["Runtime"], "provided.al2023"},
				{"Handler", fn["Handler"], "bootstrap"},
				{"Architectures", fn["Architectures"], []any{"arm64"}},
				{"CodeUri", fn["CodeUri"], "."},
				{"LoggingConfig.LogFormat", at(fn, "LoggingConfig", "LogFormat"), "JSON"},
				{"Metadata.BuildMethod", at(tpl, "Resources", name, "Metadata", "BuildMethod"), "makefile"},
			} {
				if !reflect.DeepEqual(c.got, c.want) {
					t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
				}
			}
			if timeout, _ := fn["Timeout"].(int); timeout < 1 || timeout > 900 {
				t.Errorf("Timeout = %v, want 1..900 seconds", fn["Timeout"])
			}
			if mem, _ := fn["MemorySize"].(int); mem < 128 || mem > 10240 {
				t.Errorf("MemorySize = %v, want 128..10240 MB", fn["MemorySize"])
			}
			// SAM's makefile build method runs build-<logical id>.
			if !regexp.MustCompile(`(?m)^build-` + name + `:`).MatchString(makefile) {
				t.Errorf("the Makefile has no build-%s target", name)
			}
		})
	}
	if got := function(t, tpl, "Builder")["Timeout"]; got != 900 {
		t.Errorf("Builder Timeout = %v, want 900 (fewer continuations)", got)
	}
}

func TestBuilderInvocation(t *testing.T) {
	tpl := loadTemplate(t)
	b := function(t, tpl, "Builder")
	if !reflect.DeepEqual(b["FunctionName"], builderName) {
		t.Errorf("Builder FunctionName = %v, want %v", b["FunctionName"], builderName)
	}
	if got := envVars(function(t, tpl, "Poller"))["BUILDER_FUNCTION_NAME"]; !reflect.DeepEqual(got, builderName) {
		t.Errorf("Poller BUILDER_FUNCTION_NAME = %v, want %v", got, builderName)
	}
	if b["RecursiveLoop"] != "Allow" {
		t.Errorf("Builder RecursiveLoop = %v, want Allow (continuations)", b["RecursiveLoop"])
	}
	eic := obj(b["EventInvokeConfig"])
	if retries, ok := eic["MaximumRetryAttempts"].(int); !ok || retries < 0 || retries > 2 {
		t.Errorf("Builder EventInvokeConfig.MaximumRetryAttempts = %v, want 0..2", eic["MaximumRetryAttempts"])
	}
	onFailure := obj(at(eic, "DestinationConfig", "OnFailure"))
	dest, want := failureDestination(t, tpl)
	if !reflect.DeepEqual(onFailure["Destination"], want) {
		t.Errorf("OnFailure.Destination = %v, want %v (resource %s)", onFailure["Destination"], want, dest)
	}
	if len(obj(b["Events"])) != 0 {
		t.Errorf("the Builder has events %v; only the Poller and the Builder itself invoke it", b["Events"])
	}
}

// failureDestination returns the logical id of the Builder's OnFailure
// destination, a queue or topic of this template, and the expression that
// names it as a destination.
func failureDestination(t *testing.T, tpl map[string]any) (string, any) {
	t.Helper()
	onFailure := obj(at(tpl, "Resources", "Builder", "Properties", "EventInvokeConfig", "DestinationConfig", "OnFailure"))
	var name string
	switch onFailure["Type"] {
	case "SQS":
		a, _ := at(onFailure, "Destination", "Fn::GetAtt").([]any)
		if len(a) == 2 && a[1] == "Arn" {
			name, _ = a[0].(string)
		}
	case "SNS":
		name, _ = at(onFailure, "Destination", "Ref").(string)
	default:
		t.Fatalf("OnFailure.Type = %v, want SQS or SNS", onFailure["Type"])
	}
	res := obj(at(tpl, "Resources", name))
	wantType := map[any]string{"SQS": "AWS::SQS::Queue", "SNS": "AWS::SNS::Topic"}[onFailure["Type"]]
	if res["Type"] != wantType || res["Condition"] != nil {
		t.Fatalf("OnFailure.Destination %v is not an unconditional %s of this template", onFailure["Destination"], wantType)
	}
	return name, onFailure["Destination"]
}

func TestPollerSchedule(t *testing.T) {
	tpl := loadTemplate(t)
	events := obj(function(t, tpl, "Poller")["Events"])
	if len(events) != 1 {
		t.Fatalf("Poller has %d events, want one schedule", len(events))
	}
	for name, e := range events {
		if at(e, "Type") != "ScheduleV2" {
			t.Errorf("event %s is %v, want ScheduleV2", name, at(e, "Type"))
		}
		props := obj(at(e, "Properties"))
		param, _ := at(props, "ScheduleExpression", "Ref").(string)
		if def := at(tpl, "Parameters", param, "Default"); param == "" || def != "rate(1 hour)" {
			t.Errorf("ScheduleExpression = %v with default %v, want a parameter defaulting to rate(1 hour)",
				props["ScheduleExpression"], def)
		}
		if _, ok := at(props, "RetryPolicy", "MaximumRetryAttempts").(int); !ok {
			t.Errorf("schedule RetryPolicy = %v, want MaximumRetryAttempts", props["RetryPolicy"])
		}
		input, _ := props["Input"].(string)
		var got, want any
		if err := json.Unmarshal([]byte(input), &got); err != nil {
			t.Fatalf("schedule Input %q: %v", input, err)
		}
		if err := json.Unmarshal(readRepoFile(t, "events/schedule.json"), &want); err != nil {
			t.Fatalf("events/schedule.json: %v", err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("schedule Input = %v, events/schedule.json = %v; want the same payload", got, want)
		}
		if dryRun, err := poll.ParsePayload([]byte(input)); err != nil || dryRun {
			t.Errorf("the Poller reads Input as dryRun=%v, err=%v; want a real poll", dryRun, err)
		}
	}
}

func TestEnvironment(t *testing.T) {
	tpl := loadTemplate(t)
	vars := configVars(t)
	params := obj(tpl["Parameters"])
	for _, name := range functions {
		t.Run(name, func(t *testing.T) {
			env := envVars(function(t, tpl, name))
			for v := range vars {
				_, wired := env[v]
				switch {
				case isToken(vars, v) && wired:
					t.Errorf("%s is in the environment; the token must come from %s_SECRET", v, v)
				case !isToken(vars, v) && notGiven[name][v] == "" && !wired:
					t.Errorf("%s is read by pkg/config but missing from the environment", v)
				case notGiven[name][v] != "" && wired:
					t.Errorf("%s is in the environment although %s", v, notGiven[name][v])
				}
			}
			lookup := map[string]string{}
			for v, value := range env {
				cv, ok := vars[v]
				if !ok {
					t.Errorf("%s is in the environment but pkg/config does not read it", v)
					continue
				}
				if v == "BUILDER_FUNCTION_NAME" {
					if !reflect.DeepEqual(value, builderName) {
						t.Errorf("BUILDER_FUNCTION_NAME = %v, want %v", value, builderName)
					}
					lookup[v] = "hcloud-k8s-builder"
					continue
				}
				param, _ := at(value, "Ref").(string)
				p, ok := obj(params[param]), params[param] != nil
				if !ok {
					t.Errorf("%s = %v, want a Ref to a parameter", v, value)
					continue
				}
				def, hasDef := p["Default"]
				switch {
				case requiredInTemplate[v]:
					if hasDef || cv.hasDefault {
						t.Errorf("%s: parameter %s has default %v and pkg/config %q; want it required", v, param, def, cv.def)
					}
					lookup[v] = "ssm:/hcloud-k8s/hcloud-token"
				case !hasDef || def != cv.def:
					t.Errorf("%s: parameter %s default = %v, pkg/config's = %q", v, param, def, cv.def)
				default:
					lookup[v] = cv.def
				}
			}
			// The defaults, as the function would read them, are valid.
			cfg, err := config.LoadFrom(context.Background(), envconfig.MapLookuper(lookup), fakeSecrets{})
			if err != nil {
				t.Fatalf("the template's defaults are not a valid configuration: %v", err)
			}
			if cfg.HCloudToken != "token-from-ssm:/hcloud-k8s/hcloud-token" {
				t.Errorf("HCLOUD_TOKEN_SECRET does not reach the token: HCloudToken = %q", cfg.HCloudToken)
			}
		})
	}
}

func TestParameters(t *testing.T) {
	tpl := loadTemplate(t)
	params := obj(tpl["Parameters"])
	used := map[string]bool{}
	for _, section := range []string{"Globals", "Conditions", "Resources", "Outputs"} {
		references(tpl[section], used)
	}
	for name, p := range params {
		p := obj(p)
		if p["Type"] != "String" {
			t.Errorf("parameter %s is %v; environment values are strings", name, p["Type"])
		}
		if !used[name] {
			t.Errorf("parameter %s is not used", name)
		}
		if def, ok := p["Default"]; ok {
			if err := allowed(p, fmt.Sprint(def)); err != nil {
				t.Errorf("parameter %s: its default %v", name, err)
			}
		}
	}
	// What CloudFormation accepts for the secrets, as pkg/secret reads them.
	for _, tt := range []struct {
		param, value string
		ok           bool
	}{
		{"HCloudTokenSecret", "ssm:/hcloud-k8s/hcloud-token", true},
		{"HCloudTokenSecret", "hcloud-k8s/hcloud-token", true},
		{"HCloudTokenSecret", "arn:aws:secretsmanager:eu-central-1:123456789012:secret:hcloud-token-AbCdEf", true},
		{"HCloudTokenSecret", "", false},
		{"HCloudTokenSecret", "ssm:hcloud-token", false},
		{"HCloudTokenSecret", "a token", false},
		{"GitHubTokenSecret", "", true},
		{"GitHubTokenSecret", "ssm:/hcloud-k8s/github-token", true},
		{"TrackAllPatches", "yes", false},
		{"BuildServerTtl", "1h30m", true},
		{"BuildServerTtl", "2 hours", false},
		{"SchematicIds", strings.Repeat("a", 64), true},
		{"SchematicIds", "abc", false},
		// Plain http only reaches loopback hosts, which a deployed
		// function has none of (pkg/config refuses the rest).
		{"HCloudEndpoint", "http://api.hetzner.cloud/v1", false},
		{"TalosFactoryUrl", "http://factory.talos.dev", false},
		{"GitHubApiUrl", "http://api.github.com/", false},
		{"GitHubApiUrl", "https://ghe.example.com/api/v3/", true},
	} {
		err := allowed(obj(params[tt.param]), tt.value)
		if (err == nil) != tt.ok {
			t.Errorf("parameter %s = %q: err = %v, want accepted = %v", tt.param, tt.value, err, tt.ok)
		}
	}
}

// allowed checks value against a parameter's MaxLength, AllowedPattern and
// AllowedValues, as CloudFormation does. CloudFormation reads a pattern as a
// Java regular expression matching the whole value; regexp2 reads the
// constructs the template uses (groups, classes, counts, look-ahead) alike.
func allowed(p map[string]any, value string) error {
	if n, ok := p["MaxLength"].(int); ok && len(value) > n {
		return fmt.Errorf("%q is longer than MaxLength %d", value, n)
	}
	if pat, ok := p["AllowedPattern"].(string); ok {
		re, err := compilePattern(pat)
		if err != nil {
			return fmt.Errorf("pattern %q: %w", pat, err)
		}
		if ok, err := re.MatchString(value); err != nil || !ok {
			return fmt.Errorf("%q does not match %q", value, pat)
		}
	}
	if vals, ok := p["AllowedValues"].([]any); ok && !slices.Contains(vals, any(value)) {
		return fmt.Errorf("%q is not one of %v", value, vals)
	}
	return nil
}

// references adds the names v refers to by Ref or in Fn::Sub to into.
func references(v any, into map[string]bool) {
	switch v := v.(type) {
	case []any:
		for _, e := range v {
			references(e, into)
		}
	case map[string]any:
		if r, ok := v["Ref"].(string); ok {
			into[r] = true
		}
		switch s := v["Fn::Sub"].(type) {
		case string:
			subReferences(s, nil, into)
		case []any:
			if len(s) == 2 {
				str, _ := s[0].(string)
				subReferences(str, obj(s[1]), into)
			}
		}
		for _, e := range v {
			references(e, into)
		}
	}
}

func subReferences(s string, locals map[string]any, into map[string]bool) {
	for _, m := range subVar.FindAllStringSubmatch(s, -1) {
		if _, local := locals[m[1]]; !local {
			into[m[1]] = true
		}
	}
}

// TestPolicies deploys the template with the secret forms pkg/secret
// reads and compares, per function, every grant of its role with what it
// needs: invoking the Builder (the Poller) or itself (the Builder), reading
// its tokens, putting events on the default bus unless EventBusName is
// empty (the Builder), and sending failures to the destination (SAM adds
// that grant for an SQS OnFailure; it also attaches
// AWSLambdaBasicExecutionRole, the logs, which is not listed here).
func TestPolicies(t *testing.T) {
	const (
		invokeBuilder = "lambda:InvokeFunction arn:aws:lambda:eu-central-1:123456789012:function:hcloud-k8s-builder"
		announce      = "events:PutEvents arn:aws:events:eu-central-1:123456789012:event-bus/default"
		sendFailure   = "sqs:SendMessage BuildFailures.Arn"
		decryptSSM    = `kms:Decrypt arn:aws:kms:eu-central-1:123456789012:key/* if {"StringEquals":{"kms:ViaService":"ssm.eu-central-1.amazonaws.com"}}`
		decryptSM     = `kms:Decrypt arn:aws:kms:eu-central-1:123456789012:key/* if {"StringEquals":{"kms:ViaService":"secretsmanager.eu-central-1.amazonaws.com"}}`
		smARN         = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:hcloud-token-AbCdEf"
	)
	tpl := loadTemplate(t)
	tests := []struct {
		name            string
		params          map[string]string
		builder, poller []string
	}{
		{
			name:   "ssm parameter, no github token",
			params: map[string]string{"HCloudTokenSecret": "ssm:/hcloud-k8s/hcloud-token"},
			builder: []string{invokeBuilder, sendFailure, decryptSSM, announce,
				"ssm:GetParameter arn:aws:ssm:eu-central-1:123456789012:parameter/hcloud-k8s/hcloud-token"},
			poller: []string{invokeBuilder, decryptSSM,
				"ssm:GetParameter arn:aws:ssm:eu-central-1:123456789012:parameter/hcloud-k8s/hcloud-token"},
		},
		{
			name:   "secret name, github token in ssm",
			params: map[string]string{"HCloudTokenSecret": "hcloud-k8s/hcloud-token", "GitHubTokenSecret": "ssm:/hcloud-k8s/github-token"},
			builder: []string{invokeBuilder, sendFailure, decryptSM, announce,
				"secretsmanager:GetSecretValue arn:aws:secretsmanager:eu-central-1:123456789012:secret:hcloud-k8s/hcloud-token-??????"},
			poller: []string{invokeBuilder, decryptSM, decryptSSM,
				"secretsmanager:GetSecretValue arn:aws:secretsmanager:eu-central-1:123456789012:secret:hcloud-k8s/hcloud-token-??????",
				"ssm:GetParameter arn:aws:ssm:eu-central-1:123456789012:parameter/hcloud-k8s/github-token"},
		},
		{
			name:    "secret ARN, github secret name",
			params:  map[string]string{"HCloudTokenSecret": smARN, "GitHubTokenSecret": "github-token"},
			builder: []string{invokeBuilder, sendFailure, decryptSM, announce, "secretsmanager:GetSecretValue " + smARN},
			poller: []string{invokeBuilder, decryptSM, decryptSM, "secretsmanager:GetSecretValue " + smARN,
				"secretsmanager:GetSecretValue arn:aws:secretsmanager:eu-central-1:123456789012:secret:github-token-??????"},
		},
		{
			// No events: no grant to put them.
			name:    "no events",
			params:  map[string]string{"HCloudTokenSecret": smARN, "EventBusName": ""},
			builder: []string{invokeBuilder, sendFailure, decryptSM, "secretsmanager:GetSecretValue " + smARN},
			poller:  []string{invokeBuilder, decryptSM, "secretsmanager:GetSecretValue " + smARN},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for p, v := range tt.params {
				if err := allowed(obj(at(tpl, "Parameters", p)), v); err != nil {
					t.Fatalf("parameter %s: %v", p, err)
				}
			}
			d, err := deploy(tpl, tt.params)
			if err != nil {
				t.Fatal(err)
			}
			for fn, want := range map[string][]string{"Builder": tt.builder, "Poller": tt.poller} {
				got := grants(t, d, function(t, tpl, fn), fn)
				slices.Sort(want)
				if !slices.Equal(got, want) {
					t.Errorf("%s may:\n  %s\nwant:\n  %s", fn, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
				}
			}
		})
	}
}

// grants lists, sorted, what a function's role may do in deployment d: one
// "action resource [if condition]" line per action and resource.
func grants(t *testing.T, d *deployment, fn map[string]any, name string) []string {
	t.Helper()
	policies, err := d.eval(fn["Policies"])
	if err != nil {
		t.Fatalf("%s Policies: %v", name, err)
	}
	var out []string
	for _, p := range policies.([]any) {
		doc := obj(p)
		if ref, ok := doc["Ref"].(string); ok {
			res := obj(at(d.tpl, "Resources", ref))
			if res["Type"] != "AWS::IAM::ManagedPolicy" {
				t.Errorf("%s: policy Ref %s is not a managed policy of this template", name, ref)
				continue
			}
			v, err := d.eval(at(res, "Properties", "PolicyDocument"))
			if err != nil {
				t.Fatalf("%s: %s: %v", name, ref, err)
			}
			doc = obj(v)
		}
		stmts, ok := doc["Statement"].([]any)
		if !ok {
			// Policy templates and AWS managed policies grant more than
			// named here.
			t.Errorf("%s: policy %v is no statement list: write the statements", name, p)
			continue
		}
		for _, s := range stmts {
			out = append(out, statementGrants(t, name, obj(s))...)
		}
	}
	if at(fn, "EventInvokeConfig", "DestinationConfig", "OnFailure", "Type") == "SQS" {
		dest, err := d.eval(at(fn, "EventInvokeConfig", "DestinationConfig", "OnFailure", "Destination"))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("sqs:SendMessage %v", dest))
	}
	slices.Sort(out)
	return out
}

func statementGrants(t *testing.T, fn string, s map[string]any) []string {
	t.Helper()
	for k := range s {
		if !slices.Contains([]string{"Sid", "Effect", "Action", "Resource", "Condition"}, k) {
			t.Errorf("%s: statement %v has %s; want plain Allow statements", fn, s["Sid"], k)
		}
	}
	if s["Effect"] != "Allow" {
		t.Errorf("%s: statement %v has Effect %v", fn, s["Sid"], s["Effect"])
	}
	cond := ""
	if c, ok := s["Condition"]; ok {
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		cond = " if " + string(b)
	}
	var out []string
	for _, a := range strs(t, s["Action"]) {
		for _, r := range strs(t, s["Resource"]) {
			out = append(out, a+" "+r+cond)
		}
	}
	return out
}

// strs reads a policy element that is a string or a list of strings.
func strs(t *testing.T, v any) []string {
	t.Helper()
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				t.Errorf("policy element %v is not a string", e)
			}
			out = append(out, s)
		}
		return out
	}
	t.Errorf("policy element %v is neither a string nor a list", v)
	return nil
}

var patterns sync.Map // pattern → *regexp2.Regexp

// compilePattern compiles an AllowedPattern to match whole values, once.
func compilePattern(pat string) (*regexp2.Regexp, error) {
	if re, ok := patterns.Load(pat); ok {
		return re.(*regexp2.Regexp), nil
	}
	re, err := regexp2.Compile(`^(?:`+pat+`)$`, regexp2.None)
	if err != nil {
		return nil, err
	}
	patterns.Store(pat, re)
	return re, nil
}

func TestAlarms(t *testing.T) {
	tpl := loadTemplate(t)
	dest, _ := failureDestination(t, tpl)
	var failed, stale string
	for name, r := range obj(tpl["Resources"]) {
		if at(r, "Type") != "AWS::CloudWatch::Alarm" {
			continue
		}
		props := obj(at(r, "Properties"))
		if contains(props, map[string]any{"Name": "QueueName", "Value": map[string]any{"Fn::GetAtt": []any{dest, "QueueName"}}}) ||
			(props["MetricName"] == "Errors" && contains(props, map[string]any{"Name": "FunctionName", "Value": map[string]any{"Ref": "Builder"}})) {
			failed = name
		}
		// The Poller's invocations alone; BuilderRunawayAlarm compares them
		// with the Builder's.
		if contains(props, map[string]any{"Name": "FunctionName", "Value": map[string]any{"Ref": "Poller"}}) &&
			contains(props, "Invocations") && !contains(props, map[string]any{"Ref": "Builder"}) {
			stale = name
			for _, c := range []struct {
				what      string
				got, want any
			}{
				{"ComparisonOperator", props["ComparisonOperator"], "LessThanThreshold"},
				{"Threshold", fmt.Sprint(props["Threshold"]), "1"},
				// No poll at all is INSUFFICIENT_DATA, which a new alarm
				// starts in: a fresh stack notifies nothing before its
				// first poll, a stopped schedule notifies a day later.
				{"TreatMissingData", props["TreatMissingData"], "missing"},
				{"InsufficientDataActions", fmt.Sprint(props["InsufficientDataActions"]), fmt.Sprint(props["AlarmActions"])},
			} {
				if c.got != c.want {
					t.Errorf("%s %s = %v, want %v", name, c.what, c.got, c.want)
				}
			}
			// A day: one period of 86400 s, on every metric.
			var periods []any
			collect(props, "Period", &periods)
			if len(periods) == 0 || props["EvaluationPeriods"] != 1 {
				t.Errorf("%s evaluates %v periods of %v; want one of a day", name, props["EvaluationPeriods"], periods)
			}
			for _, p := range periods {
				if p != 86400 {
					t.Errorf("%s has a period of %v, want 86400", name, p)
				}
			}
		}
	}
	if failed == "" {
		t.Errorf("no alarm on the Builder's failures (messages in %s or Builder Errors)", dest)
	}
	if stale == "" {
		t.Fatal("no alarm on the Poller's successful runs")
	}
	for _, tt := range []struct {
		name   string
		params map[string]string
		want   string
	}{
		{"none", nil, "[]"},
		{"email", map[string]string{"AlarmEmail": "ops@example.com"}, "[map[Ref:AlarmTopic]]"},
		{"topic", map[string]string{"AlarmTopicArn": "arn:aws:sns:eu-central-1:123456789012:ops"}, "[arn:aws:sns:eu-central-1:123456789012:ops]"},
		{"both", map[string]string{"AlarmEmail": "ops@example.com", "AlarmTopicArn": "arn:aws:sns:eu-central-1:123456789012:ops"},
			"[map[Ref:AlarmTopic] arn:aws:sns:eu-central-1:123456789012:ops]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			params := map[string]string{"HCloudTokenSecret": "hcloud-token"}
			maps.Copy(params, tt.params)
			d, err := deploy(tpl, params)
			if err != nil {
				t.Fatal(err)
			}
			for _, alarm := range []string{failed, stale, "BuilderRunawayAlarm", "BuilderErrorsAlarm"} {
				// Every change of state is told: into ALARM and back.
				for _, actions := range []string{"AlarmActions", "OKActions"} {
					got, err := d.eval(at(tpl, "Resources", alarm, "Properties", actions))
					if err != nil {
						t.Fatalf("%s %s: %v", alarm, actions, err)
					}
					if got == nil {
						got = []any{}
					}
					if s := fmt.Sprint(got); s != tt.want {
						t.Errorf("%s %s notifies %s, want %s", alarm, actions, s, tt.want)
					}
				}
			}
		})
	}
	sub := at(tpl, "Resources", "AlarmTopic", "Properties", "Subscription")
	if !contains(sub, map[string]any{"Protocol": "email", "Endpoint": map[string]any{"Ref": "AlarmEmail"}}) {
		t.Errorf("AlarmTopic subscriptions = %v, want an email one to AlarmEmail", sub)
	}
}

// collect appends the values of every key named key in v to into.
func collect(v any, key string, into *[]any) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if k == key {
				*into = append(*into, e)
			}
			collect(e, key, into)
		}
	case []any:
		for _, e := range v {
			collect(e, key, into)
		}
	}
}

// contains reports whether want occurs in v, as v itself or anywhere inside.
func contains(v, want any) bool {
	if reflect.DeepEqual(v, want) {
		return true
	}
	switch v := v.(type) {
	case map[string]any:
		for _, e := range v {
			if contains(e, want) {
				return true
			}
		}
	case []any:
		for _, e := range v {
			if contains(e, want) {
				return true
			}
		}
	}
	return false
}

func TestOutputs(t *testing.T) {
	tpl := loadTemplate(t)
	outputs := obj(tpl["Outputs"])
	_, destExpr := failureDestination(t, tpl)
	var values []any
	for _, o := range outputs {
		values = append(values, at(o, "Value"))
	}
	for _, want := range []any{
		map[string]any{"Ref": "Builder"},
		map[string]any{"Fn::GetAtt": []any{"Builder", "Arn"}},
		map[string]any{"Ref": "Poller"},
		map[string]any{"Fn::GetAtt": []any{"Poller", "Arn"}},
		destExpr,
	} {
		if !slices.ContainsFunc(values, func(v any) bool { return reflect.DeepEqual(v, want) }) {
			t.Errorf("no output has the value %v", want)
		}
	}
	cmd, _ := at(outputs, "ManualBuildCommand", "Value", "Fn::Sub").(string)
	for _, part := range []string{"aws lambda invoke ", "--function-name ${Builder} ", "--invocation-type Event ",
		"--cli-binary-format raw-in-base64-out "} {
		if !strings.Contains(cmd, part) {
			t.Errorf("ManualBuildCommand %q lacks %q", cmd, part)
		}
	}
	m := regexp.MustCompile(`--payload '([^']*)'`).FindStringSubmatch(cmd)
	if m == nil {
		t.Fatalf("ManualBuildCommand %q has no --payload '...'", cmd)
	}
	if r, err := build.ParseRequest([]byte(m[1])); err != nil || r.Version != "v1.13.9" {
		t.Errorf("ManualBuildCommand payload %s: %+v, %v; want a build of v1.13.9", m[1], r, err)
	}
}

// TestEvents checks that every sample payload is one its function accepts.
func TestEvents(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "events", "*.json"))
	if err != nil || len(files) < 4 {
		t.Fatalf("events: %v files, %v", len(files), err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		if name == "env.json" {
			continue
		}
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(name, "build") {
				if _, err := build.ParseRequest(b); err != nil {
					t.Errorf("the Builder rejects it: %v", err)
				}
				return
			}
			teardown, _, err := poll.ParseTeardown(b)
			if err != nil {
				t.Errorf("the Poller rejects it: %v", err)
			}
			if want := strings.HasPrefix(name, "teardown"); teardown != want {
				t.Errorf("teardown = %v, want %v", teardown, want)
			}
			if teardown {
				return
			}
			dryRun, err := poll.ParsePayload(b)
			if err != nil {
				t.Errorf("the Poller rejects it: %v", err)
			}
			if want := name == "dry-run.json"; dryRun != want {
				t.Errorf("dry run = %v, want %v", dryRun, want)
			}
		})
	}
}

// TestEnvJSON checks events/env.json for `sam local invoke --env-vars`.
// sam local resolves the template's parameters (their defaults, or
// --parameter-overrides) and pseudo parameters, AWS::StackName to "local"
// (aws-sam-cli, samcli/lib/providers/sam_base_provider.py and
// intrinsics_symbol_table.py), and overrides only variables the template
// declares (samcli/local/lambdafn/env_vars.py). So env.json sets only
// declared variables, and it keeps the Poller from naming a function,
// local-builder otherwise, that may exist in the caller's account.
func TestEnvJSON(t *testing.T) {
	tpl := loadTemplate(t)
	var env map[string]map[string]string
	if err := json.Unmarshal(readRepoFile(t, "events/env.json"), &env); err != nil {
		t.Fatalf("events/env.json: %v", err)
	}
	for name, vars := range env {
		if !slices.Contains(functions, name) {
			t.Errorf("events/env.json sets variables of %s, which is not a function of the template", name)
			continue
		}
		declared := envVars(function(t, tpl, name))
		for v, value := range vars {
			if _, ok := declared[v]; !ok {
				t.Errorf("%s: %s is not in the template's environment; sam local would not set it", name, v)
			}
			for _, fn := range []string{"hcloud-k8s-builder", "hcloud-k8s-poller", "local-builder", "Builder"} {
				if strings.Contains(value, fn) {
					t.Errorf("%s: %s=%q names a function", name, v, value)
				}
			}
		}
	}
	if name, ok := env["Poller"]["BUILDER_FUNCTION_NAME"]; !ok || name != "" {
		t.Errorf(`Poller BUILDER_FUNCTION_NAME = %q (set: %v), want "": a local Poller starts no builds in an AWS account`, name, ok)
	}
}

// TestInvokeScriptMatchesTemplate checks that scripts/invoke gives each
// function the timeout and memory template.yaml gives it.
func TestInvokeScriptMatchesTemplate(t *testing.T) {
	tpl := loadTemplate(t)
	script := string(readRepoFile(t, "scripts/invoke"))
	got := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^(\w+)\) timeout=(\d+) memory=(\d+) ;;$`).FindAllStringSubmatch(script, -1) {
		got[m[1]] = m[2] + "s " + m[3] + "MB"
	}
	want := map[string]string{}
	for _, name := range functions {
		fn := function(t, tpl, name)
		want[name] = strconv.Itoa(fn["Timeout"].(int)) + "s " + strconv.Itoa(fn["MemorySize"].(int)) + "MB"
	}
	if !maps.Equal(got, want) {
		t.Errorf("scripts/invoke runs %v, template.yaml says %v", got, want)
	}
}
