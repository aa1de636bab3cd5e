package build

import (
	"context"
	"log/slog"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/metrics"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// The Builder's metrics (pkg/metrics) ride on its log lines: a step's
// duration on "step finished", the image's size on "image written and
// verified", the boot check's time on "snapshot booted", and how a build's
// run in one invocation ended, with the Hetzner API requests it made, on
// "build run ended".

// How a build's run in one invocation ended: the Outcome of the Builds
// metric and of the "build run ended" line.
const (
	OutcomePublished = "published" // its snapshot was published
	OutcomeExists    = "exists"    // nothing to do: the snapshot was there
	OutcomeFailed    = "failed"    // failed for good (recorded, announced)
	OutcomeRefused   = "refused"   // not ours to act on (refuse)
	OutcomeHeld      = "held"      // held back by its failure record
	OutcomeContinued = "continued" // handed over to a new invocation
	OutcomeRetry     = "retry"     // stopped, for Lambda to run the request again
	OutcomeBusy      = "busy"      // another invocation holds the build
)

// outcomeOf names how the run ended, from its result.
func (r *run) outcomeOf() string {
	switch r.res.State {
	case Done:
		// Only the end of the steps is done after a step finished.
		if r.progressed {
			return OutcomePublished
		}
		return OutcomeExists
	case Failed:
		switch r.res.Code {
		case codeBackedOff, codeParked:
			return OutcomeHeld
		case codeForeign, codeOtherDeployment:
			return OutcomeRefused
		}
		return OutcomeFailed
	}
	switch {
	case r.res.retry:
		return OutcomeRetry
	case r.res.next != nil:
		return OutcomeContinued
	}
	return OutcomeBusy
}

// ended logs how the run ended, with the Hetzner API requests it made,
// when metrics are on. Versions and ids are plain members, for Logs
// Insights; only the outcome is a dimension.
func (r *run) ended(ctx context.Context, requests int64) {
	if r.b.metrics == nil {
		return
	}
	outcome := r.outcomeOf()
	r.log.InfoContext(ctx, "build run ended", "outcome", outcome, "state", r.res.State, "step", r.res.Step,
		"code", r.res.Code, "version", r.t.Version, "arch", r.t.Arch, "snapshot_id", r.res.SnapshotID,
		r.b.metrics.Attr([]metrics.Dimension{{Name: metrics.Outcome, Value: outcome}},
			metrics.Builds.Of(1), metrics.HetznerRequests.Of(float64(requests))))
}

// stepMetric is the duration of a finished step.
func (r *run) stepMetric(step Step, seconds float64) slog.Attr {
	return r.b.metrics.Attr([]metrics.Dimension{{Name: metrics.Step, Value: string(step)}}, metrics.StepDuration.Of(seconds))
}

// imageMetric is the size of the image the install fetched, as the factory
// told it (Content-Length of the preferred, zstd, image); the raw bytes
// written are not known without more reads on the rescue system.
func (r *run) imageMetric(img talos.Image) slog.Attr {
	if img.Size < 0 {
		return slog.Attr{}
	}
	return r.b.metrics.Attr(nil, metrics.ImageBytes.Of(float64(img.Size)))
}

// bootCheckMetric is the time from the boot server's start to the Talos
// API's answer.
func (r *run) bootCheckMetric(seconds float64) slog.Attr {
	return r.b.metrics.Attr(nil, metrics.BootCheckDuration.Of(seconds))
}
