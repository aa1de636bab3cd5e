package deploy

import (
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// pollerName is the Poller's explicit name: commands can name it, the
// outputs still give it.
var pollerName = map[string]any{"Fn::Sub": "${AWS::StackName}-poller"}

// TestFunctionNames: both functions have a name derived from the stack, and
// the outputs give both names.
func TestFunctionNames(t *testing.T) {
	tpl := loadTemplate(t)
	for name, want := range map[string]any{"Builder": builderName, "Poller": pollerName} {
		if got := function(t, tpl, name)["FunctionName"]; !reflect.DeepEqual(got, want) {
			t.Errorf("%s FunctionName = %v, want %v", name, got, want)
		}
		out := name + "FunctionName"
		if got := at(tpl, "Outputs", out, "Value"); !reflect.DeepEqual(got, map[string]any{"Ref": name}) {
			t.Errorf("output %s = %v, want the function's name", out, got)
		}
	}
}

// TestLogGroups: each function logs to a log group of the stack, with the
// LogRetentionDays retention (default 30) and deleted with the stack; the
// outputs name them.
func TestLogGroups(t *testing.T) {
	tpl := loadTemplate(t)
	if def := at(tpl, "Parameters", "LogRetentionDays", "Default"); def != "30" {
		t.Errorf("LogRetentionDays default = %v, want 30", def)
	}
	for _, name := range functions {
		fn := function(t, tpl, name)
		group, _ := at(fn, "LoggingConfig", "LogGroup", "Ref").(string)
		res := obj(at(tpl, "Resources", group))
		if group == "" || res["Type"] != "AWS::Logs::LogGroup" || res["Condition"] != nil {
			t.Errorf("%s LoggingConfig.LogGroup = %v, want a Ref to a log group of the stack", name, at(fn, "LoggingConfig"))
			continue
		}
		if at(fn, "LoggingConfig", "LogFormat") != "JSON" {
			t.Errorf("%s logs %v, want JSON", name, at(fn, "LoggingConfig", "LogFormat"))
		}
		if got := at(res, "Properties", "RetentionInDays"); !reflect.DeepEqual(got, map[string]any{"Ref": "LogRetentionDays"}) {
			t.Errorf("%s RetentionInDays = %v, want LogRetentionDays", group, got)
		}
		// Not Lambda's default group of the function: a stack deployed
		// before made that one for the Builder, and CloudFormation cannot
		// create a second group of the same name.
		sub, _ := at(res, "Properties", "LogGroupName", "Fn::Sub").(string)
		if sub == "" || sub == "/aws/lambda/${AWS::StackName}-"+strings.ToLower(name) {
			t.Errorf("%s LogGroupName = %v, want a name of the stack other than Lambda's default", group, at(res, "Properties", "LogGroupName"))
		}
		found := false
		for _, o := range obj(tpl["Outputs"]) {
			found = found || reflect.DeepEqual(at(o, "Value"), map[string]any{"Ref": group})
		}
		if !found {
			t.Errorf("no output names %s", group)
		}
	}
}

// TestDeletionPolicies: every resource that holds data says what happens to
// it on deletion and replacement; `sam delete` deletes them (teardown in the
// README says what to read first).
func TestDeletionPolicies(t *testing.T) {
	tpl := loadTemplate(t)
	stateful := []string{"AWS::SQS::Queue", "AWS::Logs::LogGroup"} // the alarm topic holds no data
	n := 0
	for name, r := range obj(tpl["Resources"]) {
		typ, _ := at(r, "Type").(string)
		if !slices.Contains(stateful, typ) {
			continue
		}
		n++
		for _, policy := range []string{"DeletionPolicy", "UpdateReplacePolicy"} {
			if got := at(r, policy); got != "Delete" {
				t.Errorf("%s (%s) %s = %v, want Delete", name, typ, policy, got)
			}
		}
	}
	if n < 3 {
		t.Errorf("found %d stateful resources, want the failure queue and two log groups", n)
	}
}

// TestSamconfig: samconfig.toml sets only the parameter without a default
// (so that changed defaults reach a stack on upgrade unless pinned), names
// the stack the README uses and deploys with the capability the template
// needs; sam local uses events/env.json.
func TestSamconfig(t *testing.T) {
	tpl := loadTemplate(t)
	conf := string(readRepoFile(t, "samconfig.toml"))
	values := map[string]string{}
	section := ""
	for _, line := range strings.Split(conf, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = strings.Trim(line, "[]")
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("samconfig.toml: cannot read %q", line)
		}
		values[section+"."+strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
	}
	var overrides []string
	for _, kv := range strings.Fields(values["default.global.parameters.parameter_overrides"]) {
		k, _, _ := strings.Cut(kv, "=")
		overrides = append(overrides, k)
	}
	var required []string
	for name, p := range obj(tpl["Parameters"]) {
		if _, ok := obj(p)["Default"]; !ok {
			required = append(required, name)
		}
	}
	slices.Sort(required)
	if !slices.Equal(overrides, required) {
		t.Errorf("samconfig.toml overrides %v, want exactly the parameters without default %v", overrides, required)
	}
	for k, v := range values {
		if strings.HasSuffix(k, ".parameter_overrides") && k != "default.global.parameters.parameter_overrides" {
			t.Errorf("%s = %q: parameters are set once, in [default.global.parameters]", k, v)
		}
	}
	for k, want := range map[string]string{
		"default.global.parameters.stack_name":              "hcloud-k8s",
		"default.deploy.parameters.capabilities":            "CAPABILITY_IAM",
		"default.deploy.parameters.resolve_s3":              "true",
		"default.local_invoke.parameters.env_vars":          "events/env.json",
		"default.deploy.parameters.fail_on_empty_changeset": "false",
	} {
		if values[k] != want {
			t.Errorf("samconfig.toml %s = %q, want %q", k, values[k], want)
		}
	}
	if m := regexp.MustCompile(`(?m)^version = 0\.1$`).FindString(conf); m == "" {
		t.Error("samconfig.toml has no version = 0.1")
	}
}
