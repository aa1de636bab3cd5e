package main

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakefactory"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/metrics"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/metrics/metricstest"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// The metrics the deployed Builder puts on its log lines (pkg/metrics), as
// CloudWatch Logs would extract them from the invocations' output.

// published is what an invocation's EMF lines publish, and the steps its
// "step finished" lines name.
type published struct {
	metrics  []metricstest.Metric
	finished []string
}

// metricsOf decodes the EMF lines of the Builder's invocations from the
// first'th on, each checked against the specification.
func (w *world) metricsOf(first int) published {
	w.t.Helper()
	var p published
	for _, inv := range w.Lambda.Invocations("builder")[first:] {
		for _, l := range inv.Logs {
			var line struct {
				Message string `json:"message"`
				Step    string `json:"step"`
			}
			if json.Unmarshal([]byte(l), &line) != nil {
				continue // RIE's own lines
			}
			if line.Message == "step finished" {
				p.finished = append(p.finished, line.Step)
			}
			if !metricstest.IsEMF([]byte(l)) {
				continue
			}
			ms, err := metricstest.Decode([]byte(l), time.Now())
			if err != nil {
				w.t.Errorf("%s: %v", l, err)
			}
			p.metrics = append(p.metrics, ms...)
		}
	}
	return p
}

// of returns the values of the metric by its own dimensions, with the
// value of its dimension besides FunctionName ("" for none).
func (p published) of(m metrics.Metric) (dims []string, values []float64) {
	for _, got := range p.metrics {
		if got.Name == m.Name {
			if len(m.Dimensions) > 0 {
				dims = append(dims, got.Dimensions[m.Dimensions[0]])
			}
			values = append(values, got.Value)
		}
	}
	return dims, values
}

func sum(vs []float64) float64 {
	var s float64
	for _, v := range vs {
		s += v
	}
	return s
}

// TestMetricsOfBuilds: each request's invocations publish one Builds
// metric by its outcome, the Hetzner API requests the build made (all the
// stand-in received), and, when it ran steps, each step's duration, the
// image's size and the boot check's time; every metric is in the
// namespace, by the function's name, with the unit pkg/metrics declares.
func TestMetricsOfBuilds(t *testing.T) {
	allSteps := []string{"server", "install", "snapshot", "wait", "verify", "cleanup"}
	tests := []struct {
		name     string
		truncate fakefactory.Truncation
		payload  string
		outcomes []string // of the requests in turn, each sent twice at most
	}{
		{name: "published, then there", payload: `{"version":"v1.13.9","arch":"amd64"}`,
			outcomes: []string{build.OutcomePublished, build.OutcomeExists}},
		{name: "failed, then held back", truncate: fakefactory.TruncateShort, payload: `{"version":"v1.13.9","arch":"arm64"}`,
			outcomes: []string{build.OutcomeFailed, build.OutcomeHeld}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, setup{})
			w.Stack.Factory.SetTruncate(tt.truncate)
			for _, outcome := range tt.outcomes {
				first, before := len(w.Lambda.Invocations("builder")), len(w.Stack.Cloud.Requests())
				if _, ferr := w.invoke(tt.payload); ferr != "" {
					t.Fatal(ferr)
				}
				p := w.metricsOf(first)
				for _, m := range p.metrics {
					i := slices.IndexFunc(metrics.All, func(d metrics.Metric) bool { return d.Name == m.Name })
					if m.Namespace != metrics.Namespace || i < 0 || m.Unit != string(metrics.All[i].Unit) ||
						m.Dimensions[metrics.FunctionName] != "builder" || len(m.Dimensions) != 1+len(metrics.All[i].Dimensions) {
						t.Errorf("%s: %+v is not a metric of pkg/metrics by the function builder", outcome, m)
					}
				}
				if dims, values := p.of(metrics.Builds); !slices.Equal(dims, []string{outcome}) || !slices.Equal(values, []float64{1}) {
					t.Errorf("Builds by outcome %q = %v, want one %s", dims, values, outcome)
				}
				// Every request the stand-in received was the build's.
				_, requests := p.of(metrics.HetznerRequests)
				if sent := len(w.Stack.Cloud.Requests()) - before; len(requests) != 1 || requests[0] <= 0 || sum(requests) != float64(sent) {
					t.Errorf("%s: HetznerRequests %v, the API received %d", outcome, requests, sent)
				}
				steps, durations := p.of(metrics.StepDuration)
				if !slices.Equal(steps, p.finished) || slices.ContainsFunc(durations, func(v float64) bool { return v < 0 }) {
					t.Errorf("%s: StepDuration of %q (%v), want one per finished step %q", outcome, steps, durations, p.finished)
				}
				_, sizes := p.of(metrics.ImageBytes)
				_, boots := p.of(metrics.BootCheckDuration)
				if outcome != build.OutcomePublished {
					if len(boots) != 0 || len(steps) > 1 {
						t.Errorf("%s: steps %q, boot check %v", outcome, steps, boots)
					}
					continue
				}
				if !slices.Equal(steps, allSteps) {
					t.Errorf("StepDuration of %q, want %q", steps, allSteps)
				}
				tg := target("amd64")
				img, err := (&talos.Factory{BaseURL: w.Stack.Factory.URL()}).Find(t.Context(), tg.Schematic, tg.Version, tg.Arch)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(sizes, []float64{float64(img.Size)}) || img.Size <= 0 {
					t.Errorf("ImageBytes %v, want the factory's %d", sizes, img.Size)
				}
				if len(boots) != 1 || boots[0] <= 0 || boots[0] > sum(durations) {
					t.Errorf("BootCheckDuration %v, want one within the steps' %v s", boots, sum(durations))
				}
			}
		})
	}
}
