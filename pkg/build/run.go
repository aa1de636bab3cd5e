package build

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// Step is a stage of a build. The server's step label says which one runs
// next; every step checks the cloud's state before it acts.
type Step string

const (
	StepCheck    Step = "check"    // snapshot exists? factory serves the image?
	StepServer   Step = "server"   // create the server, off
	StepInstall  Step = "install"  // rescue boot with a fresh key, write the image, verify, power off
	StepSnapshot Step = "snapshot" // create the image (once per server)
	StepWait     Step = "wait"     // until the image is available, across invocations
	StepCleanup  Step = "cleanup"  // delete the server (and a replaced snapshot)
)

// errContinue ends an invocation that must hand over to the next.
var errContinue = errors.New("continue in a new invocation")

// run is one target's build within one invocation.
type run struct {
	b     *Builder
	t     Target
	force bool
	log   *slog.Logger
	res   Result
	srv   *hcloud.Server
	lease *lease
	image *talos.Image
	// installed: this invocation wrote the disk, so no snapshot of the
	// server can exist yet.
	installed bool
}

// Build drives one target as far as this invocation can.
func (b *Builder) Build(ctx context.Context, t Target, force bool) Result {
	r := &run{b: b, t: t, force: force, log: b.log.With("target", t.String()),
		res: Result{Target: t, Server: t.Name()}}
	return r.build(ctx)
}

func (r *run) build(ctx context.Context) Result {
	b := r.b
	log := r.log.With("step", StepCheck)
	srv, err := b.cloud.ServerByName(ctx, r.t.Name())
	if err != nil {
		return r.failed(ctx, StepCheck, err)
	}
	if srv == nil {
		exists, err := r.existing(ctx, log)
		if err != nil {
			return r.failed(ctx, StepCheck, err)
		}
		if exists {
			return r.res
		}
		// Nothing may be created for an image the factory does not serve.
		if _, err := r.findImage(ctx); err != nil {
			return r.failed(ctx, StepCheck, err)
		}
	}
	r.lease, err = r.acquire(ctx)
	if errors.Is(err, errLeaseHeld) {
		r.res.State, r.res.Step = InProgress, stepOf(srv)
		return r.res
	}
	if err != nil {
		return r.failed(ctx, StepCheck, err)
	}
	defer r.lease.release(ctx)
	if srv != nil {
		// Another invocation may have moved on before we took the lease,
		// or even finished the build.
		if srv, err = b.cloud.ServerByName(ctx, r.t.Name()); err != nil {
			return r.failed(ctx, StepCheck, err)
		}
		if srv == nil {
			exists, err := r.existing(ctx, log)
			if err != nil {
				return r.failed(ctx, StepCheck, err)
			}
			if exists {
				return r.res
			}
		}
	}
	r.setServer(srv)

	for step := stepOf(r.srv); step != ""; {
		if !r.haveTime(ctx, step) {
			return r.continueLater(ctx, step)
		}
		log := r.log.With("step", step)
		log.InfoContext(ctx, "step started")
		start := b.now()
		next, err := r.runStep(ctx, step, log)
		if errors.Is(err, errContinue) {
			return r.continueLater(ctx, step)
		}
		if err != nil {
			return r.abort(ctx, step, err)
		}
		log.InfoContext(ctx, "step finished", "seconds", b.now().Sub(start).Seconds(), "next", next)
		step = next
	}
	r.res.State, r.res.Step = Done, ""
	r.log.InfoContext(ctx, "snapshot ready", "snapshot_id", r.res.SnapshotID)
	return r.res
}

func (r *run) runStep(ctx context.Context, step Step, log *slog.Logger) (Step, error) {
	switch step {
	case StepServer:
		return r.createServer(ctx, log)
	case StepInstall:
		return r.install(ctx, log)
	case StepSnapshot:
		return r.snapshot(ctx)
	case StepWait:
		return r.wait(ctx, log)
	case StepCleanup:
		return r.cleanup(ctx, log)
	}
	return "", fmt.Errorf("server %s carries unknown step %q", r.t.Name(), step)
}

// stepOf reads the checkpoint: the step the server's labels say is next.
func stepOf(srv *hcloud.Server) Step {
	if srv == nil {
		return StepServer
	}
	if s := Step(srv.Labels[labelStep]); s != "" {
		return s
	}
	return StepInstall
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

// existing reports whether an available snapshot of the target already
// exists (and the request does not force a rebuild), setting the result. It
// also removes what an interrupted build may have left: duplicates of the
// target and an expired lease key.
func (r *run) existing(ctx context.Context, log *slog.Logger) (bool, error) {
	snaps, err := r.b.cloud.Snapshots(ctx, r.t.snapshotSelector(r.b.opts.Cluster))
	if err != nil {
		return false, err
	}
	newest := newestAvailable(snaps)
	if newest == nil || r.force {
		return false, nil
	}
	if err := r.deleteOthers(ctx, snaps, newest, log); err != nil {
		return false, err
	}
	r.res.SnapshotID, r.res.State = newest.ID, Done
	if r.lease != nil {
		return true, nil // the lease key is ours
	}
	k, err := r.b.cloud.SSHKeyByName(ctx, r.t.Name())
	if err != nil {
		return false, err
	}
	if k != nil && k.Labels[label.Managed] == label.ManagedValue {
		if !leaseExpired(k, r.b.now()) {
			// Its holder is finishing up (or died moments ago): done once
			// the lease is released or has expired.
			log.InfoContext(ctx, "snapshot exists, another invocation still holds the lease", "snapshot_id", newest.ID)
			r.res.State, r.res.Step = InProgress, StepCleanup
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

func newestAvailable(imgs []*hcloud.Image) *hcloud.Image {
	var newest *hcloud.Image
	for _, img := range imgs {
		if img.Status == hcloud.ImageStatusAvailable && (newest == nil || img.Created.After(newest.Created) ||
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
		if img.ID == keep.ID || img.Status != hcloud.ImageStatusAvailable || img.Labels[label.Managed] != label.ManagedValue {
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
	if err != nil {
		return talos.Image{}, err
	}
	r.image = &img
	return img, nil
}

// need is the time a step must have left to start.
func (r *run) need(step Step) time.Duration {
	if step == StepInstall {
		return r.b.opts.InstallTimeout
	}
	return r.b.opts.StepTimeout
}

func (r *run) haveTime(ctx context.Context, step Step) bool {
	deadline, ok := ctx.Deadline()
	return !ok || deadline.Sub(r.b.now()) >= r.need(step)
}

// continueLater frees the lease and has a new invocation go on. Without a
// Continuer (outside Lambda) the caller loops on in_progress.
func (r *run) continueLater(ctx context.Context, step Step) Result {
	r.lease.release(ctx)
	r.res.State, r.res.Step = InProgress, step
	log := r.log.With("step", step)
	if r.b.cont == nil {
		return r.res
	}
	req := Request{Version: r.t.Version, Arch: r.t.Arch, Schematic: r.t.Schematic, Force: r.force}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := r.b.cont.Continue(cctx, req); err != nil {
		// The Poller re-drives a build whose server has no live lease.
		log.ErrorContext(ctx, "continue in a new invocation", "error", err)
		return r.res
	}
	log.InfoContext(ctx, "continuing in a new invocation")
	return r.res
}

func (r *run) failed(ctx context.Context, step Step, err error) Result {
	r.log.ErrorContext(ctx, "build failed", "step", step, "error", err)
	r.res.State, r.res.Step, r.res.Error = Failed, step, err.Error()
	return r.res
}

// abort fails the build and deletes its server: a failed build leaves
// nothing behind, and the next request starts afresh.
func (r *run) abort(ctx context.Context, step Step, err error) Result {
	res := r.failed(ctx, step, err)
	if r.srv != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.b.opts.StepTimeout)
		defer cancel()
		if derr := r.b.cloud.DeleteServer(cctx, r.srv); derr != nil {
			r.log.ErrorContext(ctx, "delete server of failed build", "step", step, "error", derr)
		} else {
			r.log.InfoContext(ctx, "deleted server of failed build", "step", step)
		}
	}
	return res
}

func (r *run) createServer(ctx context.Context, log *slog.Logger) (Step, error) {
	b := r.b
	labels := r.t.targetLabels(b.opts.Cluster)
	labels[labelRole] = roleBuildServer
	labels[labelStep] = string(StepInstall)
	if r.force {
		labels[labelForce] = "true"
	}
	types := b.opts.ServerTypes[r.t.Arch]
	for _, typ := range types {
		for _, loc := range b.opts.Locations {
			srv, err := b.cloud.CreateServer(ctx, cloud.CreateServerOpts{
				Name: r.t.Name(), ServerType: typ, Location: loc, Image: b.opts.ServerImage, Labels: labels,
			})
			switch {
			case err == nil:
				log.InfoContext(ctx, "server created", "server_type", typ, "location", loc, "server_id", srv.ID)
				r.setServer(srv)
				r.res.ServerType, r.res.Location = typ, loc
				return StepInstall, nil
			case cloud.IsConflict(err):
				// A retried create whose first try went through: adopt it.
				if srv, err = b.cloud.ServerByName(ctx, r.t.Name()); err != nil || srv == nil {
					return "", fmt.Errorf("adopt server %s: %w", r.t.Name(), err)
				}
				log.InfoContext(ctx, "server exists, adopting it", "server_id", srv.ID)
				r.setServer(srv)
				return stepOf(srv), nil
			case cloud.IsNoCapacity(err):
				log.WarnContext(ctx, "no capacity, trying the next option", "server_type", typ, "location", loc, "error", err)
			default:
				return "", err
			}
		}
	}
	return "", fmt.Errorf("no capacity for server types %v in locations %v", types, b.opts.Locations)
}

func (r *run) install(ctx context.Context, log *slog.Logger) (Step, error) {
	b := r.b
	ctx, cancel := context.WithTimeout(ctx, b.opts.InstallTimeout)
	defer cancel()
	img, err := r.findImage(ctx)
	if err != nil {
		return "", err
	}
	if err := b.cloud.EnableRescue(ctx, r.srv, r.lease.hkey); err != nil {
		return "", err
	}
	if err := b.cloud.Boot(ctx, r.srv); err != nil {
		return "", err
	}
	addr := net.JoinHostPort(r.srv.PublicNet.IPv4.IP.String(), strconv.Itoa(b.opts.SSHPort))
	log.InfoContext(ctx, "waiting for the rescue system", "addr", addr)
	remote, err := b.dial(ctx, addr, r.lease.key, log)
	if err != nil {
		return "", fmt.Errorf("reach rescue system of %s: %w", r.t.Name(), err)
	}
	defer remote.Close()
	log.InfoContext(ctx, "writing image", "url", img.URL, "compression", img.Compression)
	if err := writeImage(ctx, remote, img); err != nil {
		return "", err
	}
	parts, err := verifyDisk(ctx, remote, r.t, log)
	if err != nil {
		return "", err
	}
	log.InfoContext(ctx, "image written and verified", "partitions", parts)
	if err := b.cloud.PowerOff(ctx, r.srv); err != nil {
		return "", err
	}
	r.installed = true
	return StepSnapshot, r.checkpoint(ctx, StepSnapshot, nil)
}

// checkpoint writes the next step (and extra labels) into the server's
// labels: read-modify-write, since Hetzner replaces the whole set.
func (r *run) checkpoint(ctx context.Context, next Step, extra map[string]string) error {
	labels := maps.Clone(r.srv.Labels)
	labels[labelStep] = string(next)
	maps.Copy(labels, extra)
	return r.b.cloud.SetServerLabels(ctx, r.srv, labels)
}

func (r *run) snapshot(ctx context.Context) (Step, error) {
	b := r.b
	// A snapshot of this server may exist if an invocation died after
	// creating it: adopt it rather than make a second one. If this
	// invocation installed the disk, no earlier one got this far.
	var img *hcloud.Image
	if !r.installed {
		sel := label.Managed + "=" + label.ManagedValue + "," + labelBuild + "=" + strconv.FormatInt(r.srv.ID, 10)
		imgs, err := b.cloud.Snapshots(ctx, sel)
		if err != nil {
			return "", err
		}
		if len(imgs) > 0 {
			img = imgs[0]
		}
	}
	if img == nil {
		if r.srv.Status != hcloud.ServerStatusOff {
			if err := b.cloud.PowerOff(ctx, r.srv); err != nil {
				return "", err
			}
		}
		labels := r.t.snapshotLabels(b.opts.Cluster, b.opts.Labels, r.srv.ID)
		created, err := b.cloud.CreateSnapshot(ctx, r.srv, r.t.description(), labels)
		if err != nil {
			return "", err
		}
		img = created
	}
	r.res.SnapshotID = img.ID
	return StepWait, r.checkpoint(ctx, StepWait, map[string]string{labelImage: strconv.FormatInt(img.ID, 10)})
}

func (r *run) wait(ctx context.Context, log *slog.Logger) (Step, error) {
	b := r.b
	id, err := strconv.ParseInt(r.srv.Labels[labelImage], 10, 64)
	if err != nil {
		return StepSnapshot, nil // no snapshot recorded: take it (again)
	}
	until := b.now().Add(b.opts.SnapshotWait)
	if deadline, ok := ctx.Deadline(); ok && deadline.Add(-b.opts.StepTimeout).Before(until) {
		until = deadline.Add(-b.opts.StepTimeout) // leave time to hand over
	}
	// Quick first looks for a quick snapshot, then slower ones: a real one
	// takes minutes, and every look is an API request.
	pause := b.pollWait
	for {
		img, err := b.cloud.Image(ctx, id)
		if err != nil {
			return "", err
		}
		switch {
		case img == nil:
			log.WarnContext(ctx, "snapshot disappeared, taking it again", "snapshot_id", id)
			return StepSnapshot, r.checkpoint(ctx, StepSnapshot, nil)
		case img.Status == hcloud.ImageStatusAvailable:
			r.res.SnapshotID = id
			return StepCleanup, nil
		}
		if b.now().Add(pause).After(until) {
			log.InfoContext(ctx, "snapshot still being created", "snapshot_id", id, "status", img.Status)
			return "", errContinue
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(pause):
		}
		pause = min(pause*3/2, 10*time.Second)
	}
}

func (r *run) cleanup(ctx context.Context, log *slog.Logger) (Step, error) {
	b := r.b
	if err := b.cloud.DeleteServer(ctx, r.srv); err != nil {
		return "", err
	}
	log.InfoContext(ctx, "server deleted")
	if r.force || r.srv.Labels[labelForce] == "true" {
		snaps, err := b.cloud.Snapshots(ctx, r.t.snapshotSelector(b.opts.Cluster))
		if err != nil {
			return "", err
		}
		i := slices.IndexFunc(snaps, func(img *hcloud.Image) bool { return img.ID == r.res.SnapshotID })
		if i >= 0 {
			if err := r.deleteOthers(ctx, snaps, snaps[i], log); err != nil {
				return "", err
			}
		}
	}
	return "", nil
}
