// Package config reads the one configuration both functions share from the
// environment and checks all of it at once.
package config

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// Config is the configuration of the Poller and the Builder. Every field is
// read from the environment variable named in its tag.
type Config struct {
	// HCloudToken is the Hetzner Cloud API token of the project to build in.
	// In AWS it comes from HCloudTokenSecret: a Secrets Manager secret id, or
	// "ssm:<name>" for an SSM SecureString parameter.
	HCloudToken       string `env:"HCLOUD_TOKEN"`
	HCloudTokenSecret string `env:"HCLOUD_TOKEN_SECRET"`
	// HCloudEndpoint is the API base URL, as the hcloud CLI and Packer read it.
	HCloudEndpoint string `env:"HCLOUD_ENDPOINT, default=https://api.hetzner.cloud/v1"`
	// FactoryURL is the Talos Image Factory.
	FactoryURL string `env:"TALOS_FACTORY_URL, default=https://factory.talos.dev"`
	// GitHubAPIURL and GitHubToken reach the releases of siderolabs/talos.
	GitHubAPIURL      string `env:"GITHUB_API_URL, default=https://api.github.com/"`
	GitHubToken       string `env:"GITHUB_TOKEN"`
	GitHubTokenSecret string `env:"GITHUB_TOKEN_SECRET"`

	// Architectures to build, each with the server types to try in order.
	// At build time the Builder uses only those the API lists with the
	// architecture's smallest disk (40 GB in 2026: cx23 and cpx11, which is
	// sold in the US only; cax11): a snapshot cannot create servers with a
	// smaller disk than its build server's.
	Architectures    []string `env:"ARCHITECTURES, default=amd64,arm64"`
	ServerTypesAMD64 []string `env:"SERVER_TYPES_AMD64, default=cx23,cpx11"`
	ServerTypesARM64 []string `env:"SERVER_TYPES_ARM64, default=cax11"`
	// Locations to build in, in order of preference.
	Locations []string `env:"LOCATIONS, default=fsn1,nbg1,hel1"`
	// ServerImage is the system image build servers are created with. It
	// never boots (the build boots the rescue system) but must exist for
	// both architectures; the API picks the variant by name.
	ServerImage string `env:"SERVER_IMAGE, default=debian-13"`

	// SchematicIDs are Image Factory schematics to build. SchematicYAML is a
	// customization whose ID the factory computes; when neither is set the
	// hcloud-k8s default (qemu-guest-agent) is built.
	SchematicIDs  []string `env:"SCHEMATIC_IDS"`
	SchematicYAML string   `env:"SCHEMATIC_CUSTOMIZATION"`

	// SnapshotLabels are extra labels put on every snapshot (k=v,k2=v2) and
	// Cluster an optional cluster=<name> label hcloud-k8s selects on.
	SnapshotLabels map[string]string `env:"SNAPSHOT_LABELS, separator=="`
	Cluster        string            `env:"CLUSTER_NAME"`

	// TrackMinors is how many of the newest minor release lines are tracked
	// (newest patch of each); TrackAllPatches builds every patch of them.
	TrackMinors     int    `env:"TRACK_MINORS, default=2"`
	TrackAllPatches bool   `env:"TRACK_ALL_PATCHES, default=false"`
	Prereleases     bool   `env:"TRACK_PRERELEASES, default=false"`
	MinVersion      string `env:"MIN_VERSION"`
	// KeepOthers is how many snapshots beyond the tracked versions are kept
	// per architecture and schematic.
	KeepOthers int `env:"RETENTION_KEEP_OTHERS, default=2"`

	// MaxBuildsPerPoll caps how many builds one poll starts.
	MaxBuildsPerPoll int `env:"MAX_BUILDS_PER_POLL, default=4"`
	// BuildServerTTL is the age after which a build server is collected.
	BuildServerTTL time.Duration `env:"BUILD_SERVER_TTL, default=2h"`
	// BuilderFunctionName is the Lambda function the Poller invokes.
	BuilderFunctionName string `env:"BUILDER_FUNCTION_NAME"`

	// StepTimeout and InstallTimeout are what a build step may take; an
	// invocation with less time left continues in a new one. SnapshotWait
	// is how long one invocation polls a snapshot being created. LeaseTTL
	// is how long a crashed invocation keeps others off its build.
	StepTimeout    time.Duration `env:"STEP_TIMEOUT, default=1m"`
	InstallTimeout time.Duration `env:"INSTALL_TIMEOUT, default=8m"`
	SnapshotWait   time.Duration `env:"SNAPSHOT_WAIT, default=2m"`
	// SnapshotTimeout is how long a snapshot may be "creating" before its
	// build counts as failed.
	SnapshotTimeout time.Duration `env:"SNAPSHOT_TIMEOUT, default=30m"`
	// VerifyBoot publishes a snapshot only once a server booted from it
	// answers on the Talos API, within VerifyTimeout.
	VerifyBoot    bool          `env:"VERIFY_BOOT, default=true"`
	VerifyTimeout time.Duration `env:"VERIFY_TIMEOUT, default=5m"`
	LeaseTTL      time.Duration `env:"LEASE_TTL, default=90s"`

	// FailureBackoff is how long a target whose build failed waits before
	// the Poller builds it again; the wait doubles with every further
	// failure, up to a day. After FailureLimit failures the target is
	// parked until its version, schematic or configuration changes, or a
	// request with force.
	FailureBackoff time.Duration `env:"FAILURE_BACKOFF, default=1h"`
	FailureLimit   int           `env:"FAILURE_LIMIT, default=4"`

	// EventBusName is the EventBridge bus the Builder announces published
	// snapshots and failed builds on, by name or ARN; "default" is the
	// account's default bus, empty announces nothing.
	EventBusName string `env:"EVENT_BUS_NAME, default=default"`
}

// Bounds of the failure settings: the backoff starts at a poll interval
// (the schedule is hourly by default) and is capped at a day.
const (
	MinFailureBackoff = time.Minute
	MaxFailureBackoff = 24 * time.Hour
	MaxFailureLimit   = 100
)

// Step budgets, so that every step fits one Builder invocation: Lambda's
// maximum timeout (15m, which the template sets) less a minute.
const (
	StepBudget        = 14 * time.Minute
	MaxStepTimeout    = 5 * time.Minute
	MaxInstallTimeout = 12 * time.Minute
	MaxSnapshotWait   = 12 * time.Minute
	MaxVerifyTimeout  = 12 * time.Minute
)

// SecretReader reads a secret by reference; *secret.Reader.
type SecretReader interface {
	Read(ctx context.Context, ref string) (string, error)
}

// Load reads the configuration from the process environment, fills the
// tokens from their secrets and validates it.
func Load(ctx context.Context, secrets SecretReader) (Config, error) {
	return LoadFrom(ctx, envconfig.OsLookuper(), secrets)
}

// LoadFrom reads the configuration through l, fills the tokens from their
// secrets with secrets (needed only when a *_TOKEN_SECRET is set) and
// validates it.
func LoadFrom(ctx context.Context, l envconfig.Lookuper, secrets SecretReader) (Config, error) {
	var c Config
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: &c, Lookuper: l}); err != nil {
		return Config{}, fmt.Errorf("read configuration: %w", err)
	}
	for _, t := range []struct {
		name      string
		token     *string
		secretVar string
		ref       string
	}{
		{"HCLOUD_TOKEN", &c.HCloudToken, "HCLOUD_TOKEN_SECRET", c.HCloudTokenSecret},
		{"GITHUB_TOKEN", &c.GitHubToken, "GITHUB_TOKEN_SECRET", c.GitHubTokenSecret},
	} {
		switch {
		case t.ref == "":
		case *t.token != "":
			return Config{}, fmt.Errorf("read configuration: %s and %s are both set; set one", t.name, t.secretVar)
		case secrets == nil:
			return Config{}, fmt.Errorf("read configuration: %s is set but no secret store is configured", t.secretVar)
		default:
			v, err := secrets.Read(ctx, t.ref)
			if err != nil {
				return Config{}, fmt.Errorf("read configuration: %s: %w", t.secretVar, err)
			}
			*t.token = v
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// ServerTypes returns the server types to try for arch, in order.
func (c Config) ServerTypes(arch string) []string {
	switch arch {
	case "amd64":
		return c.ServerTypesAMD64
	case "arm64":
		return c.ServerTypesARM64
	}
	return nil
}

// Schematics returns the configured schematic IDs; the hcloud-k8s default
// when none is configured and no customization is to be resolved.
func (c Config) Schematics() []string {
	if len(c.SchematicIDs) == 0 && c.SchematicYAML == "" {
		return []string{talos.QemuGuestAgentSchematic}
	}
	return c.SchematicIDs
}

// ValidationError lists every problem of a configuration, one per variable
// and value.
type ValidationError struct {
	Problems []string
}

func (e *ValidationError) Error() string {
	return "invalid configuration:\n  " + strings.Join(e.Problems, "\n  ")
}

// Validate reports all problems at once, each naming its variable and what
// it accepts.
func (c Config) Validate() error {
	var p []string
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }

	if c.HCloudToken == "" {
		add("HCLOUD_TOKEN: is required (a Hetzner Cloud API token with read/write access), or HCLOUD_TOKEN_SECRET naming a secret that holds it")
	} else if strings.ContainsAny(c.HCloudToken, " \t\r\n") {
		add("HCLOUD_TOKEN: contains whitespace") // never echo the token itself
	}
	// What plain http to each endpoint would do. The factory gets no
	// token, but the images it serves become the snapshots clusters boot,
	// and TLS is their only integrity check on the way: the factory signs
	// and checksums images for Enterprise customers only (siderolabs/
	// image-factory: its checksum endpoints answer 402 without Enterprise;
	// infra/README.md has the row and the stand-in).
	githubRisk := ""
	if c.GitHubToken != "" {
		githubRisk = "send GITHUB_TOKEN in clear text"
	}
	for _, u := range []struct{ name, value, risk string }{
		{"HCLOUD_ENDPOINT", c.HCloudEndpoint, "send the Hetzner Cloud token in clear text"},
		{"TALOS_FACTORY_URL", c.FactoryURL, "let anyone on the way change the disk images the snapshots are made of"},
		{"GITHUB_API_URL", c.GitHubAPIURL, githubRisk},
	} {
		if msg := checkURL(u.value, u.risk); msg != "" {
			add("%s: %q %s", u.name, redactURL(u.value), msg)
		}
	}

	if len(c.Architectures) == 0 {
		add("ARCHITECTURES: is empty; accepted: amd64, arm64")
	}
	for i, a := range c.Architectures {
		switch {
		case slices.Index(c.Architectures, a) != i:
			if talos.ValidArch(a) { // an invalid one is reported once
				add("ARCHITECTURES: %q is listed twice", a)
			}
		case !talos.ValidArch(a):
			add("ARCHITECTURES: %q is not amd64 or arm64", a)
		}
	}
	for _, st := range []struct {
		name, arch string
		types      []string
	}{
		{"SERVER_TYPES_AMD64", "amd64", c.ServerTypesAMD64},
		{"SERVER_TYPES_ARM64", "arm64", c.ServerTypesARM64},
	} {
		if len(st.types) == 0 && slices.Contains(c.Architectures, st.arch) {
			add("%s: is empty but %s is built; e.g. %s", st.name, st.arch, defaultTypes[st.arch])
		}
		for _, t := range st.types {
			if msg := checkServerType(st.arch, t); msg != "" {
				add("%s: %q %s", st.name, t, msg)
			}
		}
	}
	if len(c.Locations) == 0 {
		add("LOCATIONS: is empty; e.g. fsn1,nbg1,hel1")
	}
	if !imageRE.MatchString(c.ServerImage) || len(c.ServerImage) > 63 {
		add("SERVER_IMAGE: %q is not a Hetzner system image name like debian-13 or ubuntu-24.04", c.ServerImage)
	}
	for _, l := range c.Locations {
		if !nameRE.MatchString(l) {
			add("LOCATIONS: %q is not a location name like fsn1", l)
		}
	}

	for _, id := range c.SchematicIDs {
		if !talos.ValidSchematic(id) {
			add("SCHEMATIC_IDS: %q is not a schematic ID (64 lowercase hex digits)", id)
		}
	}
	if len(c.SchematicYAML) > 64<<10 {
		add("SCHEMATIC_CUSTOMIZATION: is %d bytes; at most 64 KiB", len(c.SchematicYAML))
	}

	for k, v := range c.SnapshotLabels {
		if err := label.Check(k, v); err != nil {
			add("SNAPSHOT_LABELS: %v", err)
		}
		if label.IsReserved(k) {
			add("SNAPSHOT_LABELS: %q is set by the builder itself; reserved: %s and %s*",
				k, strings.Join(label.Reserved, ", "), label.OwnPrefix)
		}
	}
	if c.Cluster != "" {
		if err := label.Check(label.Cluster, c.Cluster); err != nil {
			add("CLUSTER_NAME: %v", err)
		}
	}

	if c.TrackMinors < 1 {
		add("TRACK_MINORS: %d; at least 1 (the newest minor release line)", c.TrackMinors)
	}
	if c.MinVersion != "" {
		if _, err := talos.ParseVersion(c.MinVersion); err != nil {
			add("MIN_VERSION: %v", err)
		}
	}
	if c.KeepOthers < 0 {
		add("RETENTION_KEEP_OTHERS: %d; 0 or more", c.KeepOthers)
	}
	if c.MaxBuildsPerPoll < 1 {
		add("MAX_BUILDS_PER_POLL: %d; at least 1", c.MaxBuildsPerPoll)
	}
	if c.BuildServerTTL < 30*time.Minute {
		add("BUILD_SERVER_TTL: %s; at least 30m (a build takes up to ~20 minutes)", c.BuildServerTTL)
	}
	// Every step must fit one Builder invocation (the template gives it
	// Lambda's maximum, 15m) after the checks that start it, with a
	// minute to spare; otherwise every invocation would hand over at once.
	for _, d := range []struct {
		name               string
		value, least, most time.Duration
	}{
		{"STEP_TIMEOUT", c.StepTimeout, time.Second, MaxStepTimeout},
		{"INSTALL_TIMEOUT", c.InstallTimeout, time.Second, MaxInstallTimeout},
		{"SNAPSHOT_WAIT", c.SnapshotWait, time.Second, MaxSnapshotWait},
		{"VERIFY_TIMEOUT", c.VerifyTimeout, time.Second, MaxVerifyTimeout},
		{"LEASE_TTL", c.LeaseTTL, 3 * time.Second, 15 * time.Minute},
	} {
		if d.value < d.least || d.value > d.most {
			add("%s: %s; between %s and %s", d.name, d.value, short(d.least), short(d.most))
		}
	}
	for _, d := range []struct {
		name  string
		value time.Duration
	}{{"INSTALL_TIMEOUT", c.InstallTimeout}, {"SNAPSHOT_WAIT", c.SnapshotWait}, {"VERIFY_TIMEOUT", c.VerifyTimeout}} {
		if d.value <= MaxInstallTimeout && c.StepTimeout <= MaxStepTimeout && d.value+c.StepTimeout > StepBudget {
			add("%s: %s plus STEP_TIMEOUT %s is more than %s: a step must fit one Builder invocation (at most 15m) with a minute to spare",
				d.name, short(d.value), short(c.StepTimeout), short(StepBudget))
		}
	}
	if c.SnapshotTimeout < 10*time.Second || (c.BuildServerTTL >= 30*time.Minute && c.SnapshotTimeout >= c.BuildServerTTL) {
		add("SNAPSHOT_TIMEOUT: %s; at least 10s and less than BUILD_SERVER_TTL (%s), which deletes the build server", c.SnapshotTimeout, c.BuildServerTTL)
	}
	if c.FailureBackoff < MinFailureBackoff || c.FailureBackoff > MaxFailureBackoff {
		add("FAILURE_BACKOFF: %s; between %s and %s (e.g. the poll interval, 1h)", short(c.FailureBackoff),
			short(MinFailureBackoff), short(MaxFailureBackoff))
	}
	if c.FailureLimit < 1 || c.FailureLimit > MaxFailureLimit {
		add("FAILURE_LIMIT: %d; between 1 and %d failures before a target is parked", c.FailureLimit, MaxFailureLimit)
	}
	if c.BuilderFunctionName != "" && !functionRE.MatchString(c.BuilderFunctionName) {
		add("BUILDER_FUNCTION_NAME: %q is not a Lambda function name or ARN", c.BuilderFunctionName)
	}
	if c.EventBusName != "" && !eventBusRE.MatchString(c.EventBusName) {
		add("EVENT_BUS_NAME: %q is not an EventBridge bus name or ARN, like default; empty for no events", c.EventBusName)
	}

	if len(p) > 0 {
		return &ValidationError{Problems: p}
	}
	return nil
}

var (
	nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{1,30}$`)
	// A function name, or a (partial) ARN, optionally with a qualifier.
	functionRE = regexp.MustCompile(`^(arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:\d{12}:function:)?[a-zA-Z0-9-_]{1,64}(:[a-zA-Z0-9-_$]+)?$`)
	typeRE     = regexp.MustCompile(`^(cx|cpx|ccx|cax)[0-9]{2,3}$`)
	// An event bus name or ARN (EventBridge API Reference, CreateEventBus
	// Name and PutEventsRequestEntry EventBusName).
	eventBusRE = regexp.MustCompile(`^(arn:aws[a-zA-Z-]*:events:[a-z0-9-]+:\d{12}:event-bus/)?[/.\-_A-Za-z0-9]{1,256}$`)
	// System image names: debian-13, ubuntu-24.04, centos-stream-10.
	imageRE = regexp.MustCompile(`^[a-z][a-z0-9]*([.-][a-z0-9]+)*$`)
)

var defaultTypes = map[string]string{"amd64": "cx23,cpx11", "arm64": "cax11"}

// checkServerType checks only the name's syntax and architecture: whether
// Hetzner sells a type, where, and with which disk changes over time (cpx11
// is gone from the EU but still sold in the US), so the Builder asks
// GET /server_types at build time.
func checkServerType(arch, t string) string {
	switch {
	case !typeRE.MatchString(t):
		return "is not a Hetzner server type name like cx23 or cax11"
	case arch == "arm64" && !strings.HasPrefix(t, "cax"):
		return "is not an Arm64 server type (cax*)"
	case arch == "amd64" && strings.HasPrefix(t, "cax"):
		return "is an Arm64 server type; x86 types are cx*, cpx*, ccx*"
	}
	return ""
}

// checkURL checks a base URL. risk says what plain http to it would do;
// with a risk, plain http is accepted only to a loopback host (the local
// world's).
func checkURL(s, risk string) string {
	u, err := url.Parse(s)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return "is not an http(s) URL"
	case u.User != nil:
		return "must not carry credentials"
	case u.RawQuery != "":
		return "must not carry a query: it is a base URL that paths are appended to"
	case u.Scheme == "http" && risk != "" && !loopback(u.Hostname()):
		return fmt.Sprintf("is plain http, which would %s; use https "+
			"(http is accepted only for loopback hosts: 127.0.0.0/8, ::1, localhost)", risk)
	}
	return ""
}

// short formats d without zero units: 5m, not 5m0s.
func short(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// loopback tells whether host is a loopback address, or localhost, which
// resolves to one (RFC 6761, section 6.3).
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// redactURL hides what may be a secret in a URL before it goes into an
// error message: the user information (user:password@) and the query. It
// works on the text, so that a URL too broken to parse is redacted too.
func redactURL(s string) string {
	start := 0
	if i := strings.Index(s, "://"); i >= 0 {
		start = i + len("://")
	}
	end := len(s)
	if i := strings.IndexAny(s[start:], "/?#"); i >= 0 {
		end = start + i
	}
	if at := strings.LastIndex(s[start:end], "@"); at >= 0 {
		s = s[:start] + "***" + s[start+at:]
	}
	if q := strings.Index(s, "?"); q >= 0 {
		rest := ""
		if f := strings.Index(s[q:], "#"); f >= 0 {
			rest = s[q+f:]
		}
		s = s[:q] + "?***" + rest
	}
	return s
}
