package build

import (
	"context"
	"maps"
	"time"
)

// Announcer tells subscribers how builds end (pkg/announce: an EventBridge
// bus): a snapshot published, a build failed for good. Nothing else is
// announced: not a build that was done already, nor one in progress, to be
// retried, refused or held back by its failure record. An error is logged
// and changes nothing: the snapshot exists, the failure is recorded.
type Announcer interface {
	Published(ctx context.Context, p Publication) error
	Failed(ctx context.Context, f Failure) error
}

// Publication is a snapshot a build made and published.
type Publication struct {
	Target
	Cluster    string // "" without CLUSTER_NAME
	SnapshotID int64
	Location   string // of the build server, which the snapshot was taken of
	// Labels are the snapshot's, as last seen by the build.
	Labels map[string]string
	// Duration runs from the build server's creation, the build's start as
	// the cloud keeps it across invocations, to the publication; zero when
	// the creation time is not known.
	Duration time.Duration
}

// Failure is a build that failed for good, with the reason.
type Failure struct {
	Target
	Cluster string
	Step    Step
	Code    string
	Error   string
}

// announceTimeout bounds one announcement: the build's end must not wait
// on it for long.
const announceTimeout = 10 * time.Second

// announcePublished announces the build's snapshot, once the build is done
// with a snapshot it made.
func (r *run) announcePublished(ctx context.Context) {
	if r.b.announcer == nil {
		return
	}
	p := Publication{Target: r.t, Cluster: r.b.opts.Cluster, SnapshotID: r.res.SnapshotID, Location: r.res.Location}
	if r.snap != nil {
		p.Labels = maps.Clone(r.snap.Labels)
	}
	if r.srv != nil && !r.srv.Created.IsZero() {
		p.Duration = r.b.now().Sub(r.srv.Created)
	}
	r.announce(ctx, "published", func(ctx context.Context) error { return r.b.announcer.Published(ctx, p) })
}

// announceFailed announces a build that failed for good.
func (r *run) announceFailed(ctx context.Context) {
	if r.b.announcer == nil {
		return
	}
	f := Failure{Target: r.t, Cluster: r.b.opts.Cluster, Step: r.res.Step, Code: r.res.Code, Error: r.res.Error}
	r.announce(ctx, "failed", func(ctx context.Context) error { return r.b.announcer.Failed(ctx, f) })
}

// announce sends an announcement even when ctx is ending: the build has
// ended, and a lost lease or an invocation's end does not change that.
func (r *run) announce(ctx context.Context, what string, send func(context.Context) error) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), announceTimeout)
	defer cancel()
	if err := send(actx); err != nil {
		r.log.ErrorContext(ctx, "the build's end could not be announced", "announcement", what, "error", err)
		return
	}
	r.log.InfoContext(ctx, "build's end announced", "announcement", what)
}
