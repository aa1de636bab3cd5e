package cloud

import (
	"context"
	"sync/atomic"
)

// RequestCounter counts the HTTP requests sent to the API on behalf of a
// context: every attempt, retries and action polls included, as the
// project's rate limit counts them. The Builder keeps one per build and
// invocation; builds of one invocation share the client but not their
// contexts.
type RequestCounter struct{ n atomic.Int64 }

// Count is the number of requests counted so far.
func (c *RequestCounter) Count() int64 { return c.n.Load() }

type counterKey struct{}

// CountRequests returns a context whose API requests c counts (in place of
// any counter ctx had).
func CountRequests(ctx context.Context, c *RequestCounter) context.Context {
	return context.WithValue(ctx, counterKey{}, c)
}

// countRequest counts one request sent under ctx.
func countRequest(ctx context.Context) {
	if c, ok := ctx.Value(counterKey{}).(*RequestCounter); ok {
		c.n.Add(1)
	}
}
