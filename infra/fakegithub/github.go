// Package fakegithub is a stand-in for the GitHub REST API for tests and
// local runs: the list of one repository's releases (siderolabs/talos by
// default), the one call pkg/release makes, with pagination.
//
// It keeps GitHub's observable behaviour: newest-first order, Link headers
// go-github paginates with, drafts visible only to an authenticated
// collaborator, primary rate limits per caller with the X-RateLimit headers
// and 403 body go-github turns into *RateLimitError, forced secondary limits
// (*AbuseRateLimitError), and weak ETags with If-None-Match → 304, where an
// authenticated 304 does not count against the limit (GitHub's documented
// rule; unauthenticated 304s count).
//
// It serves no other endpoint — not the latest release, a release by tag or
// ID, /rate_limit, the GitHub Enterprise /api/v3 prefix, nor the
// /repositories/{id} pages its Link headers name as GitHub's do (go-github
// reads only their page numbers) — and has no release assets, writes over
// HTTP (use AddRelease, PublishRelease, RemoveRelease), Last-Modified,
// GraphQL, token scopes or rate limit resources but "core".
package fakegithub

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Options configure a Server.
type Options struct {
	// Addr is the listen address for Start; default "127.0.0.1:0". It must be
	// a loopback address.
	Addr string
	// Owner and Repo name the repository; default siderolabs/talos. Matching
	// is case-insensitive, as on GitHub.
	Owner, Repo string
	// RepoID is the repository's numeric ID, which GitHub's Link headers
	// name (/repositories/{id}/releases); default 1.
	RepoID int64
	// Releases are the initial releases, e.g. TalosReleases(). Zero IDs are
	// assigned in order of creation.
	Releases []Release
	// Token, if set, is the one valid token: requests with "Authorization:
	// Bearer <t>" or "token <t>" are authenticated (higher limit, drafts
	// visible); another token gets 401. If empty, Authorization is ignored.
	Token string
	// RateLimit and AuthRateLimit are requests per RateWindow for
	// unauthenticated (per client IP) and authenticated callers; defaults 60
	// and 5000 per hour.
	RateLimit     int
	AuthRateLimit int
	RateWindow    time.Duration
}

// Request is one entry of the request log.
type Request struct {
	Time          time.Time
	Method        string
	Path          string // API path and query
	Status        int
	Authenticated bool
	Conditional   bool // sent If-None-Match
}

// Server is the emulated GitHub API. It is an http.Handler; Start serves it
// on a loopback listener, whose URL is a go-github client's BaseURL.
type Server struct {
	opts Options
	mux  *http.ServeMux

	mu        sync.Mutex
	releases  []Release // newest first
	nextID    int64
	buckets   map[string]*bucket
	secondary secondaryFault
	requests  []Request
	requestID int

	srv *http.Server
	url string
}

// New returns a Server. It panics if Options.Releases holds an invalid
// release (empty or duplicate tag): that is a mistake in a scenario.
func New(opts Options) *Server {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.Owner == "" {
		opts.Owner = "siderolabs"
	}
	if opts.Repo == "" {
		opts.Repo = "talos"
	}
	if opts.RepoID == 0 {
		opts.RepoID = 1
	}
	if opts.RateLimit == 0 {
		opts.RateLimit = 60
	}
	if opts.AuthRateLimit == 0 {
		opts.AuthRateLimit = 5000
	}
	if opts.RateWindow == 0 {
		opts.RateWindow = time.Hour
	}
	s := &Server{
		opts:    opts,
		nextID:  150_000_000, // realistic magnitude for release IDs
		buckets: make(map[string]*bucket),
	}
	initial := slices.Clone(opts.Releases)
	slices.SortStableFunc(initial, func(a, b Release) int { return a.CreatedAt.Compare(b.CreatedAt) })
	now := time.Now()
	for _, r := range initial {
		if _, err := s.addLocked(r, now); err != nil {
			panic(fmt.Sprintf("github: %v", err))
		}
	}

	s.mux = http.NewServeMux()
	s.mux.HandleFunc("GET /repos/{owner}/{repo}/releases", s.api(s.listReleases))
	s.mux.HandleFunc("/", s.api(func(*http.Request, caller) reply { return notFound("https://docs.github.com/rest") }))
	return s
}

// Start serves on Options.Addr and returns the base URL (for GITHUB_API_URL),
// e.g. "http://127.0.0.1:41234/".
func (s *Server) Start() (string, error) {
	host, _, err := net.SplitHostPort(s.opts.Addr)
	if err != nil {
		return "", fmt.Errorf("start github: %w", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("start github: address %s is not a loopback address", s.opts.Addr)
	}
	ln, err := net.Listen("tcp", s.opts.Addr)
	if err != nil {
		return "", fmt.Errorf("start github: %w", err)
	}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(ln) //nolint:errcheck // Serve returns ErrServerClosed after Close
	s.url = "http://" + ln.Addr().String() + "/"
	return s.url, nil
}

// URL returns the base URL after Start.
func (s *Server) URL() string { return s.url }

// Close stops the server.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}
	if err := s.srv.Close(); err != nil {
		return fmt.Errorf("close github: %w", err)
	}
	return nil
}

// Requests returns a copy of the request log.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// Count returns how many logged requests have the method (any if "") and a
// path starting with pathPrefix.
func (s *Server) Count(method, pathPrefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.requests {
		if (method == "" || r.Method == method) && strings.HasPrefix(r.Path, pathPrefix) {
			n++
		}
	}
	return n
}

// ServeHTTP serves the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// caller identifies who is asking, for drafts and rate limits.
type caller struct {
	authenticated bool
	key           string // rate limit bucket
	ip            string
}

// identify returns the caller, or false for a token that is not Options.Token.
func (s *Server) identify(r *http.Request) (caller, bool) {
	ip, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		ip = r.RemoteAddr
	}
	c := caller{key: "ip:" + ip, ip: ip}
	auth := r.Header.Get("Authorization")
	if s.opts.Token == "" || auth == "" {
		return c, true
	}
	scheme, token, _ := strings.Cut(auth, " ")
	if !strings.EqualFold(scheme, "bearer") && !strings.EqualFold(scheme, "token") || token != s.opts.Token {
		return c, false
	}
	return caller{authenticated: true, key: "token", ip: ip}, true
}

// reply is what an endpoint answers; api turns it into a response.
type reply struct {
	status int
	body   any
	link   string
}

// apiError is GitHub's error body.
type apiError struct {
	Message          string `json:"message"`
	DocumentationURL string `json:"documentation_url"`
	Status           string `json:"status"`
}

func errorReply(status int, message, docs string) reply {
	return reply{status: status, body: apiError{message, docs, strconv.Itoa(status)}}
}

func notFound(docs string) reply { return errorReply(http.StatusNotFound, "Not Found", docs) }

// api wraps an endpoint with authentication, rate limiting, ETags, headers
// and the request log.
func (s *Server) api(endpoint func(*http.Request, caller) reply) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		c, valid := s.identify(r)
		conditional := r.Header.Get("If-None-Match") != ""
		h := w.Header()

		s.mu.Lock()
		s.requestID++
		requestID := fmt.Sprintf("E1A0:%04X:%06X", s.requestID%0x10000, s.requestID)
		fault, faulted := s.takeSecondaryLocked()
		b := s.bucketLocked(c, now)
		exhausted := b.remaining() == 0
		// a failed login, a forced failure and an exhausted limit cost nothing
		charged := valid && !faulted && !exhausted
		if charged {
			b.used++ // now, so concurrent requests cannot overdraw
		}
		s.mu.Unlock()

		var rep reply
		switch {
		case !valid:
			rep = errorReply(http.StatusUnauthorized, "Bad credentials", "https://docs.github.com/rest")
		case faulted:
			rep = errorReply(fault.status, fmt.Sprintf(secondaryLimitMessage, requestID), docsSecondaryLimit)
			h.Set("Retry-After", strconv.Itoa(int((fault.retryAfter+time.Second-1)/time.Second)))
		case exhausted:
			rep = errorReply(http.StatusForbidden, primaryLimitMessage(c), docsPrimaryLimit)
		default:
			rep = endpoint(r, c)
		}
		body, err := json.Marshal(rep.body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}

		status := rep.status
		if status == http.StatusOK {
			h.Set("ETag", etag(body, c.authenticated))
			if etagMatches(r.Header.Get("If-None-Match"), h.Get("ETag")) {
				status = http.StatusNotModified
			}
		}

		s.mu.Lock()
		if charged && status == http.StatusNotModified && c.authenticated {
			b.used-- // GitHub does not count an authorized 304
		}
		if valid {
			b.setHeaders(h)
		}
		s.requests = append(s.requests, Request{
			Time: now, Method: r.Method, Path: r.URL.RequestURI(), Status: status,
			Authenticated: c.authenticated, Conditional: conditional,
		})
		s.mu.Unlock()

		h.Set("X-GitHub-Request-Id", requestID)
		h.Set("X-GitHub-Api-Version-Selected", "2022-11-28")
		h.Set("Vary", "Accept, Authorization, Cookie, X-GitHub-OTP")
		if c.authenticated {
			h.Set("Cache-Control", "private, max-age=60, s-maxage=60")
		} else {
			h.Set("Cache-Control", "public, max-age=60, s-maxage=60")
		}
		if rep.link != "" {
			h.Set("Link", rep.link)
		}
		if status == http.StatusNotModified {
			w.WriteHeader(status)
			return
		}
		h.Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(status)
		w.Write(body) //nolint:errcheck // the client went away
	}
}

// etag is a weak ETag of the body; GitHub's differ per authorization.
func etag(body []byte, authenticated bool) string {
	h := sha256.New()
	fmt.Fprintf(h, "%t\x00", authenticated)
	h.Write(body)
	return fmt.Sprintf(`W/"%x"`, h.Sum(nil))
}

// etagMatches applies If-None-Match's weak comparison.
func etagMatches(ifNoneMatch, etag string) bool {
	if ifNoneMatch == "" {
		return false
	}
	for _, candidate := range strings.Split(ifNoneMatch, ",") {
		candidate = strings.TrimSpace(candidate)
		if candidate == "*" || strings.TrimPrefix(candidate, "W/") == strings.TrimPrefix(etag, "W/") {
			return true
		}
	}
	return false
}

// apiBase returns the API base URL as the client addressed it.
func apiBase(r *http.Request) string { return "http://" + r.Host }

// repoMatches reports whether the request names the emulated repository.
func (s *Server) repoMatches(r *http.Request) bool {
	return strings.EqualFold(r.PathValue("owner"), s.opts.Owner) && strings.EqualFold(r.PathValue("repo"), s.opts.Repo)
}

// visibleLocked returns the releases the caller may see, newest first.
func (s *Server) visibleLocked(c caller) []Release {
	var out []Release
	for _, rel := range s.releases {
		if !rel.Draft || c.authenticated {
			out = append(out, rel)
		}
	}
	return out
}

const docsList = "https://docs.github.com/rest/releases/releases#list-releases"

func (s *Server) listReleases(r *http.Request, c caller) reply {
	if !s.repoMatches(r) {
		return notFound(docsList)
	}
	q := r.URL.Query()
	perPage, err := strconv.Atoi(q.Get("per_page"))
	if err != nil || perPage < 1 {
		perPage = 30
	}
	perPage = min(perPage, 100)
	page, err := strconv.Atoi(q.Get("page"))
	if err != nil || page < 1 {
		page = 1
	}

	s.mu.Lock()
	visible := s.visibleLocked(c)
	s.mu.Unlock()
	last := max(1, (len(visible)+perPage-1)/perPage)
	start := min(len(visible), (page-1)*perPage)
	end := min(len(visible), start+perPage)

	api := apiBase(r)
	out := make([]releaseJSON, 0, end-start)
	for _, rel := range visible[start:end] {
		out = append(out, s.encode(rel, api))
	}

	// GitHub links to /repositories/{id}/... with the request's query
	linkTo := func(p int) string {
		q.Set("page", strconv.Itoa(p))
		return fmt.Sprintf("<%s/repositories/%d/releases?%s>", api, s.opts.RepoID, q.Encode())
	}
	var links []string
	if page > 1 {
		links = append(links, linkTo(page-1)+`; rel="prev"`)
	}
	if page < last {
		links = append(links, linkTo(page+1)+`; rel="next"`, linkTo(last)+`; rel="last"`)
	}
	if page > 1 {
		links = append(links, linkTo(1)+`; rel="first"`)
	}
	return reply{status: http.StatusOK, body: out, link: strings.Join(links, ", ")}
}
