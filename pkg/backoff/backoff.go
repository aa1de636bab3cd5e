// Package backoff is the growing wait between the attempts of a retry loop:
// the SSH dial to a booting rescue system, the looks at a snapshot being
// created and the retries of a busy Hetzner API.
//
// hcloud-go has a delay table of its own (hcloud.ExponentialBackoffWithOpts,
// a func(retries int) time.Duration), which pkg/cloud hands to hcloud-go's
// client for its own polls and retries. It is not wrapped here: it only
// computes the delays, in float seconds, while what the loops here share
// is waiting them out against a context; and pkg/ssh has no business
// importing a Hetzner client for that.
package backoff

import (
	"context"
	"time"
)

// Exponential is a wait that starts at Initial and grows by Factor after
// every attempt, up to Max. Its zero value is not usable; make one per
// retry loop, as it counts that loop's attempts.
type Exponential struct {
	Initial time.Duration
	Factor  float64 // at least 1
	Max     time.Duration

	next time.Duration // 0 before the first delay
}

// Next returns the delay to wait now and grows the one after it.
func (e *Exponential) Next() time.Duration {
	if e.next == 0 {
		e.next = e.Initial
	}
	d := min(e.next, e.Max)
	// float64 holds delays of this size exactly, so a factor of 1.5 or 2
	// gives what d*3/2 or 2*d would.
	e.next = min(time.Duration(float64(d)*e.Factor), e.Max)
	return d
}

// Wait waits the next delay; it returns ctx.Err() if ctx ends first.
func (e *Exponential) Wait(ctx context.Context) error { return Sleep(ctx, e.Next()) }

// Sleep waits d; it returns ctx.Err() if ctx ends first.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
