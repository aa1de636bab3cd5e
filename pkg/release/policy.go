package release

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// Policy decides which releases are tracked: built and kept.
type Policy struct {
	// Minors is how many of the newest release lines (v1.13, v1.12, ...)
	// with a final release are tracked.
	Minors int
	// AllPatches tracks every final patch of those lines instead of only the
	// newest one.
	AllPatches bool
	// Prereleases makes prereleases eligible. A prerelease is tracked only
	// while no final release supersedes it: the newest prerelease of a line
	// newer than every released line (in addition to the Minors lines), or
	// of a tracked line when it is newer than the line's newest patch.
	Prereleases bool
	// Min, when set, is the lowest eligible version.
	Min *talos.Version
}

// NewPolicy returns the policy of the configuration values; min may be
// empty.
func NewPolicy(minors int, allPatches, prereleases bool, min string) (Policy, error) {
	p := Policy{Minors: minors, AllPatches: allPatches, Prereleases: prereleases}
	if min != "" {
		v, err := talos.ParseVersion(min)
		if err != nil {
			return Policy{}, fmt.Errorf("minimum version: %w", err)
		}
		p.Min = &v
	}
	return p, nil
}

// Eligible tells whether the policy may track r at all: a prerelease only
// when prereleases are enabled, and nothing below the minimum.
func (p Policy) Eligible(r Release) bool {
	if r.Prerelease && !p.Prereleases {
		return false
	}
	return p.Min == nil || r.Version.Compare(*p.Min) >= 0
}

// line is the eligible releases of one major.minor, newest first.
type line struct {
	major, minor int
	finals, pres []Release
}

// lines groups the eligible releases by line, newest line first.
func (p Policy) lines(rs []Release) []*line {
	byKey := map[[2]int]*line{}
	var out []*line
	for _, r := range rs {
		if !p.Eligible(r) {
			continue
		}
		k := [2]int{r.Version.Major, r.Version.Minor}
		l := byKey[k]
		if l == nil {
			l = &line{major: k[0], minor: k[1]}
			byKey[k] = l
			out = append(out, l)
		}
		if r.Prerelease {
			l.pres = append(l.pres, r)
		} else {
			l.finals = append(l.finals, r)
		}
	}
	newestFirst := func(a, b Release) int { return b.Version.Compare(a.Version) }
	for _, l := range out {
		slices.SortFunc(l.finals, newestFirst)
		slices.SortFunc(l.pres, newestFirst)
	}
	slices.SortFunc(out, func(a, b *line) int {
		return cmp.Or(cmp.Compare(b.major, a.major), cmp.Compare(b.minor, a.minor))
	})
	return out
}

// Track returns the tracked releases, newest first.
func (p Policy) Track(rs []Release) []Release {
	var out []Release
	released := 0
	for _, l := range p.lines(rs) {
		if len(l.finals) == 0 {
			// A line in prerelease counts only above every released line.
			if released == 0 {
				out = append(out, l.pres[0])
			}
			continue
		}
		if released == p.Minors {
			break
		}
		released++
		if len(l.pres) > 0 && l.pres[0].Version.Compare(l.finals[0].Version) > 0 {
			out = append(out, l.pres[0])
		}
		if p.AllPatches {
			out = append(out, l.finals...)
		} else {
			out = append(out, l.finals[0])
		}
	}
	return out
}

// Covered tells whether rs, the first releases of the newest-first list,
// already holds everything Track would pick from the whole list, so that
// paging can stop. It relies on how Talos releases: within a line releases
// are created in version order, all patches after the line's x.y.0, and a
// newer line starts after the older line's x.y.0. So once the x.y.0 of each
// of the Minors newest released lines has been seen, no later page can
// change the result. With fewer released lines than Minors (or an x.y.0
// missing) the whole list is read.
func (p Policy) Covered(rs []Release) bool {
	zeros := map[[2]int]bool{}
	for _, r := range rs {
		if !r.Prerelease && r.Version.Patch == 0 {
			zeros[[2]int{r.Version.Major, r.Version.Minor}] = true
		}
	}
	released := 0
	for _, l := range p.lines(rs) {
		if len(l.finals) == 0 {
			continue
		}
		if !zeros[[2]int{l.major, l.minor}] {
			return false
		}
		if released++; released == p.Minors {
			return true
		}
	}
	return false
}
