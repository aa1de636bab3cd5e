package build

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
)

type recordingAnnouncer struct {
	mu        sync.Mutex
	published []Publication
	failed    []Failure
	err       error // answered to every announcement
}

func (a *recordingAnnouncer) Published(_ context.Context, p Publication) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.published = append(a.published, p)
	return a.err
}

func (a *recordingAnnouncer) Failed(_ context.Context, f Failure) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.failed = append(a.failed, f)
	return a.err
}

// TestAnnouncements: a build that publishes a snapshot announces it, with
// its labels and the time since its server was created; one that fails for
// good announces the reason. A build done already, in progress, to be
// retried, refused or held back by its failure record announces nothing.
func TestAnnouncements(t *testing.T) {
	ctx := context.Background()
	boot := func(w *localCloud) {
		w.emu.SetFaults(fakehcloud.Faults{Refuse: map[string]fakehcloud.Fault{
			"POST /v1/servers/*/actions/poweron": {Status: http.StatusInternalServerError, Code: string(hcloud.ErrorCodeServerError), Message: "boom"},
		}})
	}
	for _, tt := range []struct {
		name      string
		setup     func(w *localCloud)
		remote    func() *fakeRemote
		before    int // builds of the target before the one announced
		version   string
		state     State
		published bool
		failed    string // the announced failure's step/code; "" none
	}{
		{name: "published", state: Done, published: true},
		{name: "done already", before: 1, state: Done},
		{name: "failed for good", remote: failingRemote, state: Failed, failed: "install/download"},
		{name: "not served, at the check", version: "v9.9.9", state: Failed, failed: "check/not-served"},
		{name: "held back by its failure record", remote: failingRemote, before: 1, state: Failed},
		{name: "to be retried", setup: boot, state: InProgress},
		{name: "refused: a server of the name is not ours", setup: func(w *localCloud) {
			o := cloudOpts(map[string]string{"app": "web"})
			o.Name = target.Name("prod")
			if _, err := w.api.CreateServer(ctx, o); err != nil {
				t.Fatal(err)
			}
		}, state: Failed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newLocalCloud(t)
			if tt.setup != nil {
				tt.setup(w)
			}
			remote := &fakeRemote{table: talosTable}
			if tt.remote != nil {
				remote = tt.remote()
			}
			b := testBuilder(w, remote, nil, Options{Cluster: "prod", Labels: map[string]string{"team": "infra"},
				Failures: FailurePolicy{Backoff: time.Hour, Limit: 4}})
			// The build ends 90 s after its server was created.
			b.now = func() time.Time { return time.Now().Add(90 * time.Second) }
			tg := target
			if tt.version != "" {
				tg.Version = tt.version
			}
			for range tt.before {
				b.Build(ctx, tg, Request{})
			}
			a := &recordingAnnouncer{}
			b.announcer = a
			res := b.Build(ctx, tg, Request{})
			if res.State != tt.state {
				t.Fatalf("result %+v, want %s", res, tt.state)
			}
			if !tt.published && len(a.published) != 0 {
				t.Errorf("announced a publication: %+v", a.published)
			}
			if tt.published {
				if len(a.published) != 1 {
					t.Fatalf("%d publications announced, want 1", len(a.published))
				}
				p := a.published[0]
				img := w.image(res.SnapshotID)
				if p.Target != tg || p.Cluster != "prod" || p.SnapshotID != res.SnapshotID || p.Location != "fsn1" ||
					!maps.Equal(p.Labels, img.Labels) || p.Labels["os"] != "talos" || p.Labels["team"] != "infra" ||
					p.Labels[label.Cluster] != "prod" {
					t.Errorf("publication %+v, want snapshot %d in fsn1 with its labels %v", p, res.SnapshotID, img.Labels)
				}
				if p.Duration < 90*time.Second || p.Duration > 90*time.Second+time.Minute {
					t.Errorf("publication's duration %s, want the 90 s since the server's creation and the build's own time", p.Duration)
				}
			}
			var failed []string
			for _, f := range a.failed {
				failed = append(failed, string(f.Step)+"/"+f.Code)
				if f.Target != tg || f.Cluster != "prod" || f.Error != res.Error || f.Error == "" {
					t.Errorf("failure %+v, want the result's %+v", f, res)
				}
			}
			var want []string
			if tt.failed != "" {
				want = []string{tt.failed}
			}
			if !slices.Equal(failed, want) {
				t.Errorf("failures announced %v, want %v", failed, want)
			}
		})
	}
}

// TestAnnouncementFailureKeepsTheBuild: an announcement that cannot be
// sent is logged; the build is done (or failed) as it was.
func TestAnnouncementFailureKeepsTheBuild(t *testing.T) {
	for _, tt := range []struct {
		name   string
		remote *fakeRemote
		state  State
	}{
		{"published", &fakeRemote{table: talosTable}, Done},
		{"failed", failingRemote(), Failed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newLocalCloud(t)
			b := testBuilder(w, tt.remote, nil, Options{})
			a := &recordingAnnouncer{err: errors.New("AccessDeniedException")}
			b.announcer = a
			res := b.Build(context.Background(), target, Request{})
			if res.State != tt.state || len(a.published)+len(a.failed) != 1 {
				t.Fatalf("result %+v after %d announcements, want %s after 1", res, len(a.published)+len(a.failed), tt.state)
			}
			if tt.state == Done && !slices.Contains(w.snapshots(), res.SnapshotID) {
				t.Error("the snapshot is gone")
			}
			if s, k, _ := w.counts(); s != 0 || k != 0 {
				t.Errorf("left %d servers and %d keys", s, k)
			}
		})
	}
}
