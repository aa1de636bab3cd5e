package build

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/backoff"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
)

// maxSnapshotAttempts bounds how often one build server is snapshotted:
// a snapshot that vanishes (a failed create_image may take its image with
// it) is taken again, but not forever. The count lives in the server's
// labels, so it holds across invocations.
const maxSnapshotAttempts = 3

// wait polls the server's snapshots until they are done. The oldest one
// that became available is the build's; duplicates are deleted in cleanup,
// once none is being created (a snapshot being created cannot be deleted).
// A snapshot that failed (any status but creating and available, or
// creating for longer than SnapshotTimeout) fails the build.
func (r *run) wait(ctx context.Context, log *slog.Logger) (Step, error) {
	b := r.b
	until := b.now().Add(b.opts.SnapshotWait)
	if deadline, ok := ctx.Deadline(); ok && deadline.Add(-b.opts.StepTimeout).Before(until) {
		until = deadline.Add(-b.opts.StepTimeout) // leave time to hand over
	}
	// Quick first looks for a quick snapshot, then slower ones: a real one
	// takes minutes, and every look is an API request.
	pauses := backoff.Exponential{Initial: b.pollWait, Factor: 1.5, Max: 10 * time.Second}
	for {
		snaps, err := r.snapshotsOfServer(ctx)
		if err != nil {
			return "", err
		}
		creating, err := r.judgeSnapshots(ctx, snaps, log)
		if errors.Is(err, errNoSnapshot) {
			return r.retake(ctx, log)
		}
		if err != nil {
			return "", err
		}
		if creating == nil {
			return StepVerify, nil
		}
		pause := pauses.Next()
		if b.now().Add(pause).After(until) {
			log.InfoContext(ctx, "snapshot still being created", "snapshot_id", creating.ID)
			// Watching counts as progress: SNAPSHOT_TIMEOUT bounds it.
			r.progressed = true
			return "", errContinue
		}
		if err := backoff.Sleep(ctx, pause); err != nil {
			return "", err
		}
	}
}

// retake goes back to the snapshot step when the server's snapshot is gone
// (or was never made: an invocation died between checkpoint and
// create_image), counting the attempts.
func (r *run) retake(ctx context.Context, log *slog.Logger) (Step, error) {
	n, _ := strconv.Atoi(r.srv.Labels[label.SnapshotAttempts])
	if n++; n >= maxSnapshotAttempts {
		return "", deterministic("snapshot-vanished", fmt.Errorf("the snapshot of %s vanished %d times; giving up", r.name(), n))
	}
	log.WarnContext(ctx, "no snapshot of the server exists, taking it again", "attempt", n+1)
	return StepSnapshot, r.checkpoint(ctx, StepSnapshot, map[string]string{label.SnapshotAttempts: strconv.Itoa(n)})
}

// judgeSnapshots looks at the server's snapshots (oldest first). It returns
// one still being created, or nil when all are available, having set the
// result's snapshot to the oldest, or errNoSnapshot. A snapshot that failed
// (any status but creating and available, or creating for longer than
// SnapshotTimeout) is discarded and fails the build with what was seen.
func (r *run) judgeSnapshots(ctx context.Context, snaps []*hcloud.Image, log *slog.Logger) (*hcloud.Image, error) {
	var creating, good *hcloud.Image
	for _, img := range snaps {
		if img.Labels[label.Failed] != "" {
			r.discard(ctx, img, img.Labels[label.Failed], log) // left by an earlier failure
			continue
		}
		var why string
		switch age := r.b.now().Sub(img.Created); {
		case img.Status == hcloud.ImageStatusAvailable:
			good = cmp.Or(good, img)
			continue
		case img.Status != hcloud.ImageStatusCreating:
			why = "status-" + string(img.Status)
		case age > r.b.opts.SnapshotTimeout:
			why = "timeout"
		default:
			creating = cmp.Or(creating, img)
			continue
		}
		r.discard(ctx, img, why, log)
		return nil, deterministic("snapshot-"+why, fmt.Errorf("snapshot %d of %s failed: %s (status %q, %s old, SNAPSHOT_TIMEOUT %s)",
			img.ID, r.name(), why, img.Status, r.b.now().Sub(img.Created).Round(time.Second), r.b.opts.SnapshotTimeout))
	}
	switch {
	case creating != nil:
		return creating, nil
	case good == nil:
		return nil, errNoSnapshot
	}
	r.setSnapshot(good)
	return nil, nil
}

var errNoSnapshot = errors.New("no snapshot of the build server")

// discard deletes a failed snapshot, or takes its consumer labels away
// when it cannot be deleted yet (DiscardSnapshot).
func (r *run) discard(ctx context.Context, img *hcloud.Image, why string, log *slog.Logger) {
	deleted, err := DiscardSnapshot(ctx, r.b.cloud, img, why)
	if !deleted {
		log.WarnContext(ctx, "failed snapshot cannot be deleted yet", "snapshot_id", img.ID, "reason", why, "error", err)
		return
	}
	if err != nil {
		log.ErrorContext(ctx, "mark failed snapshot", "snapshot_id", img.ID, "reason", why, "error", err)
	}
	log.WarnContext(ctx, "deleted failed snapshot", "snapshot_id", img.ID, "reason", why)
}
