package build

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"strconv"
	"sync"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/ssh"
)

// The lease is an SSH key named like the build server. Hetzner key names are
// unique per project, so creating it is an atomic test-and-set that label
// updates (last write wins) cannot give. It is also the invocation's rescue
// key: its private half lives only in this invocation's memory. A heartbeat
// keeps its expiry ahead, so a crashed holder blocks others for at most
// LeaseTTL.
type lease struct {
	key  *ssh.Key
	hkey *hcloud.SSHKey

	cloud   Cloud
	log     *slog.Logger
	stop    chan struct{}
	stopped sync.WaitGroup
	once    sync.Once
}

var errLeaseHeld = errors.New("another invocation holds the build's lease")

func (r *run) acquire(ctx context.Context) (*lease, error) {
	b := r.b
	key, err := b.newKey()
	if err != nil {
		return nil, err
	}
	owner := b.owner(ctx)
	labels := r.t.targetLabels(b.opts.Cluster)
	labels[labelRole] = roleLease
	labels[labelLeaseOwner] = owner
	name := r.t.Name()
	for range 2 {
		labels[labelLeaseUntil] = strconv.FormatInt(b.now().Add(b.opts.LeaseTTL).Unix(), 10)
		hk, err := b.cloud.CreateSSHKey(ctx, name, key.AuthorizedKey(), labels)
		if err == nil {
			return r.held(ctx, key, hk, owner), nil
		}
		if !cloud.IsConflict(err) {
			return nil, err
		}
		cur, err := b.cloud.SSHKeyByName(ctx, name)
		if err != nil {
			return nil, err
		}
		if cur == nil {
			continue // released meanwhile
		}
		if cur.Fingerprint == key.Fingerprint() {
			// Our own create went through but its reply was lost, and
			// hcloud-go's retry met the key it made. The key pair is fresh,
			// so its fingerprint proves the key is ours (an owner label
			// would not: a Lambda retry carries the same request id).
			r.log.InfoContext(ctx, "lease taken by a create whose reply was lost", "owner", owner)
			return r.held(ctx, key, cur, owner), nil
		}
		if !leaseExpired(cur, b.now()) {
			r.log.InfoContext(ctx, "another invocation is building this target", "owner", cur.Labels[labelLeaseOwner])
			return nil, errLeaseHeld
		}
		r.log.WarnContext(ctx, "taking over an expired lease", "owner", cur.Labels[labelLeaseOwner])
		if err := b.cloud.DeleteSSHKey(ctx, cur); err != nil {
			return nil, err
		}
	}
	return nil, errLeaseHeld
}

// held starts the heartbeat of a lease this invocation has taken.
func (r *run) held(ctx context.Context, key *ssh.Key, hk *hcloud.SSHKey, owner string) *lease {
	l := &lease{key: key, hkey: hk, cloud: r.b.cloud, log: r.log, stop: make(chan struct{})}
	l.stopped.Add(1)
	go l.heartbeat(r.b.opts.LeaseTTL, r.b.now)
	r.log.DebugContext(ctx, "lease taken", "owner", owner)
	return l
}

func leaseExpired(k *hcloud.SSHKey, now time.Time) bool { return !LeaseActive(k.Labels, now) }

func (l *lease) heartbeat(ttl time.Duration, now func() time.Time) {
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
			labels[labelLeaseUntil] = strconv.FormatInt(now().Add(ttl).Unix(), 10)
			ctx, cancel := context.WithTimeout(context.Background(), ttl/3)
			if err := l.cloud.SetSSHKeyLabels(ctx, k, maps.Clone(labels)); err != nil {
				l.log.WarnContext(ctx, "renew lease", "error", err)
			}
			cancel()
		}
	}
}

// release stops the heartbeat and deletes the key. It runs even when ctx
// has ended, so that the next invocation finds the lease free.
func (l *lease) release(ctx context.Context) {
	l.once.Do(func() {
		close(l.stop)
		l.stopped.Wait()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := l.cloud.DeleteSSHKey(ctx, l.hkey); err != nil {
			l.log.WarnContext(ctx, "release lease", "error", err)
		}
	})
}
