package build

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/metrics"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/ssh"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// Cloud is what the builder needs of the Hetzner project; *cloud.Client.
type Cloud interface {
	ServerByName(ctx context.Context, name string) (*hcloud.Server, error)
	ServerTypes(ctx context.Context) ([]*hcloud.ServerType, error)
	CreateServer(ctx context.Context, o cloud.CreateServerOpts) (*hcloud.Server, error)
	SetServerLabels(ctx context.Context, s *hcloud.Server, labels map[string]string) error
	DeleteServer(ctx context.Context, s *hcloud.Server) error
	EnableRescue(ctx context.Context, s *hcloud.Server, key *hcloud.SSHKey) error
	Boot(ctx context.Context, s *hcloud.Server) error
	PowerOff(ctx context.Context, s *hcloud.Server) error
	CreateSnapshot(ctx context.Context, s *hcloud.Server, description string, labels map[string]string) (*hcloud.Image, error)
	Snapshots(ctx context.Context, selector string) ([]*hcloud.Image, error)
	DeleteImage(ctx context.Context, img *hcloud.Image) error
	SetImageLabels(ctx context.Context, img *hcloud.Image, labels map[string]string) error
	CreateSSHKey(ctx context.Context, name, publicKey string, labels map[string]string) (*hcloud.SSHKey, error)
	SSHKeyByName(ctx context.Context, name string) (*hcloud.SSHKey, error)
	SetSSHKeyLabels(ctx context.Context, k *hcloud.SSHKey, labels map[string]string) error
	DeleteSSHKey(ctx context.Context, k *hcloud.SSHKey) error
}

// Factory finds a target's disk image; *talos.Factory.
type Factory interface {
	Find(ctx context.Context, schematic, version, arch string) (talos.Image, error)
}

// Remote runs commands on the rescue system; *ssh.Client.
type Remote interface {
	RunStdin(ctx context.Context, cmd string, stdin io.Reader, stdout io.Writer) error
	Close() error
}

// ProbeFunc tells whether the Talos API answers at addr (host:port), with
// the version it reports when it can tell; talos.ProbeAPI.
type ProbeFunc func(ctx context.Context, addr string) (version string, err error)

// DialFunc connects to a rescue system at addr (host:port) as root.
type DialFunc func(ctx context.Context, addr string, key *ssh.Key, log *slog.Logger) (Remote, error)

// Continuer has the build go on in a fresh invocation: in Lambda an
// asynchronous invoke of the Builder itself.
type Continuer interface {
	Continue(ctx context.Context, r Request) error
}

// Options are the builder's settings; config.Config supplies them.
type Options struct {
	Architectures []string            // accepted architectures, all built when a request names none
	Schematics    []string            // built when a request names none
	ServerTypes   map[string][]string // per architecture, in order of preference
	Locations     []string            // in order of preference
	Cluster       string              // optional cluster label value
	Labels        map[string]string   // extra snapshot labels
	ServerImage   string              // system image the server is created with; default debian-13
	SSHPort       int                 // default 22

	// Deployment is this deployment's DeploymentID: a build refuses to act
	// while another deployment claims the cluster. Empty (a command-line
	// run) checks nothing.
	Deployment string

	// A request may name only the Schematics above and versions from
	// MinVersion (empty: any) on, prereleases only with Prereleases: what
	// MIN_VERSION and TRACK_PRERELEASES let the Poller track.
	MinVersion  string
	Prereleases bool

	// StepTimeout bounds the short steps and InstallTimeout the install
	// (rescue boot, SSH patience, write, verify). Before a step the builder
	// needs that much time left, or it continues in a new invocation.
	StepTimeout    time.Duration // default 1m
	InstallTimeout time.Duration // default 8m
	// SnapshotWait is how long one invocation polls a creating snapshot
	// before it hands over to the next; default 2m.
	SnapshotWait time.Duration
	// SnapshotTimeout is how long a snapshot may stay "creating" before the
	// build counts it as failed; default 30m.
	SnapshotTimeout time.Duration
	// VerifyBoot publishes a snapshot only once a server booted from it
	// serves the Talos API, within VerifyTimeout (default 5m).
	VerifyBoot    bool
	VerifyTimeout time.Duration
	// TalosAPIPort is where the boot check looks; default 50000.
	TalosAPIPort int
	// LeaseTTL is how long a lease outlives its last renewal, so that a
	// crashed invocation blocks others only briefly; default 90s.
	LeaseTTL time.Duration
	// Failures says how a target that keeps failing backs off and when it
	// is parked (failure.go).
	Failures FailurePolicy
	// SigningKey signs the continuations the Builder starts (SigningKey
	// derives it from the Hetzner token); without one, no continuation is
	// accepted.
	SigningKey []byte
}

func (o *Options) setDefaults() {
	if o.ServerImage == "" {
		o.ServerImage = "debian-13"
	}
	if o.SSHPort == 0 {
		o.SSHPort = 22
	}
	if o.StepTimeout <= 0 {
		o.StepTimeout = time.Minute
	}
	if o.InstallTimeout <= 0 {
		o.InstallTimeout = 8 * time.Minute
	}
	if o.SnapshotWait <= 0 {
		o.SnapshotWait = 2 * time.Minute
	}
	if o.SnapshotTimeout <= 0 {
		o.SnapshotTimeout = 30 * time.Minute
	}
	if o.VerifyTimeout <= 0 {
		o.VerifyTimeout = 5 * time.Minute
	}
	if o.TalosAPIPort == 0 {
		o.TalosAPIPort = talos.APIPort
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 90 * time.Second
	}
}

// Builder builds snapshots.
type Builder struct {
	cloud    Cloud
	factory  Factory
	dial     DialFunc
	probe    ProbeFunc
	cont     Continuer // nil: the caller loops on in_progress
	opts     Options
	log      *slog.Logger
	now      func() time.Time
	owner    func(ctx context.Context) string
	newKey   func() (*ssh.Key, error)
	pollWait time.Duration
	// resolver resolves the customization's schematic; resolved holds
	// every schematic once it has.
	resolver SchematicResolver
	resolved atomic.Pointer[[]string]

	announcer Announcer // nil: nothing is announced
	metrics   *metrics.Emitter
}

// Deps are the builder's collaborators.
type Deps struct {
	Cloud     Cloud
	Factory   Factory
	Dial      DialFunc
	Probe     ProbeFunc // default talos.ProbeAPI
	Continuer Continuer // nil outside Lambda
	// Announcer tells subscribers of published snapshots and failed
	// builds; nil: nothing is sent.
	Announcer Announcer
	// Metrics puts CloudWatch metrics on the log lines (pkg/metrics); nil:
	// none, and no "build run ended" line.
	Metrics *metrics.Emitter
	Logger  *slog.Logger
	// Owner names the invocation in leases (Lambda's request id); default a
	// random id per call.
	Owner func(ctx context.Context) string
	// Schematics resolves the schematics beyond Options.Schematics (those
	// of SCHEMATIC_CUSTOMIZATION) when a request needs them; nil: none.
	Schematics SchematicResolver
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// New returns a Builder.
func New(d Deps, o Options) *Builder {
	o.setDefaults()
	b := &Builder{
		cloud: d.Cloud, factory: d.Factory, dial: d.Dial, probe: d.Probe, cont: d.Continuer, opts: o,
		log: d.Logger, now: time.Now, owner: d.Owner, newKey: ssh.NewKey, pollWait: 250 * time.Millisecond,
		resolver: d.Schematics, announcer: d.Announcer, metrics: d.Metrics,
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	if b.dial == nil {
		b.dial = DialSSH
	}
	if b.probe == nil {
		b.probe = talos.ProbeAPI
	}
	if b.owner == nil {
		b.owner = func(context.Context) string { return randomID() }
	}
	if d.Now != nil {
		b.now = d.Now
	}
	return b
}

// DialSSH dials with pkg/ssh, patient while the rescue system boots. The
// host key is not checked: nothing tells it, and the install dials once.
// The write is protected by our per-install key, which only the server
// Hetzner booted with it accepts, by the check of the written disk against
// the Talos layout, and by Hetzner taking the snapshot of the server's own
// disk (pkg/ssh says what each covers).
func DialSSH(ctx context.Context, addr string, key *ssh.Key, log *slog.Logger) (Remote, error) {
	return (&ssh.Dialer{Key: key, Addr: addr, Logger: log}).Dial(ctx)
}
