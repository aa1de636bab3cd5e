package build

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
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
	// started is when the invocation began; progressed tells whether this
	// invocation finished a step (or watched a snapshot being created).
	started    time.Time
	progressed bool
	// installed: this invocation wrote the disk, so no snapshot of the
	// server can exist yet.
	installed bool
}

// Build drives one target as far as this invocation can.
func (b *Builder) Build(ctx context.Context, t Target, req Request) Result {
	r := &run{b: b, t: t, force: req.Force, queue: req.Queue, log: b.log.With("target", t.String()),
		res: Result{Target: t, Server: t.Name(b.opts.Cluster)}, started: invocationStart(ctx, b.now())}
	if c := req.Continuation; c != nil {
		r.origin, r.idle = c.Origin, c.Idle
	} else {
		r.origin = b.owner(ctx)
	}
	return r.build(ctx)
}

func (r *run) build(ctx context.Context) Result {
	b := r.b
	log := r.log.With("step", StepCheck)
	// A function whose whole time cannot hold the longest step never
	// finishes a build: fail before anything is created (and before every
	// invocation hands over to the next, forever).
	if whole := r.whole(ctx); whole < b.opts.InstallTimeout {
		return r.failed(ctx, StepCheck, errTooShort(whole, StepInstall, b.opts.InstallTimeout))
	}
	srv, err := r.lookup(ctx)
	if isForeign(err) {
		return r.refuse(ctx, StepCheck, "foreign", err)
	} else if err != nil {
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
		// A target that keeps failing waits (failure.go).
		if res, held := r.heldBack(ctx); held {
			return res
		}
		// Nothing may be created for an image the factory does not serve.
		// One it is still building (its first request builds it, for up to
		// ~20 minutes) is asked for again by Lambda's retry.
		if _, err := r.findImage(ctx); talos.IsBuilding(err) {
			return r.retryLater(ctx, StepCheck, err)
		} else if err != nil {
			return r.failed(ctx, StepCheck, err)
		}
	}
	if err := b.deployment().Check(ctx, b.cloud, b.now()); IsOtherDeployment(err) {
		return r.refuse(ctx, stepOf(srv), "other-deployment", err)
	} else if err != nil {
		return r.retryLater(ctx, stepOf(srv), err)
	}
	var held *leaseHeldError
	r.lease, ctx, err = r.acquire(ctx)
	if errors.As(err, &held) {
		r.lease, ctx, err = r.awaitLease(ctx, held, stepOf(srv))
	}
	switch {
	case errors.Is(err, errLeaseHeld):
		r.log.InfoContext(ctx, "another invocation is building this target")
		r.res.State, r.res.Step = InProgress, stepOf(srv)
		return r.res
	case isForeign(err):
		return r.refuse(ctx, stepOf(srv), "foreign", err)
	case err != nil:
		return r.retryLater(ctx, stepOf(srv), err)
	}
	defer r.lease.release(ctx)
	// Another invocation may have moved on before we took the lease, or
	// even finished the build (or a duplicate of this request did).
	if srv, err = r.lookup(ctx); isForeign(err) {
		return r.refuse(ctx, StepCheck, "foreign", err)
	} else if err != nil {
		return r.retryLater(ctx, StepCheck, cmp.Or(context.Cause(ctx), err))
	}
	if srv == nil {
		exists, err := r.existing(ctx, log)
		if err != nil {
			return r.retryLater(ctx, StepCheck, cmp.Or(context.Cause(ctx), err))
		}
		if exists {
			return r.res
		}
	} else {
		r.force = r.force || srv.Labels[label.Force] == "true"
		r.replaces = parseIDs(srv.Labels[label.Replaces])
	}
	r.setServer(srv)

	locked := 0
	for step := stepOf(r.srv); step != ""; {
		if !r.haveTime(ctx, step) {
			if whole := r.whole(ctx); !r.progressed && whole < r.need(step) {
				return r.abort(ctx, step, errTooShort(whole, step, r.need(step)))
			}
			return r.continueLater(ctx, step)
		}
		// Act only while the lease is ours.
		if err := r.lease.verify(ctx); err != nil {
			return r.retryLater(ctx, step, err)
		}
		log := r.log.With("step", step)
		log.InfoContext(ctx, "step started")
		start := b.now()
		next, err := r.runStep(ctx, step, log)
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
			return r.refuse(ctx, step, "foreign", err)
		}
		if err != nil {
			return r.abort(ctx, step, err)
		}
		log.InfoContext(ctx, "step finished", "seconds", b.now().Sub(start).Seconds(), "next", next)
		r.progressed = true
		step = next
	}
	r.res.State, r.res.Step = Done, ""
	r.log.InfoContext(ctx, "snapshot ready", "snapshot_id", r.res.SnapshotID)
	r.forget(ctx)
	return r.res
}

func (r *run) runStep(ctx context.Context, step Step, log *slog.Logger) (Step, error) {
	switch step {
	case StepServer:
		return r.createServer(ctx, log)
	case StepInstall:
		return r.install(ctx, log)
	case StepSnapshot:
		return r.snapshot(ctx, log)
	case StepWait:
		return r.wait(ctx, log)
	case StepCleanup:
		return r.cleanup(ctx, log)
	}
	return "", deterministic("unknown-step", fmt.Errorf("server %s carries unknown step %q", r.name(), step))
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
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
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
	if newest == nil {
		return false, nil
	}
	if r.force {
		// A forced build replaces the snapshots there are now, unless
		// they were made for this very request (a re-delivery).
		i := slices.IndexFunc(snaps, func(img *hcloud.Image) bool {
			return img.Status == hcloud.ImageStatusAvailable && img.Labels[label.Request] == r.origin
		})
		if i < 0 {
			r.replaces = r.replaces[:0]
			for _, img := range snaps {
				if img.Status == hcloud.ImageStatusAvailable && label.IsManaged(img.Labels) {
					r.replaces = append(r.replaces, img.ID)
				}
			}
			return false, nil
		}
		log.InfoContext(ctx, "the forced build of this request is done", "snapshot_id", snaps[i].ID)
		r.res.SnapshotID, r.res.State = snaps[i].ID, Done
		return true, nil
	}
	if err := r.deleteOthers(ctx, snaps, newest, log); err != nil {
		return false, err
	}
	r.res.SnapshotID, r.res.State = newest.ID, Done
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
		if img.ID == keep.ID || img.Status != hcloud.ImageStatusAvailable || !label.IsManaged(img.Labels) {
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

// need is the time a step must have left to start.
func (r *run) need(step Step) time.Duration {
	if step == StepInstall {
		return r.b.opts.InstallTimeout
	}
	return r.b.opts.StepTimeout
}

func errTooShort(whole time.Duration, step Step, need time.Duration) error {
	budget := "STEP_TIMEOUT"
	if step == StepInstall {
		budget = "INSTALL_TIMEOUT"
	}
	return deterministic("function-timeout", fmt.Errorf("this invocation had %s in all (the function's timeout), but step %s needs %s (%s): "+
		"raise the function's timeout or lower %s", whole.Round(time.Second), step, need, budget, budget))
}

func (r *run) haveTime(ctx context.Context, step Step) bool {
	deadline, ok := ctx.Deadline()
	return !ok || deadline.Sub(r.b.now()) >= r.need(step)
}

// whole is all the time this invocation had: its deadline less its start.
func (r *run) whole(ctx context.Context) time.Duration {
	deadline, ok := ctx.Deadline()
	if !ok {
		return time.Duration(math.MaxInt64)
	}
	return deadline.Sub(r.started)
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
	r.res.State, r.res.Step = InProgress, step
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
	r.res.State, r.res.Step, r.res.Error, r.res.Code, r.res.retry = InProgress, step, err.Error(), code, true
	return r.res
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
	r.res.State, r.res.Step, r.res.Error, r.res.Code = Failed, step, err.Error(), code
	r.remember(ctx, step, code)
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

// createServer creates the build server, off, on a type with the
// architecture's smallest disk: in the first location that has one, trying
// the configured types of that disk in order, never a bigger disk.
func (r *run) createServer(ctx context.Context, log *slog.Logger) (Step, error) {
	b := r.b
	// Read for every server: what is sold changes, and in a warm Lambda a
	// Builder outlives its invocations.
	catalog, err := b.cloud.ServerTypes(ctx)
	if err != nil {
		return "", err
	}
	plan, err := planServers(catalog, r.t.Arch, b.opts.ServerTypes[r.t.Arch])
	for _, s := range plan.skipped {
		log.WarnContext(ctx, "configured server type not used", "server_type", s.name, "reason", s.reason)
	}
	if err != nil {
		return "", deterministic("server-type", err)
	}
	labels := r.t.targetLabels(b.opts.Cluster)
	labels[label.Role] = label.RoleBuildServer
	labels[label.Step] = string(StepInstall)
	if r.force {
		labels[label.Force] = "true"
	}
	if len(r.replaces) > 0 {
		labels[label.Replaces] = formatIDs(r.replaces)
	}
	now := b.now()
	tried := false
	for _, st := range plan.types {
		for _, loc := range b.opts.Locations {
			if !sold(st, loc, now) {
				log.InfoContext(ctx, "server type not sold in location", "server_type", st.Name, "location", loc)
				continue
			}
			tried = true
			srv, err := b.cloud.CreateServer(ctx, cloud.CreateServerOpts{
				Name: r.name(), ServerType: st.Name, Location: loc, Image: b.opts.ServerImage, Labels: labels,
				// With a key Hetzner mails no root password.
				SSHKeys: []*hcloud.SSHKey{r.lease.hkey},
			})
			switch {
			case err == nil:
				log.InfoContext(ctx, "server created", "server_type", st.Name, "location", loc, "disk_gb", st.Disk, "server_id", srv.ID)
				r.setServer(srv)
				r.res.ServerType, r.res.Location = st.Name, loc
				return StepInstall, nil
			case cloud.IsConflict(err):
				// A retried create whose first try went through: adopt it,
				// if it is ours.
				srv, err = r.lookup(ctx)
				if err != nil {
					return "", fmt.Errorf("adopt server %s: %w", r.name(), err)
				}
				if srv == nil {
					// The server that took the name is gone by now: nothing
					// to adopt, and a retry creates it afresh.
					return "", transient("server-gone", fmt.Errorf("adopt server %s: its name was taken, but the server is gone", r.name()))
				}
				log.InfoContext(ctx, "server exists, adopting it", "server_id", srv.ID)
				r.setServer(srv)
				return stepOf(srv), nil
			case cloud.IsLimitExceeded(err):
				// Another location or type would meet the same quota.
				return "", deterministic("server-limit", fmt.Errorf("the project's server limit is reached (Hetzner's quota per account, "+
					"small for new ones): delete servers or have the limit raised in the Cloud Console under Limits: %w", err))
			case cloud.IsNoCapacity(err):
				log.WarnContext(ctx, "no capacity, trying the next option", "server_type", st.Name, "location", loc, "error", err)
			default:
				return "", err
			}
		}
	}
	types, locs := strings.Join(typeNames(plan.types), ", "), strings.Join(b.opts.Locations, ", ")
	if !tried {
		return "", deterministic("not-sold", fmt.Errorf("none of %s (%d GB disk) is sold in %s; add a location that sells one",
			types, plan.disk, locs))
	}
	return "", deterministic("no-capacity", fmt.Errorf("no capacity for %s (%d GB disk) in %s; a bigger disk would make a "+
		"snapshot that cannot create %d GB servers", types, plan.disk, locs, plan.disk))
}

func (r *run) install(ctx context.Context, log *slog.Logger) (Step, error) {
	b := r.b
	ctx, cancel := context.WithTimeoutCause(ctx, b.opts.InstallTimeout, errInstallTimeout)
	defer cancel()
	img, err := r.findImage(ctx)
	if err != nil {
		return "", err
	}
	if err := b.cloud.EnableRescue(ctx, r.srv, r.lease.hkey); err != nil {
		return "", err
	}
	log.InfoContext(ctx, "rescue enabled")
	if err := b.cloud.Boot(ctx, r.srv); err != nil {
		return "", err
	}
	addr := net.JoinHostPort(r.srv.PublicNet.IPv4.IP.String(), strconv.Itoa(b.opts.SSHPort))
	log.InfoContext(ctx, "waiting for the rescue system", "addr", addr)
	remote, err := b.dial(ctx, addr, r.lease.key, log)
	if err != nil {
		return "", deterministic("rescue-unreachable", fmt.Errorf("reach rescue system of %s: %w", r.name(), err))
	}
	defer remote.Close()
	log.InfoContext(ctx, "writing image", "url", img.URL, "compression", img.Compression)
	if err := writeImage(ctx, remote, img); err != nil {
		return "", rescueFailure(ctx, "download", err)
	}
	parts, err := verifyDisk(ctx, remote, r.t, log)
	if err != nil {
		return "", deterministic("verify", err)
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
	labels[label.Step] = string(next)
	maps.Copy(labels, extra)
	return r.b.cloud.SetServerLabels(ctx, r.srv, labels)
}

// maxSnapshotAttempts bounds how often one build server is snapshotted:
// a snapshot that vanishes (a failed create_image may take its image with
// it) is taken again, but not forever. The count lives in the server's
// labels, so it holds across invocations.
const maxSnapshotAttempts = 3

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
	labels := r.t.snapshotLabels(b.opts.Cluster, b.opts.Labels, r.srv.ID)
	if label.Check(label.Request, r.origin) == nil {
		labels[label.Request] = r.origin // a re-delivered forced request finds its build done
	}
	img, err := b.cloud.CreateSnapshot(ctx, r.srv, r.t.description(), labels)
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
	r.res.SnapshotID = img.ID
	return StepWait, nil
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
	pause := b.pollWait
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
			return StepCleanup, nil
		}
		if b.now().Add(pause).After(until) {
			log.InfoContext(ctx, "snapshot still being created", "snapshot_id", creating.ID)
			// Watching counts as progress: SNAPSHOT_TIMEOUT bounds it.
			r.progressed = true
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
	r.res.SnapshotID = good.ID
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
	for _, dup := range snaps {
		if dup.ID == r.res.SnapshotID || dup.Labels[label.Failed] != "" {
			continue
		}
		log.InfoContext(ctx, "deleting a duplicate snapshot of a repeated create_image", "snapshot_id", dup.ID, "kept", r.res.SnapshotID)
		if err := b.cloud.DeleteImage(ctx, dup); err != nil {
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
	newest := newestAvailable(snaps)
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
