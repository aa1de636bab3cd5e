// Package metricstest reads embedded metric format (EMF) log lines back
// for tests, and checks them against the specification (CloudWatch User
// Guide, "Specification: Embedded metric format") as CloudWatch Logs
// would before it extracts any metric.
package metricstest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
)

// Metric is what a line publishes of one metric by one dimension set.
type Metric struct {
	Namespace  string
	Name       string
	Unit       string
	Dimensions map[string]string
	Value      float64
}

// Units CloudWatch accepts (MetricDatum's Unit).
var units = []string{"Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes",
	"Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
	"Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
	"Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None"}

// The specification's limits.
const (
	maxDimensions = 30  // per dimension set
	maxMetrics    = 100 // per directive
	maxValues     = 100 // per metric value array
	maxDimValue   = 1024
)

// Timestamps CloudWatch accepts: up to two weeks old, two hours ahead.
const (
	maxAge    = 14 * 24 * time.Hour
	maxFuture = 2 * time.Hour
)

// IsEMF tells whether a log line is meant as an EMF document: a JSON object
// with an "_aws" member at its top level.
func IsEMF(line []byte) bool {
	var root map[string]json.RawMessage
	if json.Unmarshal(line, &root) != nil {
		return false
	}
	_, ok := root["_aws"]
	return ok
}

// Decode checks an EMF line, written at about now, against the
// specification and returns the metrics it publishes, one per metric and
// dimension set, in order.
func Decode(line []byte, now time.Time) ([]Metric, error) {
	var root map[string]json.RawMessage
	d := json.NewDecoder(bytes.NewReader(line))
	d.UseNumber()
	if err := d.Decode(&root); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	raw, ok := root["_aws"]
	if !ok {
		return nil, errors.New("no _aws member at the top level")
	}
	var aws struct {
		Timestamp         *json.Number
		CloudWatchMetrics []json.RawMessage
	}
	if err := strict(raw, &aws, "Timestamp", "CloudWatchMetrics"); err != nil {
		return nil, fmt.Errorf("_aws: %w", err)
	}
	if aws.Timestamp == nil {
		return nil, errors.New("_aws.Timestamp is missing")
	}
	ms, err := aws.Timestamp.Int64()
	if err != nil {
		return nil, fmt.Errorf("_aws.Timestamp %s is not milliseconds: %w", *aws.Timestamp, err)
	}
	if ts := time.UnixMilli(ms); ts.Before(now.Add(-maxAge)) || ts.After(now.Add(maxFuture)) {
		return nil, fmt.Errorf("_aws.Timestamp %s is outside what CloudWatch accepts around %s", ts, now)
	}
	if aws.CloudWatchMetrics == nil {
		return nil, errors.New("_aws.CloudWatchMetrics is missing")
	}
	var out []Metric
	for i, rawDir := range aws.CloudWatchMetrics {
		ms, err := directive(root, rawDir)
		if err != nil {
			return nil, fmt.Errorf("_aws.CloudWatchMetrics[%d]: %w", i, err)
		}
		out = append(out, ms...)
	}
	return out, nil
}

// directive checks a MetricDirective and returns what it publishes.
func directive(root map[string]json.RawMessage, raw json.RawMessage) ([]Metric, error) {
	var dir struct {
		Namespace  *string
		Dimensions *[][]string
		Metrics    *[]json.RawMessage
	}
	if err := strict(raw, &dir, "Namespace", "Dimensions", "Metrics"); err != nil {
		return nil, err
	}
	switch {
	case dir.Namespace == nil || *dir.Namespace == "":
		return nil, errors.New("Namespace is missing")
	case dir.Dimensions == nil:
		return nil, errors.New("Dimensions is missing")
	case dir.Metrics == nil:
		return nil, errors.New("Metrics is missing")
	case len(*dir.Metrics) > maxMetrics:
		return nil, fmt.Errorf("%d metrics, more than %d", len(*dir.Metrics), maxMetrics)
	}
	var sets []map[string]string
	for _, set := range *dir.Dimensions {
		if len(set) > maxDimensions {
			return nil, fmt.Errorf("dimension set %q has more than %d dimensions", set, maxDimensions)
		}
		values := map[string]string{}
		for _, name := range set {
			var v string
			if err := json.Unmarshal(root[name], &v); err != nil || v == "" || len(v) > maxDimValue {
				return nil, fmt.Errorf("dimension %s: the root member %s is not a string of 1 to %d characters", name, root[name], maxDimValue)
			}
			values[name] = v
		}
		sets = append(sets, values)
	}
	var out []Metric
	for i, raw := range *dir.Metrics {
		var m struct {
			Name              string
			Unit              *string
			StorageResolution *int
		}
		if err := strict(raw, &m, "Name", "Unit", "StorageResolution"); err != nil {
			return nil, fmt.Errorf("Metrics[%d]: %w", i, err)
		}
		if m.Name == "" {
			return nil, fmt.Errorf("Metrics[%d] has no Name", i)
		}
		var unit string
		if m.Unit != nil {
			if unit = *m.Unit; !slices.Contains(units, unit) {
				return nil, fmt.Errorf("metric %s: unit %q is not a CloudWatch unit", m.Name, unit)
			}
		}
		if r := m.StorageResolution; r != nil && *r != 1 && *r != 60 {
			return nil, fmt.Errorf("metric %s: storage resolution %d is neither 1 nor 60", m.Name, *r)
		}
		v, err := value(root[m.Name])
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", m.Name, err)
		}
		for _, dims := range sets {
			out = append(out, Metric{Namespace: *dir.Namespace, Name: m.Name, Unit: unit, Dimensions: dims, Value: v})
		}
	}
	return out, nil
}

// value reads a metric's root member: a number, or an array of numbers
// (their sum is returned).
func value(raw json.RawMessage) (float64, error) {
	if raw == nil {
		return 0, errors.New("no root member holds its value")
	}
	var one float64
	if err := json.Unmarshal(raw, &one); err == nil && !math.IsInf(one, 0) {
		return one, nil
	}
	var many []float64
	if err := json.Unmarshal(raw, &many); err != nil || len(many) == 0 || len(many) > maxValues {
		return 0, fmt.Errorf("its value %s is neither a number nor an array of 1 to %d numbers", raw, maxValues)
	}
	var sum float64
	for _, v := range many {
		sum += v
	}
	return sum, nil
}

// strict decodes an object of the specification into v, which names its
// members: it "MUST NOT contain any additional members", and they are
// case-sensitive (encoding/json matches struct fields regardless of case).
func strict(raw json.RawMessage, v any, members ...string) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return fmt.Errorf("not an object: %w", err)
	}
	for k := range obj {
		if !slices.Contains(members, k) {
			return fmt.Errorf("member %q is not one of %q", k, members)
		}
	}
	return json.Unmarshal(raw, v)
}
