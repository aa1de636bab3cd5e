package build

import (
	"context"
	"fmt"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
)

// The result of a run changes only through these: setServer and
// setSnapshot as the build finds or makes them, outcome when it stops.

// Codes of builds that end without failing: refused (refuse) or held back
// by their failure record (heldBack).
const (
	codeForeign         = "foreign"
	codeOtherDeployment = "other-deployment"
	codeBackedOff       = "backed-off"
	codeParked          = "parked"
)

// outcome sets the build's state, the step it stopped at, and why. A build
// in progress with an error is one that nothing carries on unless the
// request is run again.
func (r *run) outcome(state State, step Step, code string, err error) Result {
	r.res.State, r.res.Step, r.res.Code, r.res.Error = state, step, code, ""
	if err != nil {
		r.res.Error = err.Error()
	}
	r.res.retry = state == InProgress && err != nil
	return r.res
}

func (r *run) setServer(srv *hcloud.Server) {
	r.srv = srv
	if srv == nil {
		return
	}
	if srv.ServerType != nil {
		r.res.ServerType = srv.ServerType.Name
	}
	if srv.Location != nil {
		r.res.Location = srv.Location.Name
	}
}

// setSnapshot records the build's snapshot, its labels as last seen.
func (r *run) setSnapshot(img *hcloud.Image) {
	r.snap = img
	r.res.SnapshotID = img.ID
}

// maxIdleHops is how many invocations in a row may hand over without
// progress before the build fails: each costs a Lambda invocation and a
// dozen API requests of the project's 3600 an hour.
const maxIdleHops = 3

// continueLater frees the lease and has a new invocation go on, with the
// count of invocations in a row that made no progress. Without a Continuer
// (outside Lambda) the caller loops on in_progress.
func (r *run) continueLater(ctx context.Context, step Step) Result {
	idle := 0
	if !r.progressed {
		idle = r.idle + 1
	}
	if idle > maxIdleHops {
		return r.failed(ctx, step, deterministic("idle-hops",
			fmt.Errorf("%d invocations in a row handed step %s over without progress; giving up", idle, step)))
	}
	r.lease.release(ctx)
	r.outcome(InProgress, step, "", nil)
	r.res.next = &Continuation{Origin: r.origin, Idle: idle}
	log := r.log.With("step", step)
	if r.b.cont == nil {
		return r.res
	}
	req := Request{Version: r.t.Version, Arch: r.t.Arch, Schematic: r.t.Schematic, Force: r.force, Queue: r.queue,
		Continuation: r.res.next}
	r.b.sign(&req)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := r.b.cont.Continue(cctx, req); err != nil {
		// Lambda retries a function error; the Poller re-drives a build
		// whose server has no live lease.
		return r.retryLater(ctx, step, transient("continue", fmt.Errorf("continue in a new invocation: %w", err)))
	}
	log.InfoContext(ctx, "continuing in a new invocation", "idle", idle)
	return r.res
}

// retryLater ends the invocation with a build that is neither done nor
// failed and that nothing else carries on: a function error, so that
// Lambda runs the request again later.
func (r *run) retryLater(ctx context.Context, step Step, err error) Result {
	code, _ := Classify(err)
	r.log.WarnContext(ctx, "build stopped, to be retried", "step", step, "error", err, "code", code)
	return r.outcome(InProgress, step, code, err)
}

// failed ends the build with err. A transient failure is retried by Lambda
// (retryLater); a deterministic one fails the build and is recorded, so
// that the target backs off (failure.go).
func (r *run) failed(ctx context.Context, step Step, err error) Result {
	code, temporary := Classify(err)
	if temporary {
		return r.retryLater(ctx, step, err)
	}
	r.log.ErrorContext(ctx, "build failed", "step", step, "error", err, "code", code)
	r.remember(ctx, step, code)
	r.outcome(Failed, step, code, err)
	r.announceFailed(ctx)
	return r.res
}

// abort fails the build and deletes its server: a failed build leaves
// nothing behind, and the next request starts afresh. It deletes only while
// the lease is ours. A transient failure keeps the server: Lambda's retry
// goes on from its checkpoint.
func (r *run) abort(ctx context.Context, step Step, err error) Result {
	if _, temporary := Classify(err); temporary {
		return r.retryLater(ctx, step, err)
	}
	res := r.failed(ctx, step, err)
	if r.srv != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.b.opts.StepTimeout)
		defer cancel()
		if lerr := r.lease.verify(cctx); lerr != nil {
			r.log.ErrorContext(ctx, "not deleting the server of a failed build: the lease is not ours", "step", step, "error", lerr)
			return res
		}
		if derr := r.b.cloud.DeleteServer(cctx, r.srv); derr != nil {
			r.log.ErrorContext(ctx, "delete server of failed build", "step", step, "error", derr)
		} else {
			r.log.InfoContext(ctx, "deleted server of failed build", "step", step)
		}
	}
	return res
}

// refuse fails a build that must not act in this project (another
// deployment claims the cluster, a resource of its name is not ours). It
// changes nothing, not even a failure record: the target did not fail, and
// the record would be written where this deployment may not write.
func (r *run) refuse(ctx context.Context, step Step, code string, err error) Result {
	r.log.ErrorContext(ctx, "build refused", "step", step, "error", err, "code", code)
	return r.outcome(Failed, step, code, err)
}
