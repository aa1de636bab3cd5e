package build

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"strconv"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
)

// snapshot takes the server's snapshot, once. The checkpoint moves to wait
// before create_image: while the image is created the server is locked, so
// a label update afterwards may be refused, and wait finds the snapshot by
// its build=<server id> label anyway.
func (r *run) snapshot(ctx context.Context, log *slog.Logger) (Step, error) {
	b := r.b
	// A snapshot of this server exists if an invocation died after creating
	// it: adopt it rather than make a second one. If this invocation
	// installed the disk, no earlier one got this far.
	if !r.installed {
		adopted, err := r.adoptSnapshot(ctx, log)
		if adopted || err != nil {
			return StepWait, err
		}
	}
	if r.srv.Status != hcloud.ServerStatusOff {
		if err := b.cloud.PowerOff(ctx, r.srv); err != nil {
			return "", err
		}
	}
	if err := r.checkpoint(ctx, StepWait, nil); err != nil {
		return "", err
	}
	img, err := b.cloud.CreateSnapshot(ctx, r.srv, r.t.description(), r.snapshotLabels(!b.opts.VerifyBoot))
	if err != nil {
		// The create may have gone through with its reply lost, and our
		// own first try may be what locks the server: look before asking
		// again.
		if adopted, lerr := r.adoptSnapshot(ctx, log); adopted && lerr == nil {
			log.InfoContext(ctx, "create_image answered an error but its snapshot exists", "error", err)
			return StepWait, nil
		}
		return "", err
	}
	log.InfoContext(ctx, "snapshot started", "snapshot_id", img.ID)
	r.setSnapshot(img)
	return StepWait, nil
}

// snapshotLabels are the labels of the build's snapshot: published, the
// contract consumers select on; else the target's and a pending mark, which
// no consumer's selector matches (they all ask for os=talos).
func (r *run) snapshotLabels(published bool) map[string]string {
	var labels map[string]string
	if published {
		labels = r.t.snapshotLabels(r.b.opts.Cluster, r.b.opts.Labels, r.srv.ID)
	} else {
		labels = r.t.targetLabels(r.b.opts.Cluster)
		labels[label.Build] = strconv.FormatInt(r.srv.ID, 10)
		labels[label.Pending] = "verify"
	}
	if label.Check(label.Request, r.origin) == nil {
		labels[label.Request] = r.origin // a re-delivered forced request finds its build done
	}
	return labels
}

// adoptSnapshot tells whether a live snapshot of the server exists, which
// an earlier create_image made.
func (r *run) adoptSnapshot(ctx context.Context, log *slog.Logger) (bool, error) {
	snaps, err := r.snapshotsOfServer(ctx)
	if err != nil {
		return false, err
	}
	for _, img := range snaps {
		if img.Labels[label.Failed] == "" {
			log.InfoContext(ctx, "adopting the snapshot an earlier create_image started", "snapshot_id", img.ID)
			return true, nil
		}
	}
	return false, nil
}

// snapshotsOfServer lists the managed snapshots taken of the build server,
// oldest first. More than one means a create_image was repeated after its
// reply was lost.
func (r *run) snapshotsOfServer(ctx context.Context) ([]*hcloud.Image, error) {
	snaps, err := r.b.cloud.Snapshots(ctx, label.SnapshotsOfServer(r.srv.ID))
	if err != nil {
		return nil, err
	}
	slices.SortFunc(snaps, func(a, b *hcloud.Image) int { return cmp.Compare(a.ID, b.ID) })
	return snaps, nil
}
