package talos

import (
	"slices"
	"strings"
	"testing"
)

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in    string
		want  string
		pre   bool
		minor string
	}{
		{"v1.13.9", "v1.13.9", false, "v1.13"},
		{"v0.0.0", "v0.0.0", false, "v0.0"},
		{"v1.14.0-alpha.0", "v1.14.0-alpha.0", true, "v1.14"},
		{"v1.14.0-beta.1", "v1.14.0-beta.1", true, "v1.14"},
		{"v1.14.0-rc.1", "v1.14.0-rc.1", true, "v1.14"},
		{"v10.200.3000", "v10.200.3000", false, "v10.200"},
		{"v1.2.3-x-y.0a", "v1.2.3-x-y.0a", true, "v1.2"},
	}
	for _, tt := range tests {
		v, err := ParseVersion(tt.in)
		if err != nil {
			t.Fatalf("ParseVersion(%q): %v", tt.in, err)
		}
		if v.String() != tt.want || v.Prerelease() != tt.pre || v.Line() != tt.minor {
			t.Errorf("ParseVersion(%q) = %s pre=%v minor=%s, want %s pre=%v minor=%s",
				tt.in, v, v.Prerelease(), v.Line(), tt.want, tt.pre, tt.minor)
		}
	}
}

func TestParseVersionRejects(t *testing.T) {
	for _, in := range []string{
		"", "1.13.9", "v1.13", "v1", "V1.13.9", "v01.13.9", "v1.013.9", "v1.13.09",
		"v1.13.9-", "v1.13.9-beta..1", "v1.13.9-beta.01", "v1.13.9+build", "v1.13.9 ",
		" v1.13.9", "v1.13.9;rm -rf /", "v1.13.9\n", "release-1.8", "v1.13.9-ß",
		"v1.13.9-" + string(make([]byte, 70)),
	} {
		if v, err := ParseVersion(in); err == nil {
			t.Errorf("ParseVersion(%q) = %s, want error", in, v)
		}
	}
}

// A version is a label value: at most 63 characters, and the error says so.
func TestParseVersionLength(t *testing.T) {
	v63 := "v1.14.0-" + strings.Repeat("a", 55)
	if _, err := ParseVersion(v63); err != nil || len(v63) != 63 {
		t.Errorf("ParseVersion(%d characters) = %v", len(v63), err)
	}
	_, err := ParseVersion(v63 + "b")
	if err == nil || !strings.Contains(err.Error(), "is 64 characters long; a version is at most 63 (it becomes a snapshot label value)") {
		t.Errorf("ParseVersion(64 characters) = %v", err)
	}
}

func TestCompareFollowsSemverPrecedence(t *testing.T) {
	// semver.org §11 example chain plus Talos-shaped versions, in ascending order.
	ordered := []string{
		"v1.0.0-alpha", "v1.0.0-alpha.1", "v1.0.0-alpha.beta", "v1.0.0-beta", "v1.0.0-beta.2",
		"v1.0.0-beta.11", "v1.0.0-rc.1", "v1.0.0", "v1.9.6", "v1.13.0-alpha.0", "v1.13.0",
		"v1.13.9", "v1.13.10", "v2.0.0",
	}
	var vs []Version
	for _, s := range ordered {
		v, err := ParseVersion(s)
		if err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	for i := range vs {
		for j := range vs {
			want := sign(i - j)
			if got := vs[i].Compare(vs[j]); got != want {
				t.Errorf("%s.Compare(%s) = %d, want %d", vs[i], vs[j], got, want)
			}
		}
	}
	shuffled := slices.Clone(vs)
	slices.Reverse(shuffled)
	slices.SortFunc(shuffled, Version.Compare)
	for i := range vs {
		if shuffled[i].String() != vs[i].String() {
			t.Fatalf("sorted[%d] = %s, want %s", i, shuffled[i], vs[i])
		}
	}
}
