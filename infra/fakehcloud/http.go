package fakehcloud

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// apiError is an error answered in Hetzner's shape
// {"error":{"code":..,"message":..,"details":..}}.
type apiError struct {
	status  int
	code    string
	message string
	details any
}

func (e *apiError) Error() string { return fmt.Sprintf("%s (%s)", e.message, e.code) }

func errNotFound(kind string, id string) *apiError {
	return &apiError{http.StatusNotFound, "not_found", fmt.Sprintf("%s with ID '%s' not found", kind, id), nil}
}

func errLocked(kind string) *apiError {
	return &apiError{http.StatusLocked, "locked", "cannot perform operation because " + kind + " is locked", nil}
}

func errUniqueness(message string) *apiError {
	return &apiError{http.StatusConflict, "uniqueness_error", message, nil}
}

// errInvalidField is invalid_input naming the offending field in the details,
// which hcloud-go decodes into schema.ErrorDetailsInvalidInput.
func errInvalidField(field string, messages ...string) *apiError {
	return &apiError{
		status:  http.StatusBadRequest,
		code:    "invalid_input",
		message: "invalid input in field '" + field + "'",
		details: invalidDetails{Fields: []invalidField{{Name: field, Messages: messages}}},
	}
}

type invalidDetails struct {
	Fields []invalidField `json:"fields"`
}

type invalidField struct {
	Name     string   `json:"name"`
	Messages []string `json:"messages"`
}

// apiHandler answers one API request: a status and a body to encode as JSON
// (nil for no body), or an error.
type apiHandler func(r *http.Request) (int, any, error)

func (c *Cloud) serve(h apiHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status, body, err := h(r)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, status, body)
	})
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	if body == nil {
		w.WriteHeader(status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func writeError(w http.ResponseWriter, err error) {
	var e *apiError
	if !errors.As(err, &e) {
		e = &apiError{http.StatusInternalServerError, "server_error", err.Error(), nil}
	}
	writeJSON(w, e.status, map[string]any{"error": map[string]any{
		"code":    e.code,
		"message": e.message,
		"details": e.details,
	}})
}

// decode reads a JSON request body into v.
func decode(r *http.Request, v any) error {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		return &apiError{http.StatusBadRequest, "json_error", "invalid JSON in request body: " + err.Error(), nil}
	}
	return nil
}

// decodeOptional is decode for bodies whose fields are all optional, so an
// empty body is fine.
func decodeOptional(r *http.Request, v any) error {
	err := json.NewDecoder(r.Body).Decode(v)
	if err != nil && !errors.Is(err, io.EOF) {
		return &apiError{http.StatusBadRequest, "json_error", "invalid JSON in request body: " + err.Error(), nil}
	}
	return nil
}

// pathID parses the {id} path value.
func pathID(r *http.Request, kind string) (int64, error) {
	raw := r.PathValue("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id <= 0 {
		return 0, errNotFound(kind, raw)
	}
	return id, nil
}

// Request is one entry of the request log.
type Request struct {
	Time   time.Time `json:"time"`
	Method string    `json:"method"`
	Path   string    `json:"path"`
	Query  string    `json:"query"`
	Status int       `json:"status"`
}

// requestLog records every request the handler answered.
type requestLog struct {
	mu      sync.Mutex
	entries []Request
}

func (l *requestLog) add(r Request) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries = append(l.entries, r)
}

func (l *requestLog) all() []Request {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.entries)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(status int) {
	if s.status == 0 {
		s.status = status
	}
	s.ResponseWriter.WriteHeader(status)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// rateBucket is Hetzner's rate limit: a bucket of limit requests refilling
// one request per second.
type rateBucket struct {
	mu      sync.Mutex
	limit   float64
	tokens  float64
	updated time.Time
}

// take spends one request if there is one and reports what is left and when
// the bucket is full again.
func (b *rateBucket) take(now time.Time) (remaining int, reset time.Time, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens = math.Min(b.limit, b.tokens+now.Sub(b.updated).Seconds())
	b.updated = now
	if b.tokens >= 1 {
		b.tokens--
		ok = true
	}
	missing := time.Duration((b.limit - b.tokens) * float64(time.Second))
	return int(b.tokens), now.Add(missing), ok
}

const apiPrefix = "/v1"

// middleware logs, sets the rate limit headers, checks the token and injects
// transient faults, in that order, before any handler touches state.
func (c *Cloud) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		start := time.Now()
		defer func() {
			c.log.add(Request{Time: start, Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Status: rec.status})
		}()
		if !strings.HasPrefix(r.URL.Path, apiPrefix+"/") {
			next.ServeHTTP(rec, r)
			return
		}
		remaining, reset, ok := c.rate.take(start)
		h := rec.Header()
		h.Set("RateLimit-Limit", strconv.Itoa(int(c.rate.limit)))
		h.Set("RateLimit-Remaining", strconv.Itoa(remaining))
		h.Set("RateLimit-Reset", strconv.FormatInt(reset.Unix(), 10))
		auth := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(auth, []byte("Bearer "+c.opts.Token)) != 1 {
			writeError(rec, &apiError{http.StatusUnauthorized, "unauthorized", "unable to authenticate", nil})
			return
		}
		if !ok && c.opts.EnforceRateLimit {
			writeError(rec, FaultRateLimitExceeded.err())
			return
		}
		if f, ok := c.faults.transient(); ok {
			writeError(rec, f.err())
			return
		}
		if f, ok := c.faults.refused(r.Method, r.URL.Path); ok {
			writeError(rec, f.err())
			return
		}
		next.ServeHTTP(rec, r)
	})
}

// pagination is meta.pagination; absent pages are null as in the real API.
type pagination struct {
	Page         int  `json:"page"`
	PerPage      int  `json:"per_page"`
	PreviousPage *int `json:"previous_page"`
	NextPage     *int `json:"next_page"`
	LastPage     int  `json:"last_page"`
	TotalEntries int  `json:"total_entries"`
}

const (
	defaultPerPage = 25
	maxPerPage     = 50
)

// paginate cuts the requested page out of items.
func paginate[T any](q url.Values, items []T) ([]T, pagination, error) {
	p := pagination{Page: 1, PerPage: defaultPerPage, TotalEntries: len(items)}
	if v := q.Get("page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, p, errInvalidField("page", "must be a positive integer")
		}
		p.Page = n
	}
	if v := q.Get("per_page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, p, errInvalidField("per_page", "must be a positive integer")
		}
		p.PerPage = min(n, maxPerPage)
	}
	p.LastPage = max(1, (len(items)+p.PerPage-1)/p.PerPage)
	if p.Page > 1 {
		prev := min(p.Page-1, p.LastPage)
		p.PreviousPage = &prev
	}
	if p.Page < p.LastPage {
		next := p.Page + 1
		p.NextPage = &next
	}
	from := min(len(items), (p.Page-1)*p.PerPage)
	to := min(len(items), from+p.PerPage)
	return items[from:to], p, nil
}

// listResponse is a list answer: the items under key plus meta.pagination.
func listResponse[T, S any](q url.Values, key string, items []T, conv func(T) S) (int, any, error) {
	page, p, err := paginate(q, items)
	if err != nil {
		return 0, nil, err
	}
	out := make([]S, len(page))
	for i, it := range page {
		out[i] = conv(it)
	}
	return http.StatusOK, map[string]any{key: out, "meta": map[string]any{"pagination": p}}, nil
}

// sortFields maps the sort keys a list accepts to comparators.
type sortFields[T any] map[string]func(a, b T) int

// sortItems orders items by the sort query values ("id", "name:desc", ...),
// ties and the default order by ascending id.
func sortItems[T any](items []T, sorts []string, fields sortFields[T]) error {
	type key struct {
		cmp  func(a, b T) int
		desc bool
	}
	keys := make([]key, 0, len(sorts)+1)
	for _, s := range sorts {
		name, dir, _ := strings.Cut(s, ":")
		f, ok := fields[name]
		if !ok || (dir != "" && dir != "asc" && dir != "desc") {
			return errInvalidField("sort", fmt.Sprintf("invalid sort value %q", s))
		}
		keys = append(keys, key{f, dir == "desc"})
	}
	keys = append(keys, key{cmp: fields["id"]})
	slices.SortStableFunc(items, func(a, b T) int {
		for _, k := range keys {
			if n := k.cmp(a, b); n != 0 {
				if k.desc {
					return -n
				}
				return n
			}
		}
		return 0
	})
	return nil
}

// matchAny reports whether the query has no value for name or v is one of them.
func matchAny(q url.Values, name, v string) bool {
	want := q[name]
	return len(want) == 0 || slices.Contains(want, v)
}

// matchPath reports whether p matches the path.Match pattern.
func matchPath(pattern, p string) bool {
	ok, err := path.Match(pattern, p)
	return err == nil && ok
}
