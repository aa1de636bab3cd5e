// Package release lists the releases of siderolabs/talos on GitHub and
// decides which of them are tracked.
//
// Listing uses go-github with conditional requests: every page is asked
// for with the ETag of its last answer (kept in memory, so across warm
// Lambda invocations), and a 304 reuses the page read before; GitHub does
// not count an authenticated 304 against the rate limit. Pages hold 100
// releases and paging stops as soon as the tracked lines are covered
// (Policy.Covered), so an hourly poll costs one request per hour, well
// within the 60 per hour GitHub allows unauthenticated callers.
package release

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-github/v62/github"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// Release is a published release with a strict semver tag.
type Release struct {
	Version talos.Version
	// Prerelease is true when GitHub flags the release as one or its tag
	// carries a prerelease suffix: releases are sometimes mislabelled.
	Prerelease bool
}

// Options configure a Lister.
type Options struct {
	// BaseURL is the API base URL (GITHUB_API_URL); default
	// https://api.github.com/.
	BaseURL string
	// Token is optional; without it GitHub allows 60 requests per hour.
	Token string
	// Owner and Repo name the repository; default siderolabs/talos.
	Owner, Repo string
	// PerPage is the page size; default 100, GitHub's maximum.
	PerPage int
	// HTTP is the client; default one with a 30 s timeout.
	HTTP   *http.Client
	Logger *slog.Logger
}

// Lister lists releases. It remembers the pages it read with their ETags;
// concurrent List calls take turns.
type Lister struct {
	gh    *github.Client
	opts  Options
	log   *slog.Logger
	mu    sync.Mutex
	pages map[int]page
}

// page is a page as last read, with what it leads to.
type page struct {
	etag     string
	releases []Release
	skipped  []string
	next     int
}

// New returns a Lister. It does not contact GitHub.
func New(o Options) (*Lister, error) {
	if o.BaseURL == "" {
		o.BaseURL = "https://api.github.com/"
	}
	if o.Owner == "" {
		o.Owner = "siderolabs"
	}
	if o.Repo == "" {
		o.Repo = "talos"
	}
	if o.PerPage <= 0 {
		o.PerPage = 100
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{Timeout: 30 * time.Second}
	}
	base, err := url.Parse(strings.TrimRight(o.BaseURL, "/") + "/")
	if err != nil {
		return nil, fmt.Errorf("github api url %q: %w", o.BaseURL, err)
	}
	gh := github.NewClient(o.HTTP)
	if o.Token != "" {
		gh = gh.WithAuthToken(o.Token)
	}
	gh.BaseURL = base
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Lister{gh: gh, opts: o, log: log, pages: map[int]page{}}, nil
}

// Listing is the result of List.
type Listing struct {
	// Releases are the published releases with strict semver tags, newest
	// first; drafts are left out.
	Releases []Release
	// Skipped are the tags that are not strict semver.
	Skipped []string
	// Requests is how many pages were asked for, NotModified how many of
	// them GitHub answered with 304.
	Requests, NotModified int
	// Complete tells whether every page was read.
	Complete bool
}

// List reads the releases page by page, newest first, until covered says
// the releases read so far suffice or the list ends. A rate limit answer is
// a *RateLimitError.
func (l *Lister) List(ctx context.Context, covered func([]Release) bool) (Listing, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out Listing
	for n := 1; n != 0; {
		p, notModified, err := l.page(ctx, n)
		if err != nil {
			return Listing{}, err
		}
		out.Requests++
		if notModified {
			out.NotModified++
		}
		out.Releases = append(out.Releases, p.releases...)
		out.Skipped = append(out.Skipped, p.skipped...)
		if p.next == 0 {
			out.Complete = true
			break
		}
		if covered != nil && covered(out.Releases) {
			break
		}
		n = p.next
	}
	for _, tag := range out.Skipped {
		l.log.Info("skipping a release whose tag is not a strict semantic version", "tag", tag)
	}
	return out, nil
}

// page reads page n, conditionally when it was read before.
func (l *Lister) page(ctx context.Context, n int) (page, bool, error) {
	q := url.Values{"per_page": {strconv.Itoa(l.opts.PerPage)}, "page": {strconv.Itoa(n)}}
	u := fmt.Sprintf("repos/%s/%s/releases?%s", url.PathEscape(l.opts.Owner), url.PathEscape(l.opts.Repo), q.Encode())
	req, err := l.gh.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return page{}, false, fmt.Errorf("list releases: %w", err)
	}
	cached, ok := l.pages[n]
	if ok && cached.etag != "" {
		req.Header.Set("If-None-Match", cached.etag)
	}
	var raw []*github.RepositoryRelease
	resp, err := l.gh.Do(ctx, req, &raw)
	if ok && resp != nil && resp.StatusCode == http.StatusNotModified {
		return cached, true, nil
	}
	if err != nil {
		return page{}, false, l.wrap(n, err)
	}
	p := page{etag: resp.Header.Get("ETag"), next: resp.NextPage}
	p.releases, p.skipped = parse(raw)
	l.pages[n] = p
	return p, false, nil
}

// parse keeps the published releases with strict semver tags.
func parse(raw []*github.RepositoryRelease) (rs []Release, skipped []string) {
	for _, r := range raw {
		if r.GetDraft() {
			continue
		}
		v, err := talos.ParseVersion(r.GetTagName())
		if err != nil {
			skipped = append(skipped, r.GetTagName())
			continue
		}
		rs = append(rs, Release{Version: v, Prerelease: r.GetPrerelease() || v.Prerelease()})
	}
	return rs, skipped
}

// RateLimitError means GitHub refused to answer for now (403 or 429 for a
// primary or secondary rate limit). Nothing should be acted on.
type RateLimitError struct {
	Status        int
	Until         time.Time // when GitHub allows requests again; zero if unknown
	Authenticated bool
	Err           error
}

func (e *RateLimitError) Error() string {
	msg := fmt.Sprintf("GitHub rate limit reached (HTTP %d) while listing Talos releases", e.Status)
	if !e.Until.IsZero() {
		msg += "; it resets at " + e.Until.UTC().Format(time.RFC3339)
	}
	if !e.Authenticated {
		msg += "; unauthenticated callers get 60 requests per hour, set GITHUB_TOKEN for more"
	}
	return msg + ": " + e.Err.Error()
}

func (e *RateLimitError) Unwrap() error { return e.Err }

// IsRateLimited tells whether err is a *RateLimitError.
func IsRateLimited(err error) bool {
	var rl *RateLimitError
	return errors.As(err, &rl)
}

func (l *Lister) wrap(n int, err error) error {
	rl := &RateLimitError{Authenticated: l.opts.Token != "", Err: err}
	var primary *github.RateLimitError
	var secondary *github.AbuseRateLimitError
	var resp *github.ErrorResponse
	switch {
	case errors.As(err, &primary):
		rl.Status, rl.Until = http.StatusForbidden, primary.Rate.Reset.Time
		return rl
	case errors.As(err, &secondary):
		rl.Status = http.StatusForbidden
		if secondary.Response != nil {
			rl.Status = secondary.Response.StatusCode
		}
		if secondary.RetryAfter != nil {
			rl.Until = time.Now().Add(*secondary.RetryAfter)
		}
		return rl
	case errors.As(err, &resp) && resp.Response != nil && resp.Response.StatusCode == http.StatusTooManyRequests:
		rl.Status = http.StatusTooManyRequests
		if s, perr := strconv.Atoi(resp.Response.Header.Get("Retry-After")); perr == nil {
			rl.Until = time.Now().Add(time.Duration(s) * time.Second)
		}
		return rl
	}
	return fmt.Errorf("list releases of %s/%s (page %d): %w", l.opts.Owner, l.opts.Repo, n, err)
}
