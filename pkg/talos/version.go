// Package talos knows Talos Linux: its versions, its releases and the Image
// Factory that serves its disk images.
package talos

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Version is a strict semantic version with a leading "v", as Talos tags its
// releases: v1.13.9, v1.14.0-beta.1. Build metadata is not accepted.
type Version struct {
	Major, Minor, Patch int
	Pre                 []string // prerelease identifiers, e.g. ["beta", "1"]
}

// A numeric identifier has no leading zero; a prerelease identifier is
// alphanumeric or hyphen (semver 2.0.0 §2, §9).
var versionRE = regexp.MustCompile(`^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)` +
	`(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?$`)

// MaxVersionLength is the longest version accepted: a version is a label
// value of its snapshot (talos_version, version), and Hetzner label values
// are at most 63 characters (Hetzner API reference, Labels; infra/README.md,
// the row on label keys and values).
const MaxVersionLength = 63

// ParseVersion parses a strict semantic version with a leading "v".
func ParseVersion(s string) (Version, error) {
	if len(s) > MaxVersionLength {
		return Version{}, fmt.Errorf("%q is %d characters long; a version is at most %d (it becomes a snapshot label value)",
			s, len(s), MaxVersionLength)
	}
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return Version{}, fmt.Errorf("%q is not a version like v1.13.9 or v1.14.0-beta.1", s)
	}
	var v Version
	var err error
	for i, p := range []*int{&v.Major, &v.Minor, &v.Patch} {
		if *p, err = strconv.Atoi(m[i+1]); err != nil {
			return Version{}, fmt.Errorf("%q: %w", s, err)
		}
	}
	if m[4] != "" {
		v.Pre = strings.Split(m[4], ".")
	}
	return v, nil
}

// String returns the canonical form, which is what ParseVersion accepted.
func (v Version) String() string {
	s := fmt.Sprintf("v%d.%d.%d", v.Major, v.Minor, v.Patch)
	if len(v.Pre) > 0 {
		s += "-" + strings.Join(v.Pre, ".")
	}
	return s
}

// Prerelease tells whether v carries a prerelease suffix (alpha, beta, rc).
func (v Version) Prerelease() bool { return len(v.Pre) > 0 }

// Line returns the release line (major.minor), e.g. "v1.13".
func (v Version) Line() string { return fmt.Sprintf("v%d.%d", v.Major, v.Minor) }

// Compare orders versions by semver precedence: -1, 0 or +1.
func (v Version) Compare(w Version) int {
	for _, d := range [...]int{v.Major - w.Major, v.Minor - w.Minor, v.Patch - w.Patch} {
		if d != 0 {
			return sign(d)
		}
	}
	switch {
	case len(v.Pre) == 0 && len(w.Pre) == 0:
		return 0
	case len(v.Pre) == 0:
		return 1 // a release ranks above its prereleases
	case len(w.Pre) == 0:
		return -1
	}
	for i := 0; i < len(v.Pre) && i < len(w.Pre); i++ {
		if c := compareIdent(v.Pre[i], w.Pre[i]); c != 0 {
			return c
		}
	}
	return sign(len(v.Pre) - len(w.Pre))
}

func compareIdent(a, b string) int {
	na, errA := strconv.Atoi(a)
	nb, errB := strconv.Atoi(b)
	switch {
	case errA == nil && errB == nil:
		return sign(na - nb)
	case errA == nil:
		return -1 // numeric identifiers rank below alphanumeric ones
	case errB == nil:
		return 1
	}
	return strings.Compare(a, b)
}

func sign(d int) int {
	switch {
	case d < 0:
		return -1
	case d > 0:
		return 1
	}
	return 0
}
