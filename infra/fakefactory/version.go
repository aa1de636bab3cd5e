package fakefactory

import (
	"fmt"
	"regexp"
	"strings"
)

// semverRE is the regular expression suggested by semver.org. The real factory
// parses versions with blang/semver, which is as strict.
var semverRE = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)` +
	`(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?` +
	`(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$`)

// normalizeVersion returns the version with a "v" prefix. Like the real
// factory it accepts the version with or without the prefix.
func normalizeVersion(v string) (string, error) {
	bare := strings.TrimPrefix(v, "v")
	if !semverRE.MatchString(bare) {
		return "", fmt.Errorf("error parsing version: %q is not a semantic version", v)
	}
	return "v" + bare, nil
}

// DefaultVersions returns the versions a factory accepts when Options.Versions
// is empty: v1.10.0–v1.10.7, v1.11.0–v1.11.6, v1.12.0–v1.12.8, v1.13.0–v1.13.9,
// the alpha.0, beta.0 and rc.0 prereleases of each of these minors and
// v1.14.0-alpha.0, -beta.1 and -rc.1. These are the published semver tags of
// the GitHub emulator's TalosReleases scenario.
func DefaultVersions() []string {
	minors := []struct{ minor, patches int }{{10, 7}, {11, 6}, {12, 8}, {13, 9}}
	var vs []string
	for _, m := range minors {
		for _, pre := range []string{"alpha.0", "beta.0", "rc.0"} {
			vs = append(vs, fmt.Sprintf("v1.%d.0-%s", m.minor, pre))
		}
		for p := 0; p <= m.patches; p++ {
			vs = append(vs, fmt.Sprintf("v1.%d.%d", m.minor, p))
		}
	}
	return append(vs, "v1.14.0-alpha.0", "v1.14.0-beta.1", "v1.14.0-rc.1")
}
