package build

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/backoff"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
)

// Published tells whether a snapshot is available and carries the labels
// consumers select on: not pending its boot check.
func Published(img *hcloud.Image) bool {
	return img.Status == hcloud.ImageStatusAvailable && img.Labels[label.Pending] == ""
}

// Pending tells whether a snapshot waits for its boot check.
func Pending(img *hcloud.Image) bool { return img.Labels[label.Pending] != "" }

var errVerifyTimeout = errors.New("VERIFY_TIMEOUT ran out")

// verify boots a server from the build's snapshot and publishes the
// snapshot once the Talos API answers on it: a snapshot that does not boot
// never carries the labels consumers select on, and is deleted. The boot
// server is created like the build server (smallest disk, same location
// fallback, the lease key so that no password is mailed) but from the
// snapshot, without user data, so that Talos waits in maintenance mode
// with its API up. It is deleted by cleanup, or here when the check fails.
func (r *run) verify(ctx context.Context, log *slog.Logger) (Step, error) {
	b := r.b
	snaps, err := r.snapshotsOfServer(ctx)
	if err != nil {
		return "", err
	}
	var img *hcloud.Image
	for _, s := range snaps {
		if s.ID == r.res.SnapshotID {
			img = s
		}
	}
	switch {
	case img == nil:
		return StepWait, nil // gone since wait looked: wait knows what to do
	case !Pending(img):
		return StepCleanup, nil // published by an earlier invocation
	case !b.opts.VerifyBoot:
		log.InfoContext(ctx, "publishing without a boot check (VERIFY_BOOT is off)", "snapshot_id", img.ID)
		return StepCleanup, r.publish(ctx, img)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, b.opts.VerifyTimeout, errVerifyTimeout)
	defer cancel()
	start := b.now()
	// A check that fails for good takes the snapshot with it; one that
	// stopped (an API error, the lease lost) is taken up again.
	fail := func(why string, err error) (Step, error) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.opts.StepTimeout)
		defer cancel()
		if err := r.deleteBootServer(cctx, log); err != nil {
			log.WarnContext(ctx, "delete boot server", "error", err)
		}
		r.discard(cctx, img, why, log)
		return "", err
	}
	srv, err := r.bootServer(ctx, log, img)
	// A server of the boot server's name that is not ours says nothing
	// about the snapshot: the build is refused and changes nothing.
	if _, temporary := Classify(err); err != nil && !temporary && !isForeign(err) {
		return fail("no-boot-server", err)
	} else if err != nil {
		return "", err
	}
	addr := net.JoinHostPort(srv.PublicNet.IPv4.IP.String(), strconv.Itoa(b.opts.TalosAPIPort))
	log.InfoContext(ctx, "waiting for the Talos API of the snapshot's boot", "addr", addr, "snapshot_id", img.ID)
	version, err := r.awaitTalos(ctx, addr)
	if cause := context.Cause(ctx); err != nil && !errors.Is(cause, errVerifyTimeout) {
		return "", cmp.Or(cause, err)
	}
	if err != nil {
		return fail("did-not-boot", deterministic("boot-check", fmt.Errorf("snapshot %d of %s did not boot: the Talos API at %s did not answer within %s (VERIFY_TIMEOUT): %w",
			img.ID, r.t, addr, b.now().Sub(start).Round(time.Second), err)))
	}
	if version != "" && !strings.EqualFold(version, r.t.Version) {
		return fail("wrong-version", deterministic("boot-check",
			fmt.Errorf("snapshot %d of %s booted Talos %s, not %s", img.ID, r.t, version, r.t.Version)))
	}
	seconds := b.now().Sub(start).Seconds()
	log.InfoContext(ctx, "snapshot booted: the Talos API answers", "snapshot_id", img.ID, "version", version,
		"seconds", seconds, r.bootCheckMetric(seconds))
	return StepCleanup, r.publish(ctx, img)
}

// bootServer returns the snapshot's boot server, running: the one an
// earlier invocation made, or a new one.
func (r *run) bootServer(ctx context.Context, log *slog.Logger, img *hcloud.Image) (*hcloud.Server, error) {
	srv, err := r.lookupBootServer(ctx)
	if err != nil {
		return nil, err
	}
	if srv == nil {
		labels := r.t.targetLabels(r.b.opts.Cluster)
		labels[label.Role] = label.RoleBootCheck
		labels[label.Build] = strconv.FormatInt(r.srv.ID, 10)
		srv, _, err = r.place(ctx, log, cloud.CreateServerOpts{Name: r.bootName(), Snapshot: img.ID, Labels: labels}, r.lookupBootServer)
		if err != nil {
			return nil, err
		}
	} else {
		log.InfoContext(ctx, "adopting the boot server an earlier invocation made", "server_id", srv.ID)
	}
	if srv.Status != hcloud.ServerStatusRunning {
		if err := r.b.cloud.Boot(ctx, srv); err != nil {
			return nil, err
		}
	}
	return srv, nil
}

// awaitTalos probes the Talos API until it answers or ctx ends, and
// returns what the last probe saw when it never did.
func (r *run) awaitTalos(ctx context.Context, addr string) (string, error) {
	pauses := backoff.Exponential{Initial: r.b.pollWait, Factor: 1.5, Max: 5 * time.Second}
	for {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		version, err := r.b.probe(pctx, addr)
		cancel()
		if err == nil {
			return version, nil
		}
		if backoff.Sleep(ctx, pauses.Next()) != nil {
			return "", err
		}
	}
}

// publish gives the snapshot the labels consumers select on, in place of
// its pending mark; its created time, which they sort on, stays.
func (r *run) publish(ctx context.Context, img *hcloud.Image) error {
	if err := r.b.cloud.SetImageLabels(ctx, img, r.snapshotLabels(true)); err != nil {
		return err
	}
	r.setSnapshot(img)
	r.log.InfoContext(ctx, "snapshot published", "snapshot_id", img.ID)
	return nil
}

// bootName is the boot server's name: the build's, told apart.
func (r *run) bootName() string { return "boot-" + strings.TrimPrefix(r.name(), "talos-") }

// lookupBootServer returns the build's boot server, nil when there is none,
// or a *ForeignError when a server of that name is not ours.
func (r *run) lookupBootServer(ctx context.Context) (*hcloud.Server, error) {
	srv, err := r.b.cloud.ServerByName(ctx, r.bootName())
	if err != nil || srv == nil {
		return srv, err
	}
	if !r.owned(srv.Labels, label.RoleBootCheck) {
		return nil, &ForeignError{Kind: "server", Name: srv.Name, Labels: srv.Labels, Target: r.t}
	}
	return srv, nil
}

// deleteBootServer deletes the build's boot server, if there is one.
func (r *run) deleteBootServer(ctx context.Context, log *slog.Logger) error {
	srv, err := r.lookupBootServer(ctx)
	if err != nil || srv == nil {
		return err
	}
	if err := r.b.cloud.DeleteServer(ctx, srv); err != nil {
		return err
	}
	log.InfoContext(ctx, "boot server deleted", "server_id", srv.ID)
	return nil
}
