package metrics

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/metrics/metricstest"
)

var now = time.Date(2026, 5, 4, 12, 0, 0, 0, time.UTC)

func emitter() *Emitter {
	e := New("stack-builder")
	e.now = func() time.Time { return now }
	return e
}

// logLine writes one line through a JSON handler and a logger with
// attributes, as the Builder's are.
func logLine(t *testing.T, logger func(*slog.Logger) *slog.Logger, msg string, args ...any) []byte {
	t.Helper()
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil)).With("target", "v1.13.9/amd64/ce4c980e")
	if logger != nil {
		log = logger(log)
	}
	log.Info(msg, args...)
	if bytes.Count(buf.Bytes(), []byte("\n")) != 1 {
		t.Fatalf("not one line: %q", buf.String())
	}
	return buf.Bytes()
}

// An attribute of Attr makes the line an EMF document at its top level,
// with the line's own members kept.
func TestAttr(t *testing.T) {
	tests := []struct {
		name   string
		dims   []Dimension
		values []Value
		want   []metricstest.Metric
	}{
		{
			name:   "a step's duration",
			dims:   []Dimension{{Step, "install"}},
			values: []Value{StepDuration.Of(12.5)},
			want: []metricstest.Metric{{Namespace: "hcloud-k8s", Name: "StepDuration", Unit: "Seconds",
				Dimensions: map[string]string{"FunctionName": "stack-builder", "Step": "install"}, Value: 12.5}},
		},
		{
			name:   "an outcome with the requests: a directive per dimension set",
			dims:   []Dimension{{Outcome, "published"}},
			values: []Value{Builds.Of(1), HetznerRequests.Of(42)},
			want: []metricstest.Metric{
				{Namespace: "hcloud-k8s", Name: "Builds", Unit: "Count",
					Dimensions: map[string]string{"FunctionName": "stack-builder", "Outcome": "published"}, Value: 1},
				{Namespace: "hcloud-k8s", Name: "HetznerRequests", Unit: "Count",
					Dimensions: map[string]string{"FunctionName": "stack-builder"}, Value: 42},
			},
		},
		{
			name:   "metrics of the same dimensions share a directive",
			values: []Value{ImageBytes.Of(1 << 30), BootCheckDuration.Of(31.25)},
			want: []metricstest.Metric{
				{Namespace: "hcloud-k8s", Name: "ImageBytes", Unit: "Bytes",
					Dimensions: map[string]string{"FunctionName": "stack-builder"}, Value: 1 << 30},
				{Namespace: "hcloud-k8s", Name: "BootCheckDuration", Unit: "Seconds",
					Dimensions: map[string]string{"FunctionName": "stack-builder"}, Value: 31.25},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := logLine(t, nil, "step finished", "seconds", 12.5, emitter().Attr(tt.dims, tt.values...))
			got, err := metricstest.Decode(line, now)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s publishes\n%+v\nwant\n%+v", line, got, tt.want)
			}
			var root map[string]any
			if err := json.Unmarshal(line, &root); err != nil {
				t.Fatal(err)
			}
			for k, v := range map[string]any{"msg": "step finished", "level": "INFO", "seconds": 12.5,
				"target": "v1.13.9/amd64/ce4c980e"} {
				if root[k] != v {
					t.Errorf("%s: %s = %v, want %v", line, k, root[k], v)
				}
			}
			var dirs struct {
				AWS struct {
					Timestamp         int64
					CloudWatchMetrics []any
				} `json:"_aws"`
			}
			if err := json.Unmarshal(line, &dirs); err != nil {
				t.Fatal(err)
			}
			if dirs.AWS.Timestamp != now.UnixMilli() {
				t.Errorf("Timestamp %d, want %d", dirs.AWS.Timestamp, now.UnixMilli())
			}
		})
	}
}

// Without an emitter, or without values, the line is the plain log line.
func TestNoMetrics(t *testing.T) {
	plain := logLine(t, nil, "step finished", "seconds", 1.5)
	tests := []struct {
		name string
		attr slog.Attr
	}{
		{"nil emitter", (*Emitter)(nil).Attr([]Dimension{{Step, "install"}}, StepDuration.Of(1.5))},
		{"no function name", New("").Attr(nil, Builds.Of(1))},
		{"no values", emitter().Attr([]Dimension{{Step, "install"}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := logLine(t, nil, "step finished", "seconds", 1.5, tt.attr)
			if metricstest.IsEMF(line) || !equalButTime(t, line, plain) {
				t.Errorf("line %s, want the plain %s", line, plain)
			}
		})
	}
}

// A logger with a group nests the attribute: the line is no EMF document.
// The functions' loggers have none.
func TestGroupedLoggerIsNoEMF(t *testing.T) {
	line := logLine(t, func(l *slog.Logger) *slog.Logger { return l.WithGroup("build") }, "step finished",
		emitter().Attr([]Dimension{{Step, "install"}}, StepDuration.Of(1)))
	if _, err := metricstest.Decode(line, now); err == nil {
		t.Errorf("%s decodes as EMF", line)
	}
}

// equalButTime compares two JSON log lines without their time.
func equalButTime(t *testing.T, a, b []byte) bool {
	t.Helper()
	var ma, mb map[string]any
	if err := json.Unmarshal(a, &ma); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &mb); err != nil {
		t.Fatal(err)
	}
	delete(ma, "time")
	delete(mb, "time")
	return reflect.DeepEqual(ma, mb)
}
