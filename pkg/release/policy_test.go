package release

import (
	"slices"
	"strings"
	"testing"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakegithub"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// rels builds releases newest first from tags; a trailing "!" flags a
// release as a prerelease on GitHub.
func rels(t *testing.T, tags ...string) []Release {
	t.Helper()
	var out []Release
	for _, tag := range tags {
		flagged := strings.HasSuffix(tag, "!")
		v, err := talos.ParseVersion(strings.TrimSuffix(tag, "!"))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, Release{Version: v, Prerelease: flagged || v.Prerelease()})
	}
	return out
}

func versions(rs []Release) string {
	var s []string
	for _, r := range rs {
		s = append(s, r.Version.String())
	}
	return strings.Join(s, " ")
}

func mustPolicy(t *testing.T, minors int, all, pre bool, min string) Policy {
	t.Helper()
	p, err := NewPolicy(minors, all, pre, min)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEligible(t *testing.T) {
	tests := []struct {
		name string
		p    Policy
		tag  string
		want bool
	}{
		{"final", mustPolicy(t, 2, false, false, ""), "v1.13.9", true},
		{"prerelease by suffix", mustPolicy(t, 2, false, false, ""), "v1.14.0-rc.1", false},
		{"prerelease by flag", mustPolicy(t, 2, false, false, ""), "v1.13.9!", false},
		{"prerelease enabled", mustPolicy(t, 2, false, true, ""), "v1.14.0-rc.1", true},
		{"flagged, enabled", mustPolicy(t, 2, false, true, ""), "v1.13.9!", true},
		{"at minimum", mustPolicy(t, 2, false, false, "v1.12.3"), "v1.12.3", true},
		{"below minimum", mustPolicy(t, 2, false, false, "v1.12.3"), "v1.12.2", false},
		{"prerelease of the minimum", mustPolicy(t, 2, false, true, "v1.14.0"), "v1.14.0-rc.1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.Eligible(rels(t, tt.tag)[0]); got != tt.want {
				t.Errorf("Eligible(%s) = %v, want %v", tt.tag, got, tt.want)
			}
		})
	}
}

func TestNewPolicyRejectsBadMinimum(t *testing.T) {
	if _, err := NewPolicy(2, false, false, "1.12"); err == nil {
		t.Error("NewPolicy accepted minimum 1.12")
	}
}

func TestTrack(t *testing.T) {
	// Newest first, as GitHub lists them: v1.12 patches go on after v1.13.0.
	history := []string{"v1.14.0-beta.1", "v1.14.0-alpha.0", "v1.13.2", "v1.12.4", "v1.13.1", "v1.13.0",
		"v1.13.0-rc.0", "v1.12.3", "v1.11.9", "v1.12.2", "v1.12.1", "v1.12.0", "v1.11.8", "v1.11.0"}
	tests := []struct {
		name string
		p    Policy
		tags []string
		want string
	}{
		{"newest patch of two minors", mustPolicy(t, 2, false, false, ""), history, "v1.13.2 v1.12.4"},
		{"one minor", mustPolicy(t, 1, false, false, ""), history, "v1.13.2"},
		{"three minors", mustPolicy(t, 3, false, false, ""), history, "v1.13.2 v1.12.4 v1.11.9"},
		{"more minors than exist", mustPolicy(t, 9, false, false, ""), history, "v1.13.2 v1.12.4 v1.11.9"},
		{"every patch", mustPolicy(t, 2, true, false, ""), history,
			"v1.13.2 v1.13.1 v1.13.0 v1.12.4 v1.12.3 v1.12.2 v1.12.1 v1.12.0"},
		{"minimum inside a line", mustPolicy(t, 2, true, false, "v1.12.3"), history,
			"v1.13.2 v1.13.1 v1.13.0 v1.12.4 v1.12.3"},
		{"minimum drops a line", mustPolicy(t, 2, false, false, "v1.13.0"), history, "v1.13.2"},
		{"prereleases: upcoming line on top of two", mustPolicy(t, 2, false, true, ""), history,
			"v1.14.0-beta.1 v1.13.2 v1.12.4"},
		{"prereleases superseded by a final are not tracked", mustPolicy(t, 1, true, true, ""),
			[]string{"v1.13.1", "v1.13.0", "v1.13.0-rc.0"}, "v1.13.1 v1.13.0"},
		{"patch prerelease newer than the line's patches", mustPolicy(t, 1, false, true, ""),
			[]string{"v1.13.2-rc.0", "v1.13.1"}, "v1.13.2-rc.0 v1.13.1"},
		{"mislabelled prerelease is judged by its suffix", mustPolicy(t, 2, false, false, ""),
			[]string{"v1.12.0-rc.0", "v1.11.3"}, "v1.11.3"},
		{"flagged prerelease with a final tag", mustPolicy(t, 1, false, false, ""),
			[]string{"v1.13.3!", "v1.13.2"}, "v1.13.2"},
		{"nothing eligible", mustPolicy(t, 2, false, false, ""), []string{"v1.14.0-rc.1"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := versions(tt.p.Track(rels(t, tt.tags...))); got != tt.want {
				t.Errorf("Track = %q, want %q", got, tt.want)
			}
		})
	}
}

// talosHistory is the emulator's realistic release history, published and
// semver only, newest first.
func talosHistory(t *testing.T) []Release {
	t.Helper()
	scenario := fakegithub.TalosReleases()
	slices.Reverse(scenario)
	var out []Release
	for _, r := range scenario {
		v, err := talos.ParseVersion(r.Tag)
		if r.Draft || err != nil {
			continue
		}
		out = append(out, Release{Version: v, Prerelease: r.Prerelease || v.Prerelease()})
	}
	return out
}

// TestCoveredNeverChangesTheResult checks the paging rule on the realistic
// history: whenever a prefix is covered, tracking it gives what tracking
// everything gives.
func TestCoveredNeverChangesTheResult(t *testing.T) {
	all := talosHistory(t)
	policies := []Policy{
		mustPolicy(t, 1, false, false, ""), mustPolicy(t, 2, false, false, ""), mustPolicy(t, 2, true, false, ""),
		mustPolicy(t, 2, false, true, ""), mustPolicy(t, 3, true, true, ""), mustPolicy(t, 2, false, false, "v1.12.5"),
		mustPolicy(t, 9, false, false, ""),
	}
	for _, p := range policies {
		want := versions(p.Track(all))
		stopped := len(all)
		for n := 0; n <= len(all); n++ {
			if p.Covered(all[:n]) {
				stopped = min(stopped, n)
				if got := versions(p.Track(all[:n])); got != want {
					t.Errorf("policy %+v: covered after %d releases but tracks %q, want %q", p, n, got, want)
				}
			}
		}
		if p.Minors == 2 && !p.AllPatches && p.Min == nil && stopped == len(all) {
			t.Errorf("policy %+v never stops early", p)
		}
		if p.Minors == 9 && stopped != len(all) {
			t.Errorf("policy %+v stopped at %d of %d with fewer lines than tracked", p, stopped, len(all))
		}
	}
}
