package fakegithub

import (
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Documentation URLs GitHub puts in rate limit errors. go-github recognises a
// secondary limit by the suffix "secondary-rate-limits".
const (
	docsPrimaryLimit   = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-rate-limits"
	docsSecondaryLimit = "https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
)

// bucket is one caller's primary rate limit window. As on GitHub, a window
// starts with the caller's first request and lasts RateWindow.
type bucket struct {
	limit int
	used  int
	reset time.Time
}

func (b *bucket) remaining() int { return max(0, b.limit-b.used) }

// setHeaders writes GitHub's rate limit headers.
func (b *bucket) setHeaders(h http.Header) {
	h.Set("X-RateLimit-Limit", strconv.Itoa(b.limit))
	h.Set("X-RateLimit-Remaining", strconv.Itoa(b.remaining()))
	h.Set("X-RateLimit-Reset", strconv.FormatInt(resetUnix(b.reset), 10))
	h.Set("X-RateLimit-Used", strconv.Itoa(b.used))
	h.Set("X-RateLimit-Resource", "core")
}

// resetUnix rounds up so a client never retries before the window ends.
func resetUnix(t time.Time) int64 {
	u := t.Unix()
	if t.After(time.Unix(u, 0)) {
		u++
	}
	return u
}

// bucketLocked returns the caller's current window, starting a new one when
// the last has ended.
func (s *Server) bucketLocked(c caller, now time.Time) *bucket {
	b := s.buckets[c.key]
	if b == nil || !now.Before(b.reset) {
		limit := s.opts.RateLimit
		if c.authenticated {
			limit = s.opts.AuthRateLimit
		}
		b = &bucket{limit: limit, reset: now.Add(s.opts.RateWindow)}
		s.buckets[c.key] = b
	}
	return b
}

// ResetRateLimits forgets all rate limit windows, as if an hour had passed.
func (s *Server) ResetRateLimits() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.buckets)
}

// secondaryFault is a forced secondary rate limit.
type secondaryFault struct {
	status     int
	retryAfter time.Duration
	count      int
}

// ForceSecondaryRateLimit makes the next count API requests fail with
// GitHub's secondary rate limit error: status 403 (which go-github turns into
// an *AbuseRateLimitError) or 429, with a Retry-After header. A count of zero
// or less clears it.
func (s *Server) ForceSecondaryRateLimit(status int, retryAfter time.Duration, count int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secondary = secondaryFault{status: status, retryAfter: retryAfter, count: max(0, count)}
}

// takeSecondaryLocked consumes one forced secondary limit failure, if any.
func (s *Server) takeSecondaryLocked() (secondaryFault, bool) {
	if s.secondary.count == 0 {
		return secondaryFault{}, false
	}
	s.secondary.count--
	return s.secondary, true
}

func primaryLimitMessage(c caller) string {
	if c.authenticated {
		return "API rate limit exceeded for user ID 1."
	}
	return fmt.Sprintf("API rate limit exceeded for %s. (But here's the good news: Authenticated requests get a "+
		"higher rate limit. Check out the documentation for more details.)", c.ip)
}

const secondaryLimitMessage = "You have exceeded a secondary rate limit. Please wait a few minutes before you try " +
	"again. If you reach out to GitHub Support for help, please include the request ID %s."
