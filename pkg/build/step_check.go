package build

import (
	"context"
	"log/slog"
	"slices"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// check looks at the cloud before anything is done: once before the lease
// is taken and again under it, since another invocation may have moved on,
// or finished the build, meanwhile. It returns the step to go on with, ""
// when the target's snapshot exists (the result says so).
func (r *run) check(ctx context.Context, log *slog.Logger) (Step, error) {
	srv, err := r.lookup(ctx)
	if err != nil {
		return "", err
	}
	r.setServer(srv)
	if srv != nil {
		r.force = r.force || srv.Labels[label.Force] == "true"
		r.replaces = parseIDs(srv.Labels[label.Replaces])
		return stepOf(srv), nil
	}
	if built, err := r.completeIfBuilt(ctx, log); built || err != nil {
		return "", err
	}
	if r.lease != nil {
		return StepServer, nil
	}
	// A target that keeps failing waits (failure.go).
	if err := r.heldBack(ctx); err != nil {
		return "", err
	}
	// Nothing may be created for an image the factory does not serve.
	if _, err := r.findImage(ctx); err != nil {
		return "", err
	}
	return StepServer, nil
}

// completeIfBuilt completes the build when an available snapshot of the
// target exists (and the request does not force a rebuild), reporting
// whether it did. It removes what an interrupted build may have left:
// replaced snapshots of the target and an expired lease key.
func (r *run) completeIfBuilt(ctx context.Context, log *slog.Logger) (bool, error) {
	snaps, err := r.b.cloud.Snapshots(ctx, r.t.snapshotSelector(r.b.opts.Cluster))
	if err != nil {
		return false, err
	}
	newest := newestPublished(snaps)
	if newest == nil {
		return false, nil
	}
	if r.force {
		// A forced build replaces the snapshots there are now, unless
		// they were made for this very request (a re-delivery).
		i := slices.IndexFunc(snaps, func(img *hcloud.Image) bool {
			return Published(img) && img.Labels[label.Request] == r.origin
		})
		if i < 0 {
			r.replaces = r.replaces[:0]
			for _, img := range snaps {
				if Published(img) && label.IsManaged(img.Labels) {
					r.replaces = append(r.replaces, img.ID)
				}
			}
			return false, nil
		}
		log.InfoContext(ctx, "the forced build of this request is done", "snapshot_id", snaps[i].ID)
		r.setSnapshot(snaps[i])
		r.outcome(Done, "", "", nil)
		return true, nil
	}
	if err := r.deleteOthers(ctx, snaps, newest, log); err != nil {
		return false, err
	}
	r.setSnapshot(newest)
	r.outcome(Done, "", "", nil)
	if r.lease != nil {
		return true, nil // the lease key is ours
	}
	k, err := r.b.cloud.SSHKeyByName(ctx, r.name())
	if err != nil {
		return false, err
	}
	if k != nil && r.owned(k.Labels, label.RoleLease) {
		if !leaseExpired(k, r.b.now()) {
			// Its holder is finishing up (or died moments ago): done once
			// the lease is released or has expired.
			log.InfoContext(ctx, "snapshot exists, another invocation still holds the lease", "snapshot_id", newest.ID)
			r.outcome(InProgress, StepCleanup, "", nil)
			return true, nil
		}
		log.InfoContext(ctx, "deleting the key an interrupted build left", "ssh_key", k.ID)
		if err := r.b.cloud.DeleteSSHKey(ctx, k); err != nil {
			return false, err
		}
	}
	log.InfoContext(ctx, "snapshot exists", "snapshot_id", newest.ID)
	return true, nil
}

func newestPublished(imgs []*hcloud.Image) *hcloud.Image {
	var newest *hcloud.Image
	for _, img := range imgs {
		if Published(img) && (newest == nil || img.Created.After(newest.Created) ||
			(img.Created.Equal(newest.Created) && img.ID > newest.ID)) {
			newest = img
		}
	}
	return newest
}

// deleteOthers deletes the target's available snapshots other than keep:
// a forced rebuild replaces the old snapshot only once the new one is there.
func (r *run) deleteOthers(ctx context.Context, snaps []*hcloud.Image, keep *hcloud.Image, log *slog.Logger) error {
	for _, img := range snaps {
		if img.ID == keep.ID || !Published(img) || !label.IsManaged(img.Labels) {
			continue
		}
		log.InfoContext(ctx, "deleting replaced snapshot", "snapshot_id", img.ID, "kept", keep.ID)
		if err := r.b.cloud.DeleteImage(ctx, img); err != nil {
			return err
		}
	}
	return nil
}

func (r *run) findImage(ctx context.Context) (talos.Image, error) {
	if r.image != nil {
		return *r.image, nil
	}
	img, err := r.b.factory.Find(ctx, r.t.Schematic, r.t.Version, r.t.Arch)
	if err != nil && !talos.IsNotAvailable(err) && !talos.IsBuilding(err) {
		return talos.Image{}, transient("factory", err) // an outage, or an answer we do not know
	}
	if err != nil {
		return talos.Image{}, err
	}
	r.image = &img
	return img, nil
}
