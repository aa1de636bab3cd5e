package deploy

import (
	"go/constant"
	"go/token"
	"go/types"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBuilderConcurrency checks the Builder's reserved concurrency: by
// default enough for every build one poll may start, and none at all (no
// property, not 0, which would stop the Builder) when the parameter is empty.
func TestBuilderConcurrency(t *testing.T) {
	tpl := loadTemplate(t)
	vars := configVars(t)
	maxBuilds, err := strconv.Atoi(vars["MAX_BUILDS_PER_POLL"].def)
	if err != nil {
		t.Fatalf("MAX_BUILDS_PER_POLL default: %v", err)
	}
	for _, tt := range []struct {
		name   string
		params map[string]string
		want   any // evaluated ReservedConcurrentExecutions; nil: absent
	}{
		{"default", nil, "4"},
		{"none", map[string]string{"BuilderConcurrency": ""}, nil},
		{"raised", map[string]string{"BuilderConcurrency": "12"}, "12"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			params := map[string]string{"HCloudTokenSecret": "hcloud-token"}
			for k, v := range tt.params {
				if err := allowed(obj(at(tpl, "Parameters", k)), v); err != nil {
					t.Fatalf("%s %q: %v", k, v, err)
				}
				params[k] = v
			}
			d, err := deploy(tpl, params)
			if err != nil {
				t.Fatal(err)
			}
			props, err := d.eval(at(tpl, "Resources", "Builder", "Properties"))
			if err != nil {
				t.Fatal(err)
			}
			got, ok := obj(props)["ReservedConcurrentExecutions"]
			if tt.want == nil && ok || tt.want != nil && got != tt.want {
				t.Errorf("ReservedConcurrentExecutions = %v (present %v), want %v", got, ok, tt.want)
			}
		})
	}
	def, _ := strconv.Atoi(at(tpl, "Parameters", "BuilderConcurrency", "Default").(string))
	if def < maxBuilds {
		t.Errorf("default reserved concurrency %d < MAX_BUILDS_PER_POLL default %d: a poll's builds could not run at once", def, maxBuilds)
	}
	// 0 would throttle every invocation: the Builder would never run.
	for _, v := range []string{"0", "-1", "four", "04"} {
		if allowed(obj(at(tpl, "Parameters", "BuilderConcurrency")), v) == nil {
			t.Errorf("BuilderConcurrency accepts %q", v)
		}
	}
}

// TestBuilderRunawayAlarm evaluates the alarm's expression as CloudWatch
// would for an hour of invocations: what the schedule explains stays below
// it, the loop issue 9 measured (1,125 invocations in 15 minutes) and an
// unscheduled flood fire it.
func TestBuilderRunawayAlarm(t *testing.T) {
	tpl := loadTemplate(t)
	alarm := obj(at(tpl, "Resources", "BuilderRunawayAlarm", "Properties"))
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"ComparisonOperator", alarm["ComparisonOperator"], "GreaterThanThreshold"},
		{"Threshold", alarm["Threshold"], 0},
		{"EvaluationPeriods", alarm["EvaluationPeriods"], 1},
		{"TreatMissingData", alarm["TreatMissingData"], "notBreaching"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	metrics := map[string]map[string]any{}
	var expr any
	for _, m := range alarm["Metrics"].([]any) {
		m := obj(m)
		metrics[m["Id"].(string)] = m
		if e, ok := m["Expression"]; ok && m["ReturnData"] == true {
			expr = e
		}
	}
	for id, fn := range map[string]string{"builds": "Builder", "polls": "Poller"} {
		stat := obj(at(metrics[id], "MetricStat"))
		if at(stat, "Metric", "MetricName") != "Invocations" || at(stat, "Metric", "Namespace") != "AWS/Lambda" ||
			!contains(stat, map[string]any{"Name": "FunctionName", "Value": map[string]any{"Ref": fn}}) ||
			stat["Period"] != 3600 || stat["Stat"] != "Sum" {
			t.Errorf("metric %s = %v, want the hourly Sum of %s Invocations", id, stat, fn)
		}
	}

	// The default per-build allowance covers a build whose snapshot takes
	// the whole SNAPSHOT_TIMEOUT, one SNAPSHOT_WAIT per invocation.
	vars := configVars(t)
	timeout, err1 := time.ParseDuration(vars["SNAPSHOT_TIMEOUT"].def)
	wait, err2 := time.ParseDuration(vars["SNAPSHOT_WAIT"].def)
	perBuild, err3 := strconv.Atoi(at(tpl, "Parameters", "BuilderInvocationsPerBuild", "Default").(string))
	if err1 != nil || err2 != nil || err3 != nil {
		t.Fatal(err1, err2, err3)
	}
	if need := 1 + int(timeout/wait); perBuild < need {
		t.Errorf("BuilderInvocationsPerBuild default %d < 1 + SNAPSHOT_TIMEOUT/SNAPSHOT_WAIT = %d", perBuild, need)
	}

	// excess evaluates the expression for an hour with the given sums.
	excess := func(params map[string]string, builds, polls int) int64 {
		t.Helper()
		d, err := deploy(tpl, params)
		if err != nil {
			t.Fatal(err)
		}
		v, err := d.eval(expr)
		if err != nil {
			t.Fatal(err)
		}
		s := strings.NewReplacer("FILL(polls, 0)", strconv.Itoa(polls), "builds", strconv.Itoa(builds)).Replace(v.(string))
		tv, err := types.Eval(token.NewFileSet(), nil, token.NoPos, s)
		if err != nil || tv.Value == nil {
			t.Fatalf("expression %q (from %q): %v", s, v, err)
		}
		n, _ := constant.Int64Val(tv.Value)
		return n
	}
	base := map[string]string{"HCloudTokenSecret": "hcloud-token"}
	with := func(k, v string) map[string]string {
		p := maps.Clone(base)
		p[k] = v
		return p
	}
	for _, tt := range []struct {
		name          string
		params        map[string]string
		builds, polls int
		fires         bool
	}{
		// An hourly poll starting 4 builds of 17 invocations each while
		// 4 builds of the poll before finish.
		{"the schedule's worst hour", base, 2 * 4 * 17, 1, false},
		{"a manual build of both architectures and no poll", base, 2 * 17, 0, false},
		{"the loop of issue 9", base, 4 * 1125, 1, true},
		{"unscheduled flood", base, 200, 0, true},
		{"polls every 15 minutes", base, 5 * 4 * 17, 4, false},
		{"more builds per poll", with("MaxBuildsPerPoll", "10"), 2 * 10 * 17, 1, false},
		{"more builds per poll, still a loop", with("MaxBuildsPerPoll", "10"), 4 * 1125, 1, true},
		{"a larger allowance", with("BuilderInvocationsPerBuild", "60"), 2 * 4 * 55, 1, false},
	} {
		if got := excess(tt.params, tt.builds, tt.polls) > 0; got != tt.fires {
			t.Errorf("%s: %d Builder and %d Poller invocations fire = %v, want %v",
				tt.name, tt.builds, tt.polls, got, tt.fires)
		}
	}
}
