package build

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
)

// cleanup deletes what the build no longer needs: duplicate snapshots of a
// repeated create_image, the boot server, the build server, and the
// snapshots a forced build replaces. The lease key goes when the lease is released.
func (r *run) cleanup(ctx context.Context, log *slog.Logger) (Step, error) {
	b := r.b
	snaps, err := r.snapshotsOfServer(ctx)
	if err != nil {
		return "", err
	}
	creating, err := r.judgeSnapshots(ctx, snaps, log)
	if errors.Is(err, errNoSnapshot) || (err == nil && creating != nil) {
		return StepWait, nil // cleanup resumed from a label: wait first
	}
	if err != nil {
		return "", err
	}
	if slices.ContainsFunc(snaps, func(img *hcloud.Image) bool { return img.ID == r.res.SnapshotID && Pending(img) }) {
		return StepVerify, nil // never leave the build's snapshot unpublished
	}
	for _, dup := range snaps {
		if dup.ID == r.res.SnapshotID || dup.Labels[label.Failed] != "" {
			continue
		}
		log.InfoContext(ctx, "deleting a duplicate snapshot of a repeated create_image", "snapshot_id", dup.ID, "kept", r.res.SnapshotID)
		if err := b.cloud.DeleteImage(ctx, dup); err != nil {
			return "", err
		}
	}
	if b.opts.VerifyBoot {
		if err := r.deleteBootServer(ctx, log); err != nil {
			return "", err
		}
	}
	if err := b.cloud.DeleteServer(ctx, r.srv); err != nil {
		return "", err
	}
	log.InfoContext(ctx, "server deleted")
	if len(r.replaces) > 0 {
		return "", r.deleteReplaced(ctx, log)
	}
	return "", nil
}

// deleteReplaced deletes the snapshots a forced build replaces, never the
// newest available one of the target: two builds that replace the same
// snapshots agree on what survives.
func (r *run) deleteReplaced(ctx context.Context, log *slog.Logger) error {
	snaps, err := r.b.cloud.Snapshots(ctx, r.t.snapshotSelector(r.b.opts.Cluster))
	if err != nil {
		return err
	}
	newest := newestPublished(snaps)
	for _, img := range snaps {
		if !slices.Contains(r.replaces, img.ID) || img == newest || !label.IsManaged(img.Labels) {
			continue
		}
		log.InfoContext(ctx, "deleting replaced snapshot", "snapshot_id", img.ID, "kept", newest.ID)
		if err := r.b.cloud.DeleteImage(ctx, img); err != nil {
			return err
		}
	}
	return nil
}

// parseIDs reads ids joined by "_" (a label value holds no commas).
func parseIDs(s string) []int64 {
	var ids []int64
	for f := range strings.SplitSeq(s, "_") {
		if id, err := strconv.ParseInt(f, 10, 64); err == nil {
			ids = append(ids, id)
		}
	}
	return ids
}

// formatIDs joins the ids that fit a label value, newest (highest) first.
func formatIDs(ids []int64) string {
	sorted := slices.Sorted(slices.Values(ids))
	slices.Reverse(sorted)
	var out string
	for _, id := range sorted {
		f := strconv.FormatInt(id, 10)
		if out != "" {
			f = "_" + f
		}
		if len(out)+len(f) > 63 {
			break
		}
		out += f
	}
	return out
}
