package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"
)

// Builds of one architecture and schematic run one at a time, oldest
// version first, so that the most recently created snapshot, which
// consumers boot, is the highest version. So that they need not wait for a
// poll each, a request carries the group's queue: the builds that follow
// its own, in order. When its target is done, the Builder starts the first
// of them in a new invocation, with the rest as its queue, until the queue
// is empty. A failed build ends its queue (the next poll plans again); one
// that is retried or continues carries its queue along.

// Next is a build that follows another of the same architecture and
// schematic.
type Next struct {
	Version string `json:"version"`
	Force   bool   `json:"force,omitempty"`
}

// MaxQueue is the most builds a request may queue behind its own: each is
// a billed server, and a queue runs its builds one after another.
const MaxQueue = 32

// queueProblems checks a request's queue: one architecture and schematic,
// and every version valid and allowed by the policy, as if requested alone.
func (b *Builder) queueProblems(r Request) []string {
	if len(r.Queue) == 0 {
		return nil
	}
	var p []string
	if r.Arch == "" || r.Schematic == "" {
		p = append(p, "queue: the builds of a queue follow this one's architecture and schematic: name both")
	}
	if len(r.Queue) > MaxQueue {
		p = append(p, fmt.Sprintf("queue: %d builds, at most %d", len(r.Queue), MaxQueue))
	}
	if len(p) > 0 {
		return p
	}
	policy := false
	for i, q := range r.Queue {
		if err := (Target{Version: q.Version, Arch: r.Arch, Schematic: r.Schematic}).Validate(); err != nil {
			p = append(p, fmt.Sprintf("queue[%d]: %v", i, err))
			continue
		}
		for _, vp := range b.versionProblems(q.Version) {
			p, policy = append(p, fmt.Sprintf("queue[%d]: %s", i, vp)), true
		}
	}
	if policy {
		p = append(p, b.allowed())
	}
	return p
}

// next is the request of the first build of r's queue, with the rest as
// its queue.
func (r Request) next() Request {
	n := Request{Version: r.Queue[0].Version, Arch: r.Arch, Schematic: r.Schematic, Force: r.Queue[0].Force}
	if len(r.Queue) > 1 {
		n.Queue = r.Queue[1:]
	}
	return n
}

// handOn starts the next build of the request's queue once its one target
// is done. The next build is a signed continuation whose origin derives
// from this build's, so that a build handed on twice (this invocation
// retried after it handed on) is one request: a forced build finds the
// snapshot it made instead of rebuilding. If the next build cannot be
// started the invocation fails, so that Lambda runs it again: the target
// is found done and the queue handed on.
func (b *Builder) handOn(ctx context.Context, r Request, resp Response) (Response, error) {
	if len(r.Queue) == 0 || len(resp.Results) != 1 || resp.Results[0].State != Done || b.cont == nil {
		return resp, nil
	}
	origin := b.owner(ctx)
	if r.Continuation != nil {
		origin = r.Continuation.Origin
	}
	next := r.next()
	next.Continuation = &Continuation{Origin: nextOrigin(origin, r.Queue[0])}
	b.sign(&next)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	t := resp.Results[0].Target
	if err := b.cont.Continue(cctx, next); err != nil {
		return resp, fmt.Errorf("build to be retried: %s is done, but starting the next build of its queue, %s, failed: %w",
			t, next.Version, err)
	}
	b.log.InfoContext(ctx, "next build of the queue started", "target", t.String(), "next", next.Version,
		"force", next.Force, "queued", len(next.Queue))
	resp.Next = &r.Queue[0]
	return resp, nil
}

// nextOrigin derives the origin of the next build of a queue from the
// origin of the build before it: a label value (hex).
func nextOrigin(origin string, n Next) string {
	sum := sha256.Sum256([]byte(origin + "\x00" + n.Version + "\x00" + strconv.FormatBool(n.Force)))
	return hex.EncodeToString(sum[:16])
}
