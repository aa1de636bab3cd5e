package build

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakefactory"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/ssh"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// localCloud is where a Builder unit test builds: the local Hetzner API
// (infra/fakehcloud) and Image Factory (infra/fakefactory) on loopback,
// which need no root, reached with the real clients.
type localCloud struct {
	t       *testing.T
	emu     *fakehcloud.Cloud
	api     *cloud.Client // the project as the test acts on it: not recorded
	cloud   *recorder     // the project as the Builder sees it
	factory *fakefactory.Factory
}

// Timings of the local world: actions take milliseconds, and the client's
// retries of `locked` (a server busy with an action, as after a power-on,
// which is not waited for) outlast an action many times over.
const (
	actionDuration = 2 * time.Millisecond
	pollInterval   = 2 * time.Millisecond
	retryBase      = 2 * time.Millisecond
	maxRetries     = 8
)

// factoryScale shrinks the factory's images to a few MiB: these tests only
// ask whether an image is served, and the fake remote never downloads it.
const factoryScale = 1 << 20

// newWorld starts an empty project and a factory that serves v1.13.9 and
// v1.12.5 of the known schematics.
func newLocalCloud(t *testing.T) *localCloud {
	t.Helper()
	emu := fakehcloud.New(fakehcloud.Options{ActionDuration: actionDuration, Logger: slog.New(slog.DiscardHandler)})
	url, err := emu.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	f := newFactory(t, fakefactory.Options{Versions: []string{"v1.13.9", "v1.12.5"}})
	api := cloud.New(cloud.Options{Token: fakehcloud.DefaultToken, Endpoint: url, PollInterval: pollInterval,
		RetryBase: retryBase, MaxRetries: maxRetries})
	return &localCloud{t: t, emu: emu, api: api, cloud: &recorder{c: api}, factory: f}
}

// newFactory starts a factory of o with small images.
func newFactory(t *testing.T, o fakefactory.Options) *fakefactory.Factory {
	t.Helper()
	o.Scale = factoryScale
	f := fakefactory.New(o)
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Error(err)
		}
	})
	if _, err := f.Start(); err != nil {
		t.Fatal(err)
	}
	return f
}

// testBuilder returns a Builder on w that dials remote and hands over to
// cont, with defaults for what o leaves unset.
func testBuilder(w *localCloud, remote *fakeRemote, cont Continuer, o Options) *Builder {
	if o.Architectures == nil {
		o.Architectures = []string{"amd64", "arm64"}
	}
	if o.Schematics == nil {
		o.Schematics = []string{talos.QemuGuestAgentSchematic}
	}
	if o.ServerTypes == nil {
		o.ServerTypes = map[string][]string{"amd64": {"cx23", "cpx22"}, "arm64": {"cax11"}}
	}
	if o.Locations == nil {
		o.Locations = []string{"fsn1", "nbg1"}
	}
	if o.SigningKey == nil {
		o.SigningKey = SigningKey("test-token")
	}
	b := New(Deps{
		Cloud:   w.cloud,
		Factory: &talos.Factory{BaseURL: w.factory.URL()},
		Dial: func(context.Context, string, *ssh.Key, *slog.Logger) (Remote, error) {
			return remote, nil
		},
		Continuer: cont,
		Logger:    slog.New(slog.DiscardHandler),
	}, o)
	b.pollWait = time.Millisecond
	return b
}

// recordingContinuer stands in for Lambda's asynchronous invoke: it keeps
// the requests a build hands over.
type recordingContinuer struct {
	mu   sync.Mutex
	reqs []Request
}

func (c *recordingContinuer) Continue(_ context.Context, r Request) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reqs = append(c.reqs, r)
	return nil
}

// cloudOpts describe a server of target's name.
func cloudOpts(labels map[string]string) cloud.CreateServerOpts {
	return cloud.CreateServerOpts{Name: target.Name(""), ServerType: "cx23", Location: "fsn1", Image: "debian-12", Labels: labels}
}

// createServer creates the server of target's name with labels, as
// another invocation (or someone else) did.
func (w *localCloud) createServer(labels map[string]string) *hcloud.Server {
	w.t.Helper()
	srv, err := w.api.CreateServer(context.Background(), cloudOpts(labels))
	if err != nil {
		w.t.Fatal(err)
	}
	return srv
}

// createKey creates an SSH key of a fresh key pair.
func (w *localCloud) createKey(name string, labels map[string]string) *hcloud.SSHKey {
	w.t.Helper()
	key, err := ssh.NewKey()
	if err != nil {
		w.t.Fatal(err)
	}
	k, err := w.api.CreateSSHKey(context.Background(), name, key.AuthorizedKey(), labels)
	if err != nil {
		w.t.Fatal(err)
	}
	return k
}

// createSnapshot starts a snapshot of srv under faults f, and clears the
// faults once it is started.
func (w *localCloud) createSnapshot(srv *hcloud.Server, labels map[string]string, f fakehcloud.Faults) *hcloud.Image {
	w.t.Helper()
	w.emu.SetFaults(f)
	defer w.emu.SetFaults(fakehcloud.Faults{})
	img, err := w.api.CreateSnapshot(context.Background(), srv, "", labels)
	if err != nil {
		w.t.Fatal(err)
	}
	return img
}

// addSnapshot adds a snapshot that is there already: available, unless img
// says otherwise.
func (w *localCloud) addSnapshot(img fakehcloud.Image) fakehcloud.Image {
	w.t.Helper()
	img, err := w.emu.AddImage(img)
	if err != nil {
		w.t.Fatal(err)
	}
	return img
}

// slowSnapshot is how long a snapshot slowed by Faults.SlowImages is
// created: long enough for a test's builds (a few hundred milliseconds
// under the race detector) to see it being created, short enough for the
// test to wait until it is available. The tests that wait run in parallel.
const slowSnapshot = 2 * time.Second

// awaitImage waits until image id has status: its action ended.
func (w *localCloud) awaitImage(id int64, status string) {
	w.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		img, ok := w.emu.Image(id)
		if ok && img.Status == status {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("image %d: status %q (found %v), want %s", id, img.Status, ok, status)
		}
	}
}

// awaitSnapshots waits until no snapshot is being created.
func (w *localCloud) awaitSnapshots() {
	w.t.Helper()
	for _, id := range w.snapshots() {
		if img, ok := w.emu.Image(id); ok && img.Status == string(hcloud.ImageStatusCreating) {
			w.awaitImage(id, string(hcloud.ImageStatusAvailable))
		}
	}
}

// snapshots returns the IDs of the project's snapshots, any status,
// ascending.
func (w *localCloud) snapshots() []int64 {
	var ids []int64
	for _, img := range w.emu.Images() {
		if img.Type == string(hcloud.ImageTypeSnapshot) {
			ids = append(ids, img.ID)
		}
	}
	return ids
}

// image returns snapshot id as the API shows it.
func (w *localCloud) image(id int64) *hcloud.Image {
	w.t.Helper()
	imgs, err := w.api.Snapshots(context.Background(), "")
	if err != nil {
		w.t.Fatal(err)
	}
	i := slices.IndexFunc(imgs, func(img *hcloud.Image) bool { return img.ID == id })
	if i < 0 {
		w.t.Fatalf("no snapshot %d", id)
	}
	return imgs[i]
}

// selects tells whether the API lists snapshot id under selector.
func (w *localCloud) selects(selector string, id int64) bool {
	w.t.Helper()
	imgs, err := w.api.Snapshots(context.Background(), selector)
	if err != nil {
		w.t.Fatal(err)
	}
	return slices.ContainsFunc(imgs, func(img *hcloud.Image) bool { return img.ID == id })
}

// catalog is the server types the API lists.
func (w *localCloud) catalog() []*hcloud.ServerType {
	w.t.Helper()
	ts, err := w.api.ServerTypes(context.Background())
	if err != nil {
		w.t.Fatal(err)
	}
	return ts
}

// counts counts what a build leaves: servers, keys other than failure
// records (record tells those), and snapshots.
func (w *localCloud) counts() (servers, keys, images int) {
	for _, k := range w.emu.SSHKeys() {
		if k.Labels[label.Role] != label.RoleFailure {
			keys++
		}
	}
	return len(w.emu.Servers()), keys, len(w.snapshots())
}

// record returns the failure record of t, if there is one.
func (w *localCloud) record(t Target) (FailureRecord, bool) {
	for _, k := range w.emu.SSHKeys() {
		if rec, ok := ParseFailureRecord(&hcloud.SSHKey{ID: k.ID, Name: k.Name, Labels: k.Labels}); ok && rec.Target == t {
			return rec, true
		}
	}
	return FailureRecord{}, false
}
