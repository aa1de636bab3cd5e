package build

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/backoff"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// Step is a stage of a build. The server's step label says which one runs
// next; every step checks the cloud's state before it acts.
type Step string

const (
	StepCheck    Step = "check"
	StepServer   Step = "server"
	StepInstall  Step = "install"
	StepSnapshot Step = "snapshot"
	StepWait     Step = "wait"
	StepVerify   Step = "verify"
	StepCleanup  Step = "cleanup"
)

// steps is the build, in order (doc.go tells the design). A step returns
// the step to run next, "" when the build is done. Its budget is the time
// an invocation must have left to start it; its resume rule is what it
// does when an earlier invocation died in it, and is logged when a build
// resumes there.
var steps = []struct {
	step   Step
	run    func(r *run, ctx context.Context, log *slog.Logger) (Step, error)
	budget budget
	resume string
}{
	{StepCheck, (*run).check, stepBudget, "reads only; runs before and after the lease is taken"},
	{StepServer, (*run).createServer, stepBudget, "name taken → adopt the server, if ours"},
	{StepInstall, (*run).install, installBudget, "rewrites the whole disk, from a fresh rescue boot"},
	{StepSnapshot, (*run).snapshot, stepBudget, "a snapshot labelled build=<server id> exists → adopt it"},
	{StepWait, (*run).wait, stepBudget, "no snapshot, or it vanished → snapshot again (3 times at most)"},
	{StepVerify, (*run).verify, verifyBudget, "boot server of the name → adopt it; a published snapshot is not checked again"},
	{StepCleanup, (*run).cleanup, stepBudget, "deletes are idempotent"},
}

// A budget is one of the time settings.
type budget struct {
	setting string // its name in the configuration
	of      func(Options) time.Duration
}

var (
	stepBudget    = budget{"STEP_TIMEOUT", func(o Options) time.Duration { return o.StepTimeout }}
	installBudget = budget{"INSTALL_TIMEOUT", func(o Options) time.Duration { return o.InstallTimeout }}
	verifyBudget  = budget{"VERIFY_TIMEOUT", func(o Options) time.Duration {
		if !o.VerifyBoot {
			return o.StepTimeout
		}
		return o.VerifyTimeout
	}}
)

// budgetOf is the budget of a step; an unknown one (a label from a newer
// version, say) gets the short steps'.
func budgetOf(step Step) budget {
	for _, s := range steps {
		if s.step == step {
			return s.budget
		}
	}
	return stepBudget
}

// errContinue ends an invocation that must hand over to the next.
var errContinue = errors.New("continue in a new invocation")

// run is one target's build within one invocation.
type run struct {
	b     *Builder
	t     Target
	force bool
	// origin names the request the build started from; idle counts the
	// invocations before this one that handed over without progress.
	origin string
	idle   int
	// queue is the request's queue: it goes on with the build when it
	// continues in a new invocation.
	queue []Next
	// replaces are the snapshots a forced build replaces: those available
	// when it started, recorded in the build server's labels.
	replaces []int64
	log      *slog.Logger
	res      Result
	srv      *hcloud.Server
	lease    *lease
	image    *talos.Image
	// snap is the build's snapshot as last seen (setSnapshot).
	snap *hcloud.Image
	// started is when the invocation began; progressed tells whether this
	// invocation finished a step (or watched a snapshot being created).
	started    time.Time
	progressed bool
	// installed: this invocation wrote the disk, so no snapshot of the
	// server can exist yet.
	installed bool
}

// build checks, takes the lease, checks again and runs the steps from
// there.
func (r *run) build(ctx context.Context) Result {
	// A function whose whole time cannot hold the longest step never
	// finishes a build: fail before anything is created (and before every
	// invocation hands over to the next, forever).
	longest := StepInstall
	if verifyBudget.of(r.b.opts) > installBudget.of(r.b.opts) {
		longest = StepVerify
	}
	if whole := r.whole(ctx); whole < budgetOf(longest).of(r.b.opts) {
		return r.failed(ctx, StepCheck, errTooShort(whole, longest, r.b.opts))
	}
	log := r.log.With("step", StepCheck)
	next, err := r.check(ctx, log)
	if err != nil || next == "" {
		return r.checked(ctx, err)
	}
	ctx, res, ok := r.takeLease(ctx, next)
	if !ok {
		return res
	}
	defer r.lease.release(ctx)
	if next, err = r.check(ctx, log); err != nil || next == "" {
		return r.checked(ctx, err)
	}
	return r.runSteps(ctx, next)
}

// checked ends a build at its check: done, held by another invocation, or
// stopped by an error. Under the lease every error is retried: the check
// found the build free to go on a moment ago.
func (r *run) checked(ctx context.Context, err error) Result {
	var held *heldBackError
	switch {
	case err == nil:
		return r.res
	case isForeign(err):
		return r.refuse(ctx, StepCheck, codeForeign, err)
	case r.lease != nil:
		return r.retryLater(ctx, StepCheck, cmp.Or(context.Cause(ctx), err))
	case errors.As(err, &held):
		return r.outcome(Failed, StepCheck, held.code, err)
	case talos.IsBuilding(err):
		// Its first request builds the image, for up to ~20 minutes:
		// Lambda's retry asks again.
		return r.retryLater(ctx, StepCheck, err)
	}
	return r.failed(ctx, StepCheck, err)
}

// takeLease takes the target's lease, once no other deployment claims the
// cluster, waiting for a holder that may have died (lease.go). It returns
// the context the build acts under, or the result of a build it must not
// go on with.
func (r *run) takeLease(ctx context.Context, next Step) (context.Context, Result, bool) {
	if err := r.b.deployment().Check(ctx, r.b.cloud, r.b.now()); IsOtherDeployment(err) {
		return ctx, r.refuse(ctx, next, codeOtherDeployment, err), false
	} else if err != nil {
		return ctx, r.retryLater(ctx, next, err), false
	}
	var held *leaseHeldError
	l, lctx, err := r.acquire(ctx)
	if errors.As(err, &held) {
		l, lctx, err = r.awaitLease(ctx, held, next)
	}
	switch {
	case errors.Is(err, errLeaseHeld):
		r.log.InfoContext(ctx, "another invocation is building this target")
		return ctx, r.outcome(InProgress, next, "", nil), false
	case isForeign(err):
		return ctx, r.refuse(ctx, next, codeForeign, err), false
	case err != nil:
		return ctx, r.retryLater(ctx, next, err), false
	}
	r.lease = l
	return lctx, Result{}, true
}

// runSteps runs the steps from next on, each while the lease is ours and
// the invocation has its budget left.
func (r *run) runSteps(ctx context.Context, next Step) Result {
	b := r.b
	locked := 0
	for step := next; step != ""; {
		i := stepIndex(step)
		if i <= 0 { // unknown, or check: the checkpoint never names it
			return r.abort(ctx, step, deterministic("unknown-step", fmt.Errorf("server %s carries unknown step %q", r.name(), step)))
		}
		s := steps[i]
		if !r.haveTime(ctx, step) {
			if whole := r.whole(ctx); !r.progressed && whole < s.budget.of(b.opts) {
				return r.abort(ctx, step, errTooShort(whole, step, b.opts))
			}
			return r.continueLater(ctx, step)
		}
		// Act only while the lease is ours.
		if err := r.lease.verify(ctx); err != nil {
			return r.retryLater(ctx, step, err)
		}
		log := r.log.With("step", step)
		if !r.progressed && locked == 0 && r.srv != nil {
			log.InfoContext(ctx, "resuming the build", "resume_rule", s.resume)
		}
		log.InfoContext(ctx, "step started")
		start := b.now()
		next, err := s.run(r, ctx, log)
		if errors.Is(context.Cause(ctx), errLeaseLost) {
			return r.retryLater(ctx, step, context.Cause(ctx))
		}
		if cloud.IsLocked(err) && locked < maxLockedRetries {
			// An action still runs on the server (a snapshot being taken,
			// say): nothing was changed, so the step is run again later,
			// never taken as a reason to delete the server under it.
			locked++
			log.WarnContext(ctx, "server is locked, running the step again", "error", err, "retry", locked)
			if !r.pause(ctx, time.Duration(locked)*lockedPause) {
				return r.continueLater(ctx, step)
			}
			continue
		}
		if errors.Is(err, errContinue) || cloud.IsLocked(err) {
			return r.continueLater(ctx, step)
		}
		if isForeign(err) {
			return r.refuse(ctx, step, codeForeign, err)
		}
		if err != nil {
			return r.abort(ctx, step, err)
		}
		seconds := b.now().Sub(start).Seconds()
		log.InfoContext(ctx, "step finished", "seconds", seconds, "next", next, r.stepMetric(step, seconds))
		r.progressed = true
		step = next
	}
	r.outcome(Done, "", "", nil)
	r.log.InfoContext(ctx, "snapshot ready", "snapshot_id", r.res.SnapshotID)
	r.forget(ctx)
	r.announcePublished(ctx)
	return r.res
}

func stepIndex(step Step) int {
	for i, s := range steps {
		if s.step == step {
			return i
		}
	}
	return -1
}

// A step answered `locked` is run again after a pause, a few times, before
// the build hands over to a new invocation.
const (
	maxLockedRetries = 3
	lockedPause      = 2 * time.Second
)

// pause waits d, unless ctx ends first or d would leave too little time for
// a step; it reports whether it waited.
func (r *run) pause(ctx context.Context, d time.Duration) bool {
	if deadline, ok := ctx.Deadline(); ok && deadline.Sub(r.b.now()) < d+r.b.opts.StepTimeout {
		return false
	}
	return backoff.Sleep(ctx, d) == nil
}

// stepOf reads the checkpoint: the step the server's labels say is next.
func stepOf(srv *hcloud.Server) Step {
	if srv == nil {
		return StepServer
	}
	if s := Step(srv.Labels[label.Step]); s != "" {
		return s
	}
	return StepInstall
}

// checkpoint writes the next step (and extra labels) into the server's
// labels: read-modify-write, since Hetzner replaces the whole set.
func (r *run) checkpoint(ctx context.Context, next Step, extra map[string]string) error {
	labels := maps.Clone(r.srv.Labels)
	labels[label.Step] = string(next)
	maps.Copy(labels, extra)
	return r.b.cloud.SetServerLabels(ctx, r.srv, labels)
}

func errTooShort(whole time.Duration, step Step, o Options) error {
	b := budgetOf(step)
	return deterministic("function-timeout", fmt.Errorf("this invocation had %s in all (the function's timeout), but step %s needs %s (%s): "+
		"raise the function's timeout or lower %s", whole.Round(time.Second), step, b.of(o), b.setting, b.setting))
}

// haveTime tells whether the invocation has the step's budget left.
func (r *run) haveTime(ctx context.Context, step Step) bool {
	deadline, ok := ctx.Deadline()
	return !ok || deadline.Sub(r.b.now()) >= budgetOf(step).of(r.b.opts)
}

// whole is all the time this invocation had: its deadline less its start.
func (r *run) whole(ctx context.Context) time.Duration {
	deadline, ok := ctx.Deadline()
	if !ok {
		return time.Duration(math.MaxInt64)
	}
	return deadline.Sub(r.started)
}
