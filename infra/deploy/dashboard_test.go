package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/metrics"
)

// The dimension values the Builder publishes, besides its function's name.
var dimensionValues = map[string][]string{
	metrics.Step: {string(build.StepServer), string(build.StepInstall), string(build.StepSnapshot),
		string(build.StepWait), string(build.StepVerify), string(build.StepCleanup)},
	metrics.Outcome: {build.OutcomePublished, build.OutcomeExists, build.OutcomeFailed, build.OutcomeRefused,
		build.OutcomeHeld, build.OutcomeContinued, build.OutcomeRetry, build.OutcomeBusy},
}

// The Builder's name in the deployed body: a reference Fn::Sub resolves
// only when deployed.
const builderRef = "${Builder}"

type widget struct {
	Type                string
	X, Y, Width, Height int
	Properties          struct {
		Title, Region, Query, Markdown string
		Metrics                        [][]any
	}
}

// dashboard returns the dashboard's widgets as the default deployment's
// body has them; the body must be JSON.
func dashboard(t *testing.T) []widget {
	t.Helper()
	tpl := loadTemplate(t)
	res := obj(at(tpl, "Resources", "BuildDashboard"))
	if res["Type"] != "AWS::CloudWatch::Dashboard" || res["Condition"] != nil {
		t.Fatalf("BuildDashboard = %v, want an unconditional AWS::CloudWatch::Dashboard", res)
	}
	d, err := deploy(tpl, map[string]string{"HCloudTokenSecret": "hcloud-token"})
	if err != nil {
		t.Fatal(err)
	}
	body, err := d.eval(at(res, "Properties", "DashboardBody"))
	if err != nil {
		t.Fatal(err)
	}
	s, _ := body.(string)
	var dash struct {
		Widgets []widget
	}
	if err := json.Unmarshal([]byte(s), &dash); err != nil || !json.Valid([]byte(s)) {
		t.Fatalf("DashboardBody is not JSON: %v\n%s", err, s)
	}
	return dash.Widgets
}

// TestDashboardMetrics: the dashboard's graphs show every metric pkg/metrics
// declares, by every dimension value the Builder publishes, and nothing
// else: a metric or dimension renamed in the code without the template, or
// the reverse, fails here.
func TestDashboardMetrics(t *testing.T) {
	shown := map[string]bool{} // "name" and "name dimension=value"
	for _, w := range dashboard(t) {
		if w.Type != "metric" {
			continue
		}
		if w.Properties.Region != pseudo["AWS::Region"] {
			t.Errorf("%q: region %q, want the stack's", w.Properties.Title, w.Properties.Region)
		}
		for _, row := range w.Properties.Metrics {
			m, dims, err := metricRow(row)
			if err != nil {
				t.Errorf("%q: %v", w.Properties.Title, err)
				continue
			}
			shown[m.Name] = true
			for _, d := range m.Dimensions {
				if !slices.Contains(dimensionValues[d], dims[d]) {
					t.Errorf("%q: %s by %s=%q, which the Builder does not publish", w.Properties.Title, m.Name, d, dims[d])
				}
				shown[fmt.Sprintf("%s %s=%s", m.Name, d, dims[d])] = true
			}
		}
	}
	for _, m := range metrics.All {
		if !shown[m.Name] {
			t.Errorf("the dashboard does not show %s", m.Name)
		}
		for _, d := range m.Dimensions {
			for _, v := range dimensionValues[d] {
				if !shown[fmt.Sprintf("%s %s=%s", m.Name, d, v)] {
					t.Errorf("the dashboard does not show %s by %s=%s", m.Name, d, v)
				}
			}
		}
	}
}

// metricRow reads a graph's metric row [namespace, name, dimension,
// value, ..., {options}]: a metric of pkg/metrics by the Builder's name and
// exactly its own dimensions.
func metricRow(row []any) (metrics.Metric, map[string]string, error) {
	if len(row) > 0 {
		if _, ok := row[len(row)-1].(map[string]any); ok {
			row = row[:len(row)-1]
		}
	}
	var ss []string
	for _, v := range row {
		s, ok := v.(string)
		if !ok {
			return metrics.Metric{}, nil, fmt.Errorf("row %v: %v is not a string", row, v)
		}
		ss = append(ss, s)
	}
	if len(ss) < 2 || len(ss)%2 != 0 || ss[0] != metrics.Namespace {
		return metrics.Metric{}, nil, fmt.Errorf("row %q: want namespace %s, a name and dimension pairs", ss, metrics.Namespace)
	}
	i := slices.IndexFunc(metrics.All, func(m metrics.Metric) bool { return m.Name == ss[1] })
	if i < 0 {
		return metrics.Metric{}, nil, fmt.Errorf("row %q: the Builder publishes no metric %s", ss, ss[1])
	}
	m := metrics.All[i]
	dims := map[string]string{}
	for j := 2; j < len(ss); j += 2 {
		dims[ss[j]] = ss[j+1]
	}
	want := append([]string{metrics.FunctionName}, m.Dimensions...)
	if len(dims) != len(want) || dims[metrics.FunctionName] != builderRef ||
		slices.ContainsFunc(want, func(d string) bool { _, ok := dims[d]; return !ok }) {
		return m, nil, fmt.Errorf("%s by %v, want by %q with %s the Builder's name", m.Name, dims, want, metrics.FunctionName)
	}
	return m, dims, nil
}

// queried are the log messages a Logs Insights query selects on.
var queried = regexp.MustCompile(`message (?:= "([^"]+)"|in \[([^\]]+)\])`)

// TestDashboardQueries: the log widgets query the Builder's log group for
// messages the Builder logs (a literal in pkg/build), and the widgets fit
// the 24-column grid without overlapping.
func TestDashboardQueries(t *testing.T) {
	var src strings.Builder
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "pkg", "build", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !strings.HasSuffix(f, "_test.go") {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			src.Write(b)
		}
	}
	widgets := dashboard(t)
	logs := 0
	for i, w := range widgets {
		if w.X < 0 || w.Width < 1 || w.X+w.Width > 24 || w.Height < 1 {
			t.Errorf("%q at x %d, width %d: outside the 24 columns", w.Properties.Title, w.X, w.Width)
		}
		for _, o := range widgets[:i] {
			if w.X < o.X+o.Width && o.X < w.X+w.Width && w.Y < o.Y+o.Height && o.Y < w.Y+w.Height {
				t.Errorf("%q overlaps %q", w.Properties.Title, o.Properties.Title)
			}
		}
		if w.Type != "log" {
			continue
		}
		logs++
		q := w.Properties.Query
		if !strings.HasPrefix(q, "SOURCE '${BuilderLogGroup}' |") || w.Properties.Region != pseudo["AWS::Region"] {
			t.Errorf("%q queries %q in %q, want the Builder's log group in the stack's region", w.Properties.Title, q, w.Properties.Region)
		}
		found := queried.FindAllStringSubmatch(q, -1)
		if len(found) == 0 {
			t.Errorf("%q selects no message: %q", w.Properties.Title, q)
		}
		for _, m := range found {
			msgs := strings.Split(m[2], ",") // quoted
			if m[1] != "" {
				msgs = []string{`"` + m[1] + `"`}
			}
			for _, msg := range msgs {
				if msg = strings.TrimSpace(msg); !strings.Contains(src.String(), msg) {
					t.Errorf("%q selects message %s, which pkg/build does not log", w.Properties.Title, msg)
				}
			}
		}
	}
	if logs < 2 {
		t.Errorf("%d log widgets, want the failures and the published snapshots", logs)
	}
}
