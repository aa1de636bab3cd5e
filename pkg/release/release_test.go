package release

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"testing"
	"time"

	gogithub "github.com/google/go-github/v62/github"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakegithub"
)

func startGitHub(t *testing.T, o fakegithub.Options) *fakegithub.Server {
	t.Helper()
	if o.Releases == nil {
		o.Releases = fakegithub.TalosReleases()
	}
	s := fakegithub.New(o)
	if _, err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newLister(t *testing.T, o Options) *Lister {
	t.Helper()
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	l, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func tags(rs []Release) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Version.String())
	}
	return out
}

func TestListFilters(t *testing.T) {
	for _, auth := range []bool{false, true} {
		t.Run(map[bool]string{false: "anonymous", true: "token"}[auth], func(t *testing.T) {
			o := fakegithub.Options{}
			lo := Options{}
			if auth {
				o.Token, lo.Token = "secret", "secret" // drafts are visible with a token
			}
			gh := startGitHub(t, o)
			lo.BaseURL = gh.URL()
			got, err := newLister(t, lo).List(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Complete || got.Requests != 1 {
				t.Errorf("Complete %v after %d requests, want one complete page", got.Complete, got.Requests)
			}
			if slices.Contains(tags(got.Releases), "v1.13.10") {
				t.Error("the draft v1.13.10 is listed")
			}
			if !slices.Equal(got.Skipped, []string{"v1.9"}) {
				t.Errorf("Skipped = %v, want [v1.9]", got.Skipped)
			}
			if len(got.Releases) != 49 {
				t.Errorf("%d releases, want the scenario's 49 published semver ones", len(got.Releases))
			}
			for _, r := range got.Releases {
				if r.Version.String() == "v1.11.0-rc.0" && !r.Prerelease {
					t.Error("v1.11.0-rc.0 (not flagged on GitHub) is not a prerelease")
				}
			}
			if got.Releases[0].Version.String() != "v1.13.9" {
				t.Errorf("first release %s, want the newest, v1.13.9", got.Releases[0].Version)
			}
		})
	}
}

func TestListStopsPagingOnceCovered(t *testing.T) {
	gh := startGitHub(t, fakegithub.Options{})
	l := newLister(t, Options{BaseURL: gh.URL(), PerPage: 5})
	p := mustPolicy(t, 2, false, false, "")
	got, err := l.List(context.Background(), p.Covered)
	if err != nil {
		t.Fatal(err)
	}
	all, err := newLister(t, Options{BaseURL: gh.URL(), PerPage: 5}).List(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Complete || got.Requests >= all.Requests {
		t.Errorf("read %d pages (complete %v) of %d", got.Requests, got.Complete, all.Requests)
	}
	if a, b := versions(p.Track(got.Releases)), versions(p.Track(all.Releases)); a != b || a != "v1.13.9 v1.12.8" {
		t.Errorf("tracked %q after stopping early, %q from everything; want v1.13.9 v1.12.8", a, b)
	}
}

func TestListConditional(t *testing.T) {
	gh := startGitHub(t, fakegithub.Options{})
	l := newLister(t, Options{BaseURL: gh.URL(), PerPage: 20})
	ctx := context.Background()
	first, err := l.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	again, err := l.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if again.NotModified != again.Requests || again.Requests != first.Requests || first.NotModified != 0 {
		t.Errorf("first %d requests (%d not modified), again %d (%d not modified)",
			first.Requests, first.NotModified, again.Requests, again.NotModified)
	}
	if !slices.Equal(tags(again.Releases), tags(first.Releases)) || !slices.Equal(again.Skipped, first.Skipped) {
		t.Error("the cached pages differ from the first listing")
	}
	if n := countConditional(gh); n != again.Requests {
		t.Errorf("%d conditional requests reached GitHub, want %d", n, again.Requests)
	}

	if _, err := gh.PublishRelease("v1.13.10"); err != nil {
		t.Fatal(err)
	}
	third, err := l.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if third.Releases[0].Version.String() != "v1.13.10" || third.NotModified == third.Requests {
		t.Errorf("after publishing v1.13.10: first %s, %d of %d not modified",
			third.Releases[0].Version, third.NotModified, third.Requests)
	}
}

func countConditional(gh *fakegithub.Server) int {
	n := 0
	for _, r := range gh.Requests() {
		if r.Conditional && r.Status == http.StatusNotModified {
			n++
		}
	}
	return n
}

func TestListRateLimited(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(*fakegithub.Server)
		opts   fakegithub.Options
		status int
	}{
		{"primary", nil, fakegithub.Options{RateLimit: 1}, http.StatusForbidden},
		{"secondary 403", func(s *fakegithub.Server) { s.ForceSecondaryRateLimit(http.StatusForbidden, time.Minute, 5) },
			fakegithub.Options{}, http.StatusForbidden},
		{"secondary 429", func(s *fakegithub.Server) { s.ForceSecondaryRateLimit(http.StatusTooManyRequests, time.Minute, 5) },
			fakegithub.Options{}, http.StatusTooManyRequests},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gh := startGitHub(t, tt.opts)
			if tt.setup != nil {
				tt.setup(gh)
			} else if _, err := newLister(t, Options{BaseURL: gh.URL()}).List(context.Background(), nil); err != nil {
				t.Fatal(err) // spends the one request
			}
			_, err := newLister(t, Options{BaseURL: gh.URL()}).List(context.Background(), nil)
			var rl *RateLimitError
			if !errors.As(err, &rl) || !IsRateLimited(err) {
				t.Fatalf("err = %v, want a *RateLimitError", err)
			}
			if rl.Status != tt.status || rl.Until.IsZero() || rl.Authenticated {
				t.Errorf("RateLimitError = %+v, want status %d, a reset time, anonymous", rl, tt.status)
			}
		})
	}
}

func TestListOtherErrors(t *testing.T) {
	gh := startGitHub(t, fakegithub.Options{Token: "secret"})
	_, err := newLister(t, Options{BaseURL: gh.URL(), Token: "wrong"}).List(context.Background(), nil)
	if err == nil || IsRateLimited(err) {
		t.Errorf("bad token: err = %v, want a plain error", err)
	}
	_, err = newLister(t, Options{BaseURL: gh.URL(), Repo: "nope"}).List(context.Background(), nil)
	if err == nil {
		t.Error("unknown repository: no error")
	}
}

func TestParse(t *testing.T) {
	gr := func(tag string, draft, pre bool) *gogithub.RepositoryRelease {
		return &gogithub.RepositoryRelease{TagName: gogithub.String(tag), Draft: gogithub.Bool(draft), Prerelease: gogithub.Bool(pre)}
	}
	rs, skipped := parse([]*gogithub.RepositoryRelease{
		gr("v1.13.10", true, false),      // draft
		gr("v1.13.9", false, false),      // final
		gr("v1.14.0-rc.1", false, false), // prerelease by suffix only
		gr("v1.13.8", false, true),       // prerelease by flag only
		gr("v1.9", false, false),         // not strict semver
		gr("1.13.7", false, false),       // no v
		gr("v1.13.07", false, false),     // leading zero
	})
	want := []struct {
		tag string
		pre bool
	}{{"v1.13.9", false}, {"v1.14.0-rc.1", true}, {"v1.13.8", true}}
	if len(rs) != len(want) {
		t.Fatalf("parsed %v, want %v", tags(rs), want)
	}
	for i, w := range want {
		if rs[i].Version.String() != w.tag || rs[i].Prerelease != w.pre {
			t.Errorf("release %d = %s (prerelease %v), want %s (%v)", i, rs[i].Version, rs[i].Prerelease, w.tag, w.pre)
		}
	}
	if !slices.Equal(skipped, []string{"v1.9", "1.13.7", "v1.13.07"}) {
		t.Errorf("skipped %v", skipped)
	}
}
