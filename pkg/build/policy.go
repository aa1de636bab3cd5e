package build

import (
	"fmt"
	"slices"
	"strings"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// policyProblems checks a syntactically valid request against what the
// deployment is configured to build. A snapshot carries os=talos and its
// architecture whatever it holds, and consumers boot the most recent such
// snapshot, so whoever may invoke the Builder could otherwise put any
// schematic, or an old or prerelease version, in front of them. A request
// may name only a configured schematic (Options.Schematics) and a version
// the release policy lets the Poller track at all (release.Policy.Eligible):
// not below MIN_VERSION, and a prerelease only with TRACK_PRERELEASES. Which
// of those the Poller tracks (TRACK_MINORS) does not matter: an older patch
// of a line is a legitimate manual build. A prerelease is judged by its
// suffix; the Builder does not ask GitHub how the release is flagged.
func (b *Builder) policyProblems(r Request) []string {
	var p []string
	if r.Schematic != "" && !slices.Contains(b.schematics(), r.Schematic) {
		p = append(p, fmt.Sprintf("schematic: %s is not a configured schematic", r.Schematic))
	}
	p = append(p, b.versionProblems(r.Version)...)
	if len(p) > 0 {
		p = append(p, b.allowed())
	}
	return p
}

// versionProblems checks a version against MIN_VERSION and
// TRACK_PRERELEASES.
func (b *Builder) versionProblems(version string) []string {
	var p []string
	v, err := talos.ParseVersion(version)
	if err != nil {
		return append(p, fmt.Sprintf("version: %v", err))
	}
	if v.Prerelease() && !b.opts.Prereleases {
		p = append(p, fmt.Sprintf("version: %s is a prerelease and prereleases are not tracked", version))
	}
	if b.opts.MinVersion != "" {
		switch min, err := talos.ParseVersion(b.opts.MinVersion); {
		case err != nil:
			p = append(p, fmt.Sprintf("MIN_VERSION: %v", err))
		case v.Compare(min) < 0:
			p = append(p, fmt.Sprintf("version: %s is below MIN_VERSION %s", version, b.opts.MinVersion))
		}
	}
	return p
}

// allowed says what a request may name, for the error message.
func (b *Builder) allowed() string {
	versions := "any version"
	if b.opts.MinVersion != "" {
		versions = "versions from MIN_VERSION " + b.opts.MinVersion + " on"
	}
	pre := "no prereleases (TRACK_PRERELEASES=false)"
	if b.opts.Prereleases {
		pre = "prereleases too (TRACK_PRERELEASES=true)"
	}
	return fmt.Sprintf("allowed: the configured schematics %s (SCHEMATIC_IDS, SCHEMATIC_CUSTOMIZATION), %s, %s",
		strings.Join(b.schematics(), ", "), versions, pre)
}
