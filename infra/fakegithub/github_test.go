package fakegithub_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	gh "github.com/google/go-github/v62/github"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakegithub"
)

const token = "ghp_test"

func start(t *testing.T, opts fakegithub.Options) (*fakegithub.Server, string) {
	t.Helper()
	s := fakegithub.New(opts)
	u, err := s.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s, u
}

// client returns a go-github client for the server, authenticated if tok is set.
func client(t *testing.T, base, tok string) *gh.Client {
	t.Helper()
	c := gh.NewClient(nil)
	if tok != "" {
		c = c.WithAuthToken(tok)
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	c.BaseURL = u
	return c
}

// manyReleases returns n releases one day apart, every tenth a draft.
func manyReleases(n int) []fakegithub.Release {
	base := time.Date(2024, 1, 1, 12, 0, 0, 0, time.UTC)
	rels := make([]fakegithub.Release, n)
	for i := range rels {
		rels[i] = fakegithub.Release{
			Tag:       fmt.Sprintf("v0.%d.0", i),
			CreatedAt: base.Add(time.Duration(i) * 24 * time.Hour),
			Draft:     i%10 == 9,
		}
	}
	return rels
}

func listAll(t *testing.T, c *gh.Client, perPage int) ([]*gh.RepositoryRelease, int) {
	t.Helper()
	var all []*gh.RepositoryRelease
	opts := &gh.ListOptions{PerPage: perPage}
	pages := 0
	for {
		rels, resp, err := c.Repositories.ListReleases(context.Background(), "siderolabs", "talos", opts)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		all = append(all, rels...)
		if resp.NextPage == 0 {
			return all, pages
		}
		opts.Page = resp.NextPage
	}
}

func TestPagination(t *testing.T) {
	_, base := start(t, fakegithub.Options{Releases: manyReleases(135), Token: token, RepoID: 65430018})
	for _, tc := range []struct {
		name          string
		tok           string
		perPage       int
		visible, page int
	}{
		{"unauthenticated", "", 10, 135 - 13, 13},
		{"authenticated sees drafts", token, 10, 135, 14},
		{"default page size", "", 0, 122, 5},
		{"max page size", token, 1000, 135, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			all, pages := listAll(t, client(t, base, tc.tok), tc.perPage)
			if len(all) != tc.visible || pages != tc.page {
				t.Fatalf("%d releases in %d pages, want %d in %d", len(all), pages, tc.visible, tc.page)
			}
			seen := map[int64]bool{}
			for i, r := range all {
				if seen[r.GetID()] {
					t.Errorf("release %d listed twice", r.GetID())
				}
				seen[r.GetID()] = true
				if i > 0 && r.GetCreatedAt().After(all[i-1].GetCreatedAt().Time) {
					t.Errorf("release %s listed after an older one", r.GetTagName())
				}
				if r.GetDraft() && tc.tok == "" {
					t.Errorf("draft %s visible unauthenticated", r.GetTagName())
				}
			}
		})
	}

	c := client(t, base, "")
	_, resp, err := c.Repositories.ListReleases(context.Background(), "siderolabs", "talos", &gh.ListOptions{PerPage: 10, Page: 3})
	if err != nil {
		t.Fatal(err)
	}
	if resp.PrevPage != 2 || resp.NextPage != 4 || resp.FirstPage != 1 || resp.LastPage != 13 {
		t.Errorf("prev %d next %d first %d last %d", resp.PrevPage, resp.NextPage, resp.FirstPage, resp.LastPage)
	}
	wantLink := fmt.Sprintf(`<%[1]srepositories/65430018/releases?page=2&per_page=10>; rel="prev", `+
		`<%[1]srepositories/65430018/releases?page=4&per_page=10>; rel="next", `+
		`<%[1]srepositories/65430018/releases?page=13&per_page=10>; rel="last", `+
		`<%[1]srepositories/65430018/releases?page=1&per_page=10>; rel="first"`, base)
	if got := resp.Header.Get("Link"); got != wantLink {
		t.Errorf("Link\n%s\nwant\n%s", got, wantLink)
	}

	// past the end: empty list; one page: no Link
	rels, resp, err := c.Repositories.ListReleases(context.Background(), "siderolabs", "talos", &gh.ListOptions{PerPage: 10, Page: 99})
	if err != nil || len(rels) != 0 || resp.NextPage != 0 {
		t.Errorf("past the end: %d releases, next %d, err %v", len(rels), resp.NextPage, err)
	}
	_, resp, err = c.Repositories.ListReleases(context.Background(), "siderolabs", "talos", &gh.ListOptions{PerPage: 100, Page: 1})
	if err != nil || resp.LastPage != 2 {
		t.Errorf("per_page 100: last %d, err %v", resp.LastPage, err)
	}
}

func statusOf(err error) int {
	var er *gh.ErrorResponse
	if errors.As(err, &er) {
		return er.Response.StatusCode
	}
	return 0
}

// tags lists the releases' tags as c sees them, newest first.
func tags(t *testing.T, c *gh.Client) []string {
	t.Helper()
	rels, _, err := c.Repositories.ListReleases(context.Background(), "siderolabs", "talos", &gh.ListOptions{PerPage: 100})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rels {
		out = append(out, r.GetTagName())
	}
	return out
}

func TestReleaseChanges(t *testing.T) {
	s, base := start(t, fakegithub.Options{Releases: fakegithub.TalosReleases(), Token: token})
	ctx := context.Background()
	anon := client(t, base, "")
	if got := tags(t, anon); got[0] != "v1.13.9" {
		t.Fatalf("newest %s, want v1.13.9", got[0])
	}
	draft := slices.IndexFunc(s.Releases(), func(r fakegithub.Release) bool { return r.Draft })
	draftRel := s.Releases()[draft]
	if slices.Contains(tags(t, anon), draftRel.Tag) || !slices.Contains(tags(t, client(t, base, token)), draftRel.Tag) {
		t.Errorf("draft %s: listed unauthenticated, or not to the collaborator", draftRel.Tag)
	}
	if rels, _, err := anon.Repositories.ListReleases(ctx, "SideroLabs", "Talos", nil); err != nil || len(rels) == 0 {
		t.Errorf("repo names are case-insensitive: %d releases, %v", len(rels), err)
	}
	if _, _, err := anon.Repositories.ListReleases(ctx, "siderolabs", "omni", nil); statusOf(err) != 404 {
		t.Errorf("other repository: %v, want 404", err)
	}

	// the list follows adds, removals and publication
	if _, err := s.AddRelease(fakegithub.Release{Tag: "v1.15.0-alpha.0", Prerelease: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddRelease(fakegithub.Release{Tag: "v1.15.0-alpha.0"}); err == nil {
		t.Error("duplicate tag accepted")
	}
	if err := s.RemoveRelease("v1.13.9"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveRelease("v1.13.9"); !errors.Is(err, fakegithub.ErrNotFound) {
		t.Errorf("removing twice: %v", err)
	}
	if got := tags(t, anon); got[0] != "v1.15.0-alpha.0" || slices.Contains(got, "v1.13.9") {
		t.Errorf("after adding v1.15.0-alpha.0 and removing v1.13.9: %v", got[:3])
	}
	pub, err := s.PublishRelease(draftRel.Tag)
	if err != nil || pub.Draft || pub.PublishedAt.IsZero() {
		t.Fatalf("publish: %+v, %v", pub, err)
	}
	if _, err := s.PublishRelease(draftRel.Tag); err == nil {
		t.Error("published twice")
	}
	rels, _, err := anon.Repositories.ListReleases(ctx, "siderolabs", "talos", &gh.ListOptions{PerPage: 100})
	i := slices.IndexFunc(rels, func(r *gh.RepositoryRelease) bool { return r.GetTagName() == draftRel.Tag })
	if err != nil || i < 0 || rels[i].GetPublishedAt().IsZero() {
		t.Errorf("published %s not listed with published_at: %v", draftRel.Tag, err)
	}

	empty, emptyBase := start(t, fakegithub.Options{})
	if got := tags(t, client(t, emptyBase, "")); len(got) != 0 {
		t.Errorf("releases listed by an empty server: %v", got)
	}
	if len(empty.Releases()) != 0 {
		t.Error("releases in an empty server")
	}
}

func rawGet(t *testing.T, u string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestJSONShape(t *testing.T) {
	_, base := start(t, fakegithub.Options{Token: token, Releases: []fakegithub.Release{
		{Tag: "v1.0.0", CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Body: "notes"},
		{Tag: "v1.1.0", CreatedAt: time.Date(2026, 2, 2, 3, 4, 5, 0, time.UTC), Draft: true},
	}})
	resp, body := rawGet(t, base+"repos/siderolabs/talos/releases", "Authorization", "token "+token)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json; charset=utf-8" {
		t.Fatalf("status %d Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var rels []map[string]any
	if err := json.Unmarshal(body, &rels); err != nil {
		t.Fatal(err)
	}
	if len(rels) != 2 {
		t.Fatalf("%d releases with a token in the \"token\" scheme, want 2", len(rels))
	}
	draft, published := rels[0], rels[1]
	for key, want := range map[string]any{
		"tag_name": "v1.0.0", "name": "v1.0.0", "draft": false, "prerelease": false, "body": "notes",
		"created_at": "2026-01-02T03:04:05Z", "published_at": "2026-01-02T03:04:05Z",
		"html_url": "https://github.com/siderolabs/talos/releases/tag/v1.0.0", "target_commitish": "main",
	} {
		if published[key] != want {
			t.Errorf("%s = %v, want %v", key, published[key], want)
		}
	}
	if a, ok := published["assets"].([]any); !ok || len(a) != 0 {
		t.Errorf("assets = %v, want []", published["assets"])
	}
	for _, key := range []string{"published_at", "body"} {
		if v, ok := draft[key]; !ok || v != nil {
			t.Errorf("draft %s = %v (present %v), want null", key, v, ok)
		}
	}
	if draft["draft"] != true || !strings.Contains(draft["html_url"].(string), "/releases/tag/untagged-") {
		t.Errorf("draft: %v", draft)
	}
	if id, ok := published["id"].(float64); !ok || id == 0 || !strings.HasSuffix(published["url"].(string), fmt.Sprintf("/releases/%d", int64(id))) {
		t.Errorf("id %v url %v", published["id"], published["url"])
	}

	for _, tc := range []struct {
		name, path string
		header     []string
		status     int
		message    string
	}{
		{"unknown route", "users/octocat", nil, 404, "Not Found"},
		{"post", "repos/siderolabs/talos/releases", nil, 404, "Not Found"},
		{"release by id", "repos/siderolabs/talos/releases/1", nil, 404, "Not Found"},
		{"bad token", "repos/siderolabs/talos/releases", []string{"Authorization", "Bearer nope"}, 401, "Bad credentials"},
		{"unknown scheme", "repos/siderolabs/talos/releases", []string{"Authorization", "Basic " + token}, 401, "Bad credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			method := "GET"
			if tc.name == "post" {
				method = "POST"
			}
			req, _ := http.NewRequest(method, base+tc.path, nil)
			for i := 0; i+1 < len(tc.header); i += 2 {
				req.Header.Set(tc.header[i], tc.header[i+1])
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e struct{ Message, Status, DocumentationURL string }
			json.NewDecoder(resp.Body).Decode(&e)
			if resp.StatusCode != tc.status || e.Message != tc.message || e.Status != fmt.Sprint(tc.status) {
				t.Errorf("status %d %+v, want %d %q", resp.StatusCode, e, tc.status, tc.message)
			}
		})
	}
}

// conditional adds If-None-Match to every request while etag is set.
type conditional struct {
	etag string
}

func (c *conditional) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.etag != "" {
		r = r.Clone(r.Context())
		r.Header.Set("If-None-Match", c.etag)
	}
	return http.DefaultTransport.RoundTrip(r)
}

func TestConditionalRequests(t *testing.T) {
	s, base := start(t, fakegithub.Options{Releases: manyReleases(5), Token: token})
	ctx := context.Background()
	for _, tc := range []struct {
		name, tok string
		free304   bool
		newTag    string
	}{
		{"authenticated 304 is free", token, true, "v9.0.0"},
		{"unauthenticated 304 counts", "", false, "v9.1.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.ResetRateLimits()
			tr := &conditional{}
			c := gh.NewClient(&http.Client{Transport: tr})
			if tc.tok != "" {
				c = c.WithAuthToken(tc.tok)
			}
			c.BaseURL, _ = url.Parse(base)

			_, resp, err := c.Repositories.ListReleases(ctx, "siderolabs", "talos", nil)
			if err != nil {
				t.Fatal(err)
			}
			tr.etag = resp.Header.Get("ETag")
			if !strings.HasPrefix(tr.etag, `W/"`) {
				t.Fatalf("ETag %q", tr.etag)
			}
			before := resp.Rate.Remaining

			// go-github reports a 304 as an *ErrorResponse with the response
			_, resp, err = c.Repositories.ListReleases(ctx, "siderolabs", "talos", nil)
			var er *gh.ErrorResponse
			if !errors.As(err, &er) || er.Response.StatusCode != http.StatusNotModified || resp.StatusCode != http.StatusNotModified {
				t.Fatalf("conditional list: %T %v", err, err)
			}
			after := resp.Rate.Remaining
			if tc.free304 && after != before || !tc.free304 && after != before-1 {
				t.Errorf("remaining %d after 304, before %d", after, before)
			}
			if resp.Header.Get("ETag") != tr.etag {
				t.Errorf("304 ETag %q, want %q", resp.Header.Get("ETag"), tr.etag)
			}

			// If-None-Match may list several tags; comparison is weak
			header := []string{"If-None-Match", `"x", ` + strings.TrimPrefix(tr.etag, "W/")}
			if tc.tok != "" {
				header = append(header, "Authorization", "Bearer "+tc.tok)
			}
			if r, _ := rawGet(t, base+"repos/siderolabs/talos/releases", header...); r.StatusCode != 304 {
				t.Errorf("weak comparison: status %d", r.StatusCode)
			}

			// a change invalidates the ETag
			if _, err := s.AddRelease(fakegithub.Release{Tag: tc.newTag}); err != nil {
				t.Fatal(err)
			}
			rels, resp, err := c.Repositories.ListReleases(ctx, "siderolabs", "talos", nil)
			if err != nil || rels[0].GetTagName() != tc.newTag || resp.Header.Get("ETag") == tr.etag {
				t.Errorf("after a change: %v, first %s", err, rels[0].GetTagName())
			}
		})
	}

	// ETags differ per authorization, as GitHub's do
	r1, _ := rawGet(t, base+"repos/siderolabs/talos/releases")
	r2, _ := rawGet(t, base+"repos/siderolabs/talos/releases", "Authorization", "Bearer "+token)
	if r1.Header.Get("ETag") == "" || r1.Header.Get("ETag") == r2.Header.Get("ETag") {
		t.Errorf("ETags %q and %q", r1.Header.Get("ETag"), r2.Header.Get("ETag"))
	}
	if r, _ := rawGet(t, base+"repos/siderolabs/talos/releases", "If-None-Match", r2.Header.Get("ETag")); r.StatusCode != 200 {
		t.Errorf("authenticated ETag matched an unauthenticated request: %d", r.StatusCode)
	}
	reqs := s.Requests()
	if !reqs[len(reqs)-1].Conditional || reqs[len(reqs)-2].Conditional || !reqs[len(reqs)-2].Authenticated {
		t.Errorf("request log tail %+v", reqs[len(reqs)-2:])
	}
}

func TestPrimaryRateLimit(t *testing.T) {
	s, base := start(t, fakegithub.Options{Releases: manyReleases(3), Token: token, RateLimit: 3, AuthRateLimit: 5})
	ctx := context.Background()
	c := client(t, base, "")
	for i := 1; i <= 3; i++ {
		_, resp, err := c.Repositories.ListReleases(ctx, "siderolabs", "talos", nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Rate.Limit != 3 || resp.Rate.Remaining != 3-i || resp.Header.Get("X-RateLimit-Used") != fmt.Sprint(i) {
			t.Errorf("request %d: rate %+v used %s", i, resp.Rate, resp.Header.Get("X-RateLimit-Used"))
		}
		if until := time.Until(resp.Rate.Reset.Time); until < 59*time.Minute || until > time.Hour+time.Second {
			t.Errorf("reset in %v, want about an hour", until)
		}
	}
	served := s.Count("GET", "/repos/")

	// this client knows it is exhausted and does not even ask
	_, _, err := c.Repositories.ListReleases(ctx, "siderolabs", "talos", nil)
	var rle *gh.RateLimitError
	if !errors.As(err, &rle) || s.Count("GET", "/repos/") != served {
		t.Errorf("exhausted client: %T %v, %d requests served", err, err, s.Count("GET", "/repos/")-served)
	}

	// a fresh client gets GitHub's 403
	_, _, err = client(t, base, "").Repositories.ListReleases(ctx, "siderolabs", "talos", nil)
	if !errors.As(err, &rle) || rle.Response.StatusCode != 403 || !strings.HasPrefix(rle.Message, "API rate limit exceeded for 127.0.0.1.") || rle.Rate.Remaining != 0 {
		t.Errorf("fresh client: %T %v", err, err)
	}

	// authenticated callers have their own, larger budget
	_, resp, err := client(t, base, token).Repositories.ListReleases(ctx, "siderolabs", "talos", nil)
	if err != nil || resp.Rate.Limit != 5 || resp.Rate.Remaining != 4 {
		t.Errorf("authenticated: %+v, %v", resp.Rate, err)
	}

	s.ResetRateLimits()
	if _, resp, err := client(t, base, "").Repositories.ListReleases(ctx, "siderolabs", "talos", nil); err != nil || resp.Rate.Remaining != 2 {
		t.Errorf("after reset: %v, %v", resp, err)
	}
}

func TestRateWindowRollsOver(t *testing.T) {
	_, base := start(t, fakegithub.Options{RateLimit: 1, RateWindow: 300 * time.Millisecond})
	u := base + "repos/siderolabs/talos/releases"
	if r, _ := rawGet(t, u); r.StatusCode != 200 {
		t.Fatalf("first: %d", r.StatusCode)
	}
	r, body := rawGet(t, u)
	if r.StatusCode != 403 || r.Header.Get("X-RateLimit-Remaining") != "0" || !strings.Contains(string(body), "rate-limits") {
		t.Fatalf("second: %d %s", r.StatusCode, body)
	}
	time.Sleep(350 * time.Millisecond)
	if r, _ := rawGet(t, u); r.StatusCode != 200 || r.Header.Get("X-RateLimit-Remaining") != "0" {
		t.Errorf("next window: %d remaining %s", r.StatusCode, r.Header.Get("X-RateLimit-Remaining"))
	}
}

func TestSecondaryRateLimit(t *testing.T) {
	s, base := start(t, fakegithub.Options{Releases: manyReleases(3)})
	ctx := context.Background()

	s.ForceSecondaryRateLimit(http.StatusForbidden, 30*time.Second, 1)
	c := client(t, base, "")
	_, _, err := c.Repositories.ListReleases(ctx, "siderolabs", "talos", nil)
	var are *gh.AbuseRateLimitError
	if !errors.As(err, &are) || are.RetryAfter == nil || *are.RetryAfter != 30*time.Second {
		t.Fatalf("403: %T %v", err, err)
	}
	// go-github now waits out Retry-After on its own, without asking
	served := s.Count("", "")
	if _, _, err := c.Repositories.ListReleases(ctx, "siderolabs", "talos", nil); !errors.As(err, &are) || s.Count("", "") != served {
		t.Errorf("same client: %v, %d requests served", err, s.Count("", "")-served)
	}
	// the fault was for one request only
	if _, _, err := client(t, base, "").Repositories.ListReleases(ctx, "siderolabs", "talos", nil); err != nil {
		t.Errorf("after the fault: %v", err)
	}

	// go-github v62 does not recognise 429: a plain *ErrorResponse
	s.ForceSecondaryRateLimit(http.StatusTooManyRequests, 1500*time.Millisecond, 2)
	for range 2 {
		_, resp, err := client(t, base, "").Repositories.ListReleases(ctx, "siderolabs", "talos", nil)
		var er *gh.ErrorResponse
		if !errors.As(err, &er) || errors.As(err, &are) || resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "2" ||
			!strings.HasSuffix(er.DocumentationURL, "secondary-rate-limits") {
			t.Errorf("429: %T %v", err, err)
		}
	}
	if _, _, err := client(t, base, "").Repositories.ListReleases(ctx, "siderolabs", "talos", nil); err != nil {
		t.Errorf("after the faults: %v", err)
	}

	s.ForceSecondaryRateLimit(http.StatusForbidden, time.Second, 100)
	s.ForceSecondaryRateLimit(0, 0, 0)
	if _, _, err := client(t, base, "").Repositories.ListReleases(ctx, "siderolabs", "talos", nil); err != nil {
		t.Errorf("after clearing: %v", err)
	}
}

func TestStartRejectsNonLoopback(t *testing.T) {
	s := fakegithub.New(fakegithub.Options{Addr: "0.0.0.0:0"})
	if _, err := s.Start(); err == nil {
		s.Close()
		t.Error("Start listened on a non-loopback address")
	}
}
