package fakegithub

import (
	"fmt"
	"slices"
	"time"
)

// TalosReleases returns a realistic release history of siderolabs/talos,
// oldest first, created between early 2025 and November 2026:
//
//   - minors v1.10 to v1.13, each preceded by alpha.0, beta.0 and rc.0
//     prereleases, with patches v1.10.1–7, v1.11.1–6, v1.12.1–8, v1.13.1–9:
//     every three weeks while the minor is the newest, then monthly, so
//     patches of an older minor are created after the next minor's .0;
//   - v1.14.0-alpha.0, -beta.1 and -rc.1 (prereleases);
//   - v1.11.0-rc.0 is NOT flagged as a prerelease, a mislabelled release
//     that only its semver suffix gives away;
//   - a draft v1.13.10, created last and not published;
//   - an old release with the odd, not strictly semver tag "v1.9".
//
// The published semver tags are exactly fakefactory.DefaultVersions().
func TalosReleases() []Release {
	day := 24 * time.Hour
	date := func(s string) time.Time {
		t, err := time.Parse(time.DateOnly, s)
		if err != nil {
			panic(err)
		}
		return t.Add(14*time.Hour + 3*time.Minute) // releases happen in the afternoon, UTC
	}
	minors := []struct {
		minor, patches int
		start          time.Time
	}{
		{10, 7, date("2025-04-22")},
		{11, 6, date("2025-09-01")},
		{12, 8, date("2025-12-22")},
		{13, 9, date("2026-04-20")},
	}

	rels := []Release{{Tag: "v1.9", Name: "v1.9 (legacy tag)", CreatedAt: date("2025-02-03"), TargetCommitish: "release-1.9"}}
	for i, m := range minors {
		branch := fmt.Sprintf("release-1.%d", m.minor)
		add := func(tag string, at time.Time, pre bool) {
			rels = append(rels, Release{
				Tag: tag, Name: tag, TargetCommitish: branch, Prerelease: pre, CreatedAt: at,
				Body: fmt.Sprintf("## [Talos %s](https://github.com/siderolabs/talos/releases/tag/%s)", tag[1:], tag),
			})
		}
		add(fmt.Sprintf("v1.%d.0-alpha.0", m.minor), m.start.Add(-42*day), true)
		add(fmt.Sprintf("v1.%d.0-beta.0", m.minor), m.start.Add(-21*day), true)
		add(fmt.Sprintf("v1.%d.0-rc.0", m.minor), m.start.Add(-7*day), m.minor != 11)
		add(fmt.Sprintf("v1.%d.0", m.minor), m.start, false)

		at := m.start
		for p := 1; p <= m.patches; p++ {
			step := 21 * day
			if i+1 < len(minors) && !at.Add(step).Before(minors[i+1].start) {
				step = 30 * day // no longer the newest minor
			}
			at = at.Add(step)
			add(fmt.Sprintf("v1.%d.%d", m.minor, p), at, false)
		}
	}
	for _, pre := range []struct{ tag, at string }{
		{"v1.14.0-alpha.0", "2026-09-01"},
		{"v1.14.0-beta.1", "2026-09-22"},
		{"v1.14.0-rc.1", "2026-10-13"},
	} {
		rels = append(rels, Release{Tag: pre.tag, Name: pre.tag, TargetCommitish: "main", Prerelease: true, CreatedAt: date(pre.at)})
	}
	rels = append(rels, Release{Tag: "v1.13.10", Name: "v1.13.10", TargetCommitish: "release-1.13", Draft: true, CreatedAt: date("2026-11-09")})
	slices.SortStableFunc(rels, func(a, b Release) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return rels
}
