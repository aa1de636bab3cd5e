package build

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"sync"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/backoff"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/ssh"
)

// The lease is an SSH key named like the build server. Hetzner key names are
// unique per project, so creating it is an atomic test-and-set that label
// updates (last write wins) cannot give. It is also the invocation's rescue
// key: its private half lives only in this invocation's memory. A heartbeat
// keeps its expiry ahead, so a crashed holder blocks others for at most
// LeaseTTL.
//
// The lease fences: when it may have lapsed (renewals failed until shortly
// before its expiry) or is no longer ours (the key is gone or replaced), the
// run's context is cancelled with errLeaseLost, and the run checks the key
// before every step and before it deletes anything.
type lease struct {
	key   *ssh.Key
	hkey  *hcloud.SSHKey
	owner string

	cloud   Cloud
	log     *slog.Logger
	lost    context.CancelCauseFunc
	stop    chan struct{}
	stopped sync.WaitGroup
	once    sync.Once
}

var (
	errLeaseLost = errors.New("the build's lease was lost: another invocation may be acting on the build")
	// errLeaseHeld: a live invocation holds the lease and carries the
	// build on.
	errLeaseHeld = errors.New("another invocation holds the build's lease")
)

// leaseHeldError is a lease another invocation held at the last look.
type leaseHeldError struct {
	owner string
	until time.Time
}

func (e *leaseHeldError) Error() string {
	return fmt.Sprintf("another invocation (%s) holds the build's lease until %s", e.owner, e.until.UTC().Format(time.RFC3339))
}

func (e *leaseHeldError) Unwrap() error { return errLeaseHeld }

// acquire takes the lease. The returned context ends when the lease is
// lost; the run acts only under it.
func (r *run) acquire(ctx context.Context) (*lease, context.Context, error) {
	b := r.b
	key, err := b.newKey()
	if err != nil {
		return nil, ctx, err
	}
	owner := b.owner(ctx)
	labels := r.t.targetLabels(b.opts.Cluster)
	labels[label.Role] = label.RoleLease
	labels[label.LeaseOwner] = owner
	name := r.name()
	for range 2 {
		labels[label.LeaseUntil] = strconv.FormatInt(b.now().Add(b.opts.LeaseTTL).Unix(), 10)
		hk, err := b.cloud.CreateSSHKey(ctx, name, key.AuthorizedKey(), labels)
		if err == nil {
			l, lctx := r.held(ctx, key, hk, owner)
			return l, lctx, nil
		}
		if !cloud.IsConflict(err) {
			return nil, ctx, err
		}
		cur, err := b.cloud.SSHKeyByName(ctx, name)
		if err != nil {
			return nil, ctx, err
		}
		if cur == nil {
			continue // released meanwhile
		}
		if !r.owned(cur.Labels, label.RoleLease) {
			return nil, ctx, &ForeignError{Kind: "SSH key", Name: cur.Name, Labels: cur.Labels, Target: r.t}
		}
		if cur.Fingerprint == key.Fingerprint() {
			// Our own create went through but its reply was lost, and
			// hcloud-go's retry met the key it made. The key pair is fresh,
			// so its fingerprint proves the key is ours; an owner label
			// would not, since Lambda's retries of an invocation keep its
			// request id (infra/README.md).
			r.log.InfoContext(ctx, "lease taken by a create whose reply was lost", "owner", owner)
			l, lctx := r.held(ctx, key, cur, owner)
			return l, lctx, nil
		}
		if !leaseExpired(cur, b.now()) {
			return nil, ctx, &leaseHeldError{owner: cur.Labels[label.LeaseOwner], until: leaseUntil(cur)}
		}
		r.log.WarnContext(ctx, "taking over an expired lease", "owner", cur.Labels[label.LeaseOwner])
		if err := b.cloud.DeleteSSHKey(ctx, cur); err != nil {
			return nil, ctx, err
		}
	}
	return nil, ctx, errLeaseHeld
}

// awaitLease waits for a lease another invocation holds. A live holder
// renews it and carries the build on: nothing to do here. One that died
// lets it expire, and this invocation takes over at once, instead of
// answering in_progress and leaving the build to the next poll. When the
// expiry lies beyond what this invocation can wait, it returns a
// retryError, so that Lambda tries again later.
func (r *run) awaitLease(ctx context.Context, held *leaseHeldError, next Step) (*lease, context.Context, error) {
	b := r.b
	seen := held.until
	poll := max(b.opts.LeaseTTL/6, 100*time.Millisecond)
	for {
		if deadline, ok := ctx.Deadline(); ok && seen.Add(time.Second).After(deadline.Add(-budgetOf(next).of(b.opts))) {
			return nil, ctx, fmt.Errorf("%v; it may have died, and its lease expires too late for this invocation to wait: try again later", held)
		}
		r.log.InfoContext(ctx, "waiting for the lease another invocation holds", "owner", held.owner, "until", seen)
		if err := backoff.Sleep(ctx, min(poll, max(time.Until(seen.Add(time.Second)), 0))); err != nil {
			return nil, ctx, err
		}
		cur, err := b.cloud.SSHKeyByName(ctx, r.name())
		if err != nil {
			return nil, ctx, err
		}
		switch {
		case cur == nil || leaseExpired(cur, b.now()):
			l, lctx, err := r.acquire(ctx)
			if errors.As(err, &held) {
				return nil, ctx, errLeaseHeld // someone else was quicker, and is alive
			}
			return l, lctx, err
		case leaseUntil(cur).After(seen):
			r.log.InfoContext(ctx, "another invocation is building this target", "owner", cur.Labels[label.LeaseOwner])
			return nil, ctx, errLeaseHeld
		}
	}
}

// held starts the heartbeat of a lease this invocation has taken.
func (r *run) held(ctx context.Context, key *ssh.Key, hk *hcloud.SSHKey, owner string) (*lease, context.Context) {
	lctx, lost := context.WithCancelCause(ctx)
	l := &lease{key: key, hkey: hk, owner: owner, cloud: r.b.cloud, log: r.log, lost: lost, stop: make(chan struct{})}
	l.stopped.Add(1)
	go l.heartbeat(context.WithoutCancel(ctx), r.b.opts.LeaseTTL, r.b.now, leaseUntil(hk))
	r.log.DebugContext(ctx, "lease taken", "owner", owner)
	return l, lctx
}

func leaseExpired(k *hcloud.SSHKey, now time.Time) bool { return !LeaseActive(k.Labels, now) }

func leaseUntil(k *hcloud.SSHKey) time.Time {
	until, _ := strconv.ParseInt(k.Labels[label.LeaseUntil], 10, 64)
	return time.Unix(until, 0)
}

// heartbeat renews the lease every ttl/3. When renewals fail until a third
// of the ttl before the lease expires, or the key is gone, the lease may
// be another invocation's by now: the run's context is cancelled. Renewals
// run under values, a context that never ends and carries the build's
// request counter.
func (l *lease) heartbeat(values context.Context, ttl time.Duration, now func() time.Time, expiry time.Time) {
	defer l.stopped.Done()
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	// A copy: the builder reads hkey while the heartbeat relabels.
	k := &hcloud.SSHKey{ID: l.hkey.ID, Name: l.hkey.Name}
	labels := maps.Clone(l.hkey.Labels)
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			until := now().Add(ttl)
			labels[label.LeaseUntil] = strconv.FormatInt(until.Unix(), 10)
			ctx, cancel := context.WithTimeout(values, ttl/3)
			err := l.cloud.SetSSHKeyLabels(ctx, k, maps.Clone(labels))
			cancel()
			switch {
			case err == nil:
				expiry = until
			case cloud.IsNotFound(err):
				l.log.Error("lease key is gone: stopping", "error", err)
				l.lost(errLeaseLost)
				return
			case now().After(expiry.Add(-ttl / 3)):
				l.log.Error("lease renewals failed until shortly before it expires: stopping", "error", err, "expires", expiry)
				l.lost(fmt.Errorf("%w (renewals failed: %w)", errLeaseLost, err))
				return
			default:
				l.log.Warn("renew lease", "error", err, "expires", expiry)
			}
		}
	}
}

// verify checks that the lease key still exists, is the one we made and
// names us; if not, the lease is lost.
func (l *lease) verify(ctx context.Context) error {
	k, err := l.cloud.SSHKeyByName(ctx, l.hkey.Name)
	if err != nil {
		return fmt.Errorf("check the build's lease: %w", err)
	}
	if k == nil || k.ID != l.hkey.ID || k.Labels[label.LeaseOwner] != l.owner {
		l.lost(errLeaseLost)
		return errLeaseLost
	}
	return nil
}

// release stops the heartbeat and deletes the key, unless the lease was
// lost: then the key, if any, is another invocation's. It runs even when
// ctx has ended, so that the next invocation finds the lease free.
func (l *lease) release(ctx context.Context) {
	l.once.Do(func() {
		close(l.stop)
		l.stopped.Wait()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := l.verify(ctx); err != nil {
			l.log.WarnContext(ctx, "not releasing a lease that is not ours", "error", err)
			return
		}
		if err := l.cloud.DeleteSSHKey(ctx, l.hkey); err != nil {
			l.log.WarnContext(ctx, "release lease", "error", err)
		}
	})
}
