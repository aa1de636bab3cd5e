// Package metrics publishes the Builder's CloudWatch metrics in the
// embedded metric format (EMF): CloudWatch Logs turns a log line that is a
// JSON object with an "_aws" member into metrics as it ingests the line,
// and in Lambda the function's log output is all it takes (CloudWatch User
// Guide, "Specification: Embedded metric format"). No API call, no SDK, no
// permission beyond writing logs.
//
// The metrics ride on log lines the Builder writes anyway: Attr returns one
// slog attribute, a group without a key, which handlers inline, so that the
// "_aws" member, the dimensions and the values land at the top level of the
// line. That needs a JSON handler and a logger without groups (WithGroup
// would nest them): the functions' loggers (pkg/function).
package metrics

import (
	"log/slog"
	"slices"
	"time"
)

// Namespace holds every metric of this package.
const Namespace = "hcloud-k8s"

// Unit is a CloudWatch unit (MetricDatum's Unit).
type Unit string

// The units the metrics use.
const (
	Seconds Unit = "Seconds"
	Count   Unit = "Count"
	Bytes   Unit = "Bytes"
)

// Dimension names. Every metric has FunctionName, the Builder's name, so
// that the deployments of one account and Region stay apart; the others
// take a handful of values each (no versions or ids: those are plain
// members of the line, for Logs Insights).
const (
	FunctionName = "FunctionName"
	Step         = "Step"    // a build step: server, install, snapshot, wait, verify, cleanup
	Outcome      = "Outcome" // how a build's run in one invocation ended (pkg/build, Outcome*)
)

// Metric is a metric the Builder publishes.
type Metric struct {
	Name string
	Unit Unit
	// Dimensions are those it is published by besides FunctionName.
	Dimensions []string
}

// The metrics. README.md ("Dashboard and metrics") says what each counts.
var (
	StepDuration      = Metric{Name: "StepDuration", Unit: Seconds, Dimensions: []string{Step}}
	Builds            = Metric{Name: "Builds", Unit: Count, Dimensions: []string{Outcome}}
	HetznerRequests   = Metric{Name: "HetznerRequests", Unit: Count}
	ImageBytes        = Metric{Name: "ImageBytes", Unit: Bytes}
	BootCheckDuration = Metric{Name: "BootCheckDuration", Unit: Seconds}
)

// All are the metrics the Builder publishes; the template's dashboard is
// held to them (infra/deploy).
var All = []Metric{StepDuration, Builds, HetznerRequests, ImageBytes, BootCheckDuration}

// Value is a metric's value on one line.
type Value struct {
	Metric
	Value float64
}

// Of is the metric's value v.
func (m Metric) Of(v float64) Value { return Value{Metric: m, Value: v} }

// Dimension is a dimension's value on one line.
type Dimension struct{ Name, Value string }

// Emitter makes the attributes that turn a log line into an EMF document.
// A nil *Emitter makes none: metrics are off.
type Emitter struct {
	function string
	now      func() time.Time
}

// New returns an Emitter for the function of that name (Lambda's
// AWS_LAMBDA_FUNCTION_NAME); an empty name turns metrics off, since a
// dimension's value must not be empty.
func New(function string) *Emitter {
	if function == "" {
		return nil
	}
	return &Emitter{function: function, now: time.Now}
}

// The "_aws" member: a MetricDirective per set of dimensions.
type (
	directive struct {
		Namespace  string       `json:"Namespace"`
		Dimensions [][]string   `json:"Dimensions"`
		Metrics    []definition `json:"Metrics"`
	}
	definition struct {
		Name string `json:"Name"`
		Unit Unit   `json:"Unit"`
	}
)

// Attr returns the attribute that makes a log line publish values, each by
// FunctionName and its own dimensions, whose values dims gives. It is the
// zero Attr, which handlers drop, for a nil Emitter or no values.
func (e *Emitter) Attr(dims []Dimension, values ...Value) slog.Attr {
	if e == nil || len(values) == 0 {
		return slog.Attr{}
	}
	var directives []directive
	members := []slog.Attr{slog.String(FunctionName, e.function)}
	for _, d := range dims {
		members = append(members, slog.String(d.Name, d.Value))
	}
	for _, v := range values {
		set := append([]string{FunctionName}, v.Dimensions...)
		i := slices.IndexFunc(directives, func(d directive) bool { return slices.Equal(d.Dimensions[0], set) })
		if i < 0 {
			directives = append(directives, directive{Namespace: Namespace, Dimensions: [][]string{set}})
			i = len(directives) - 1
		}
		directives[i].Metrics = append(directives[i].Metrics, definition{Name: v.Name, Unit: v.Unit})
		members = append(members, slog.Float64(v.Name, v.Value))
	}
	aws := slog.Group("_aws", slog.Int64("Timestamp", e.now().UnixMilli()), slog.Any("CloudWatchMetrics", directives))
	return slog.Attr{Value: slog.GroupValue(append([]slog.Attr{aws}, members...)...)}
}
