package fakegithub_test

import (
	"regexp"
	"slices"
	"testing"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakefactory"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakegithub"
)

func TestTalosReleases(t *testing.T) {
	rels := fakegithub.TalosReleases()
	semver := regexp.MustCompile(`^v\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$`)
	var published, drafts, odd []string
	created := map[string]fakegithub.Release{}
	for i, r := range rels {
		if i > 0 && r.CreatedAt.Before(rels[i-1].CreatedAt) {
			t.Errorf("%s is listed after a newer release", r.Tag)
		}
		created[r.Tag] = r
		switch {
		case r.Draft:
			drafts = append(drafts, r.Tag)
		case !semver.MatchString(r.Tag):
			odd = append(odd, r.Tag)
		default:
			published = append(published, r.Tag)
		}
		if m := semver.FindStringSubmatch(r.Tag); r.Prerelease && (m == nil || m[1] == "") {
			t.Errorf("%s flagged as prerelease without a suffix", r.Tag)
		}
	}
	if !slices.Equal(drafts, []string{"v1.13.10"}) || !slices.Equal(odd, []string{"v1.9"}) {
		t.Errorf("drafts %v, odd tags %v", drafts, odd)
	}
	want := fakefactory.DefaultVersions()
	slices.Sort(want)
	slices.Sort(published)
	if !slices.Equal(published, want) {
		t.Errorf("published semver tags\n%v\nwant fakefactory.DefaultVersions()\n%v", published, want)
	}
	if created["v1.11.0-rc.0"].Prerelease || !created["v1.12.0-rc.0"].Prerelease || !created["v1.14.0-beta.1"].Prerelease {
		t.Error("prerelease flags: want only v1.11.0-rc.0 mislabelled")
	}
	// patches of the previous minor keep coming after the next minor's .0
	if !created["v1.12.8"].CreatedAt.After(created["v1.13.0"].CreatedAt) {
		t.Error("v1.12.8 is not newer than v1.13.0")
	}
	if len(rels) < 50 {
		t.Errorf("only %d releases", len(rels))
	}
	// the server takes the scenario as is
	s := fakegithub.New(fakegithub.Options{Releases: rels})
	if got := s.Releases(); len(got) != len(rels) || got[0].Tag != "v1.13.10" || got[len(got)-1].Tag != "v1.9" {
		t.Errorf("server order: first %s last %s", got[0].Tag, got[len(got)-1].Tag)
	}
}
