package build

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/gpt"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/gpt/gpttest"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/ssh"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// fakeCloud is an in-memory project for unit tests of the step machine.
// The end-to-end tests run the real client against infra/fakehcloud.
type fakeCloud struct {
	mu      sync.Mutex
	nextID  int64
	servers map[int64]*hcloud.Server
	keys    map[int64]*hcloud.SSHKey
	images  map[int64]*hcloud.Image
	calls   []string
	// noCapacity lists "type/location" pairs that fail with resource_unavailable.
	noCapacity map[string]bool
	// serverTypes is what ServerTypes lists; creates record their options.
	serverTypes []*hcloud.ServerType
	creates     []cloud.CreateServerOpts
	// snapshotsReadyAfter is how many listings see a snapshot "creating".
	snapshotsReadyAfter int
	imagePolls          map[int64]int
	failOn              map[string]error
	// beforeServerByName runs (locked) before each lookup: another
	// invocation's doing.
	beforeServerByName func()
	// afterCall runs (locked) after each call is recorded.
	afterCall func(name string)
}

func newFakeCloud() *fakeCloud {
	return &fakeCloud{nextID: 100, servers: map[int64]*hcloud.Server{}, keys: map[int64]*hcloud.SSHKey{},
		images: map[int64]*hcloud.Image{}, noCapacity: map[string]bool{}, imagePolls: map[int64]int{},
		failOn: map[string]error{}, serverTypes: catalog()}
}

// catalog is the server types of FACTS.md: 40 GB x86 cx23 (EU) and cpx11
// (US; deprecated in the EU), 80 GB cpx22; 40 GB arm cax11, 80 GB cax21.
func catalog() []*hcloud.ServerType {
	eu, us := []string{"fsn1", "nbg1", "hel1"}, []string{"ash", "hil"}
	gone := &hcloud.DeprecationInfo{Announced: time.Now().Add(-90 * 24 * time.Hour), UnavailableAfter: time.Now().Add(-24 * time.Hour)}
	return []*hcloud.ServerType{
		serverType("cx23", hcloud.ArchitectureX86, 40, locations(eu, nil)),
		serverType("cpx11", hcloud.ArchitectureX86, 40, append(locations(eu, gone), locations(us, nil)...)),
		serverType("cpx22", hcloud.ArchitectureX86, 80, locations(append(eu, us...), nil)),
		serverType("cax11", hcloud.ArchitectureARM, 40, locations(eu, nil)),
		serverType("cax21", hcloud.ArchitectureARM, 80, locations(eu, nil)),
	}
}

func serverType(name string, arch hcloud.Architecture, disk int, locs []hcloud.ServerTypeLocation) *hcloud.ServerType {
	return &hcloud.ServerType{Name: name, Architecture: arch, Disk: disk, Locations: locs}
}

func locations(names []string, deprecation *hcloud.DeprecationInfo) []hcloud.ServerTypeLocation {
	var out []hcloud.ServerTypeLocation
	for _, n := range names {
		out = append(out, hcloud.ServerTypeLocation{Location: &hcloud.Location{Name: n}, Available: deprecation == nil,
			DeprecatableResource: hcloud.DeprecatableResource{Deprecation: deprecation}})
	}
	return out
}

func (f *fakeCloud) ServerTypes(context.Context) ([]*hcloud.ServerType, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("ServerTypes"); err != nil {
		return nil, err
	}
	return f.serverTypes, nil
}

func (f *fakeCloud) call(name string) error {
	f.calls = append(f.calls, name)
	if f.afterCall != nil {
		f.afterCall(name)
	}
	return f.failOn[name]
}

func (f *fakeCloud) id() int64 { f.nextID++; return f.nextID }

func (f *fakeCloud) ServerByName(_ context.Context, name string) (*hcloud.Server, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("ServerByName"); err != nil {
		return nil, err
	}
	if f.beforeServerByName != nil {
		f.beforeServerByName()
	}
	for _, s := range f.servers {
		if s.Name == name {
			c := *s
			c.Labels = maps.Clone(s.Labels)
			return &c, nil
		}
	}
	return nil, nil
}

func (f *fakeCloud) CreateServer(_ context.Context, o cloud.CreateServerOpts) (*hcloud.Server, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates = append(f.creates, o)
	if err := f.call("CreateServer"); err != nil {
		return nil, err
	}
	if f.noCapacity[o.ServerType+"/"+o.Location] {
		return nil, hcloud.Error{Code: hcloud.ErrorCodeResourceUnavailable, Message: "error during placement"}
	}
	for _, s := range f.servers {
		if s.Name == o.Name {
			return nil, hcloud.Error{Code: hcloud.ErrorCodeUniquenessError, Message: "server name is already used"}
		}
	}
	id := f.id()
	s := &hcloud.Server{ID: id, Name: o.Name, Status: hcloud.ServerStatusOff, Labels: maps.Clone(o.Labels),
		ServerType: &hcloud.ServerType{Name: o.ServerType}, Location: &hcloud.Location{Name: o.Location},
		PublicNet: hcloud.ServerPublicNet{IPv4: hcloud.ServerPublicNetIPv4{IP: net.IPv4(127, 0, 0, 1)}}, Created: time.Now()}
	f.servers[id] = s
	c := *s
	return &c, nil
}

func (f *fakeCloud) SetServerLabels(_ context.Context, s *hcloud.Server, labels map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("SetServerLabels:" + labels[label.Step]); err != nil {
		return err
	}
	if cur := f.servers[s.ID]; cur != nil {
		cur.Labels = maps.Clone(labels)
	}
	s.Labels = labels
	return nil
}

func (f *fakeCloud) DeleteServer(_ context.Context, s *hcloud.Server) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("DeleteServer"); err != nil {
		return err
	}
	delete(f.servers, s.ID)
	return nil
}

func (f *fakeCloud) EnableRescue(_ context.Context, s *hcloud.Server, k *hcloud.SSHKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.keys[k.ID] == nil {
		return fmt.Errorf("enable rescue: key %d does not exist", k.ID)
	}
	return f.call("EnableRescue")
}

func (f *fakeCloud) Boot(_ context.Context, s *hcloud.Server) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("Boot"); err != nil {
		return err
	}
	f.servers[s.ID].Status = hcloud.ServerStatusRunning
	s.Status = hcloud.ServerStatusRunning
	return nil
}

func (f *fakeCloud) PowerOff(_ context.Context, s *hcloud.Server) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("PowerOff"); err != nil {
		return err
	}
	f.servers[s.ID].Status = hcloud.ServerStatusOff
	s.Status = hcloud.ServerStatusOff
	return nil
}

func (f *fakeCloud) CreateSnapshot(_ context.Context, s *hcloud.Server, desc string, labels map[string]string) (*hcloud.Image, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("CreateSnapshot"); err != nil {
		return nil, err
	}
	img := &hcloud.Image{ID: f.id(), Type: hcloud.ImageTypeSnapshot, Status: hcloud.ImageStatusCreating,
		Description: desc, Labels: maps.Clone(labels), Created: time.Now()}
	f.images[img.ID] = img
	c := *img
	return &c, nil
}

func (f *fakeCloud) Snapshots(_ context.Context, selector string) ([]*hcloud.Image, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("Snapshots"); err != nil {
		return nil, err
	}
	var out []*hcloud.Image
	for id, img := range f.images {
		if !matches(img.Labels, selector) {
			continue
		}
		f.imagePolls[id]++
		if img.Status == hcloud.ImageStatusCreating && f.imagePolls[id] > f.snapshotsReadyAfter {
			img.Status = hcloud.ImageStatusAvailable
		}
		c := *img
		out = append(out, &c)
	}
	return out, nil
}

// matches understands the k=v and !k terms the builder uses.
func matches(labels map[string]string, selector string) bool {
	for _, term := range strings.Split(selector, ",") {
		if k, ok := strings.CutPrefix(term, "!"); ok {
			if _, has := labels[k]; has {
				return false
			}
			continue
		}
		k, v, _ := strings.Cut(term, "=")
		if labels[k] != v {
			return false
		}
	}
	return true
}

func (f *fakeCloud) DeleteImage(_ context.Context, img *hcloud.Image) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("DeleteImage"); err != nil {
		return err
	}
	delete(f.images, img.ID)
	return nil
}

func (f *fakeCloud) SetImageLabels(_ context.Context, img *hcloud.Image, labels map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("SetImageLabels"); err != nil {
		return err
	}
	if cur := f.images[img.ID]; cur != nil {
		cur.Labels = maps.Clone(labels)
	}
	return nil
}

func (f *fakeCloud) CreateSSHKey(_ context.Context, name, pub string, labels map[string]string) (*hcloud.SSHKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	call := "CreateSSHKey"
	if labels[label.Role] == label.RoleFailure {
		call += ":failure"
	}
	if err := f.call(call); err != nil {
		return nil, err
	}
	for _, k := range f.keys {
		if k.Name == name {
			return nil, hcloud.Error{Code: hcloud.ErrorCodeUniquenessError, Message: "SSH key with the same name already exists"}
		}
	}
	k := &hcloud.SSHKey{ID: f.id(), Name: name, PublicKey: pub, Labels: maps.Clone(labels)}
	f.keys[k.ID] = k
	c := *k
	return &c, nil
}

func (f *fakeCloud) SSHKeyByName(_ context.Context, name string) (*hcloud.SSHKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("SSHKeyByName"); err != nil {
		return nil, err
	}
	for _, k := range f.keys {
		if k.Name == name {
			c := *k
			c.Labels = maps.Clone(k.Labels)
			return &c, nil
		}
	}
	return nil, nil
}

func (f *fakeCloud) SetSSHKeyLabels(_ context.Context, k *hcloud.SSHKey, labels map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("SetSSHKeyLabels"); err != nil {
		return err
	}
	if cur := f.keys[k.ID]; cur != nil {
		cur.Labels = maps.Clone(labels)
	}
	return nil
}

func (f *fakeCloud) DeleteSSHKey(_ context.Context, k *hcloud.SSHKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("DeleteSSHKey"); err != nil {
		return err
	}
	delete(f.keys, k.ID)
	return nil
}

// counts counts what a build leaves: servers, keys other than failure
// records (record tells those), and images.
func (f *fakeCloud) counts() (servers, keys, images int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range f.keys {
		if k.Labels[label.Role] != label.RoleFailure {
			keys++
		}
	}
	return len(f.servers), keys, len(f.images)
}

// record returns the failure record of t, if there is one.
func (f *fakeCloud) record(t Target) (FailureRecord, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range f.keys {
		if rec, ok := ParseFailureRecord(k); ok && rec.Target == t {
			return rec, true
		}
	}
	return FailureRecord{}, false
}

func (f *fakeCloud) callLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// fakeFactory serves every target whose version is in versions.
// fakeFactory serves versions; those it is building time out.
type fakeFactory struct{ versions, building map[string]bool }

func (f fakeFactory) Find(_ context.Context, schematic, version, arch string) (talos.Image, error) {
	if f.building[version] {
		return talos.Image{}, &talos.BuildingError{Version: version, Arch: arch, Schematic: schematic, Compression: talos.Zstd, Waited: time.Second}
	}
	if !f.versions[version] {
		return talos.Image{}, &talos.NotAvailableError{Version: version, Arch: arch, Schematic: schematic}
	}
	return talos.Image{URL: "http://127.0.0.1:1/image/" + schematic + "/" + version + "/hcloud-" + arch + ".raw.zst",
		Compression: talos.Zstd, Size: 100}, nil
}

// fakeRemote answers the install script, and the disk size and reads that
// verify the written disk from table, a disk image.
type fakeRemote struct {
	mu       sync.Mutex
	commands []string // each with its stdin, if any, after a newline
	failRun  error    // what the install script returns
	table    []byte
}

func (r *fakeRemote) RunStdin(_ context.Context, cmd string, stdin io.Reader, stdout io.Writer) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := cmd
	if stdin != nil {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return err
		}
		rec += "\n" + string(b)
	}
	r.commands = append(r.commands, rec)
	switch cmd {
	case scriptCommand:
		return r.failRun
	case diskSizeCommand:
		_, err := fmt.Fprintln(stdout, len(r.table))
		return err
	}
	var skip, count int
	if n, err := fmt.Sscanf(cmd, readCommand, &skip, &count); err != nil || n != 2 {
		return fmt.Errorf("fake rescue system: unexpected command %q", cmd)
	}
	start := min(skip*gpt.SectorSize, len(r.table))
	_, err := stdout.Write(r.table[start:min(start+count*gpt.SectorSize, len(r.table))])
	return err
}

func (r *fakeRemote) Close() error { return nil }

// talosTable is the disk of a v1.13 amd64 Talos image.
var talosTable = gpttest.Image(8<<20, gpttest.Layout("EFI", "BIOS", "BOOT", "META"))

// tableWithoutMETA is a GPT disk that is no Talos image.
var tableWithoutMETA = gpttest.Image(8<<20, gpttest.Layout("EFI", "BIOS", "BOOT"))

// mbrDisk returns a disk with an MBR partition table: one Linux partition.
func mbrDisk() []byte {
	d := make([]byte, 8<<20)
	rec := d[446:462]
	rec[4] = 0x83
	binary.LittleEndian.PutUint32(rec[8:12], 2048)
	binary.LittleEndian.PutUint32(rec[12:16], 8192)
	d[510], d[511] = 0x55, 0xAA
	return d
}

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

func testBuilder(fc *fakeCloud, remote *fakeRemote, cont Continuer, o Options) *Builder {
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
		Cloud:   fc,
		Factory: fakeFactory{versions: map[string]bool{"v1.13.9": true, "v1.12.5": true}},
		Dial: func(context.Context, string, *ssh.Key, *slog.Logger) (Remote, error) {
			return remote, nil
		},
		Continuer: cont,
		Logger:    slog.New(slog.DiscardHandler),
	}, o)
	b.pollWait = time.Millisecond
	return b
}

func cloudOpts(labels map[string]string) cloud.CreateServerOpts {
	return cloud.CreateServerOpts{Name: target.Name(""), ServerType: "cx23", Location: "fsn1", Image: "debian-12", Labels: labels}
}
