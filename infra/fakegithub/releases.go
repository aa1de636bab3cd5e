package fakegithub

import (
	"cmp"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	gh "github.com/google/go-github/v62/github"
)

// Release is a release of the emulated repository.
type Release struct {
	ID              int64 // assigned when zero
	Tag             string
	Name            string // defaults to Tag
	Body            string
	TargetCommitish string // defaults to "main"
	Draft           bool
	Prerelease      bool
	CreatedAt       time.Time // defaults to now
	PublishedAt     time.Time // zero for drafts; defaults to CreatedAt otherwise
}

// ErrNotFound is returned by the release setters for an unknown tag.
var ErrNotFound = errors.New("release not found")

// AddRelease adds a release while serving and returns it with defaults
// filled in. Tags are unique.
func (s *Server) AddRelease(r Release) (Release, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addLocked(r, time.Now())
}

func (s *Server) addLocked(r Release, now time.Time) (Release, error) {
	if r.Tag == "" {
		return Release{}, errors.New("add release: empty tag")
	}
	if s.indexLocked(r.Tag) >= 0 {
		return Release{}, fmt.Errorf("add release %s: tag exists", r.Tag)
	}
	if r.ID == 0 {
		s.nextID++
		r.ID = s.nextID
	}
	if r.Name == "" {
		r.Name = r.Tag
	}
	if r.TargetCommitish == "" {
		r.TargetCommitish = "main"
	}
	if r.CreatedAt.IsZero() {
		r.CreatedAt = now
	}
	r.CreatedAt = r.CreatedAt.UTC().Truncate(time.Second)
	switch {
	case r.Draft:
		r.PublishedAt = time.Time{}
	case r.PublishedAt.IsZero():
		r.PublishedAt = r.CreatedAt
	default:
		r.PublishedAt = r.PublishedAt.UTC().Truncate(time.Second)
	}
	s.releases = append(s.releases, r)
	// newest first, as GitHub lists them
	slices.SortStableFunc(s.releases, func(a, b Release) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return cmp.Compare(b.ID, a.ID)
	})
	return r, nil
}

// PublishRelease publishes a draft now, as the Talos release process does
// some time after creating it.
func (s *Server) PublishRelease(tag string) (Release, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.indexLocked(tag)
	if i < 0 {
		return Release{}, fmt.Errorf("publish release %s: %w", tag, ErrNotFound)
	}
	r := &s.releases[i]
	if !r.Draft {
		return Release{}, fmt.Errorf("publish release %s: not a draft", tag)
	}
	r.Draft = false
	r.PublishedAt = time.Now().UTC().Truncate(time.Second)
	return *r, nil
}

// RemoveRelease deletes a release.
func (s *Server) RemoveRelease(tag string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.indexLocked(tag)
	if i < 0 {
		return fmt.Errorf("remove release %s: %w", tag, ErrNotFound)
	}
	s.releases = slices.Delete(s.releases, i, i+1)
	return nil
}

// Releases returns all releases, drafts included, newest first.
func (s *Server) Releases() []Release {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.releases)
}

func (s *Server) indexLocked(tag string) int {
	return slices.IndexFunc(s.releases, func(r Release) bool { return r.Tag == tag })
}

// releaseJSON is a release as GitHub encodes it. go-github's type omits empty
// fields; GitHub sends published_at and body as null and assets as [].
type releaseJSON struct {
	*gh.RepositoryRelease
	Body        *string            `json:"body"`
	PublishedAt *gh.Timestamp      `json:"published_at"`
	Assets      []*gh.ReleaseAsset `json:"assets"`
}

// encode renders r as GitHub does; api is the API base URL (for url fields).
func (s *Server) encode(r Release, api string) releaseJSON {
	repoAPI := fmt.Sprintf("%s/repos/%s/%s", api, s.opts.Owner, s.opts.Repo)
	self := fmt.Sprintf("%s/releases/%d", repoAPI, r.ID)
	html := fmt.Sprintf("https://github.com/%s/%s/releases/tag/%s", s.opts.Owner, s.opts.Repo, r.Tag)
	if r.Draft {
		// drafts have no public page; GitHub names them untagged-<hash>
		sum := sha256.Sum256([]byte(r.Tag))
		html = fmt.Sprintf("https://github.com/%s/%s/releases/tag/untagged-%x", s.opts.Owner, s.opts.Repo, sum[:10])
	}
	node := "RE_kwDO" + base64.RawURLEncoding.EncodeToString(binary.BigEndian.AppendUint64(nil, uint64(r.ID)))
	out := releaseJSON{
		RepositoryRelease: &gh.RepositoryRelease{
			ID:              gh.Int64(r.ID),
			NodeID:          gh.String(node),
			TagName:         gh.String(r.Tag),
			TargetCommitish: gh.String(r.TargetCommitish),
			Name:            gh.String(r.Name),
			Draft:           gh.Bool(r.Draft),
			Prerelease:      gh.Bool(r.Prerelease),
			CreatedAt:       &gh.Timestamp{Time: r.CreatedAt},
			URL:             gh.String(self),
			HTMLURL:         gh.String(html),
			AssetsURL:       gh.String(self + "/assets"),
			UploadURL:       gh.String(strings.Replace(self, api, "https://uploads.github.com", 1) + "/assets{?name,label}"),
			TarballURL:      gh.String(repoAPI + "/tarball/" + r.Tag),
			ZipballURL:      gh.String(repoAPI + "/zipball/" + r.Tag),
		},
		Assets: []*gh.ReleaseAsset{},
	}
	if r.Body != "" {
		out.Body = gh.String(r.Body)
	}
	if !r.Draft {
		out.PublishedAt = &gh.Timestamp{Time: r.PublishedAt}
	}
	return out
}
