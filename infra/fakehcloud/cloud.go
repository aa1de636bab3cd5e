// Package fakehcloud is a stand-in for the Hetzner Cloud API for tests and
// local runs: one stateful project that the real hcloud-go client drives
// through the calls the functions make — SSH keys, servers with their power
// and rescue actions, snapshots, actions that run for a while and lock their
// server, label selectors, pagination, rate limit headers, and injectable
// faults.
//
// It serves only the routes that the functions and the tests driving hcloud-go
// call, so it has no locations, datacenters, networks, volumes, firewalls or
// billing, and no single-resource GET but for images.
//
// What stands behind a server (its disk, which a snapshot saves and a server
// created from the snapshot starts with, the rescue system reachable over
// SSH, what a boot from disk runs) is delegated to a Machines
// implementation; without one, servers get sequential loopback addresses
// and empty disks. The API is served under /v1.
package fakehcloud

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"
)

// DefaultToken is the API token accepted when Options.Token is empty.
const DefaultToken = "hcloud-emulator-token"

// Options configure a Cloud.
type Options struct {
	// Token is the bearer token the API requires; empty means DefaultToken.
	Token string
	// Addr is where Start listens; empty means 127.0.0.1:0. Only loopback
	// addresses are allowed.
	Addr string
	// Machines backs the servers; nil means loopback addresses 127.77.x.y
	// without disks.
	Machines Machines
	// ActionDuration is how long an action runs before it succeeds; zero
	// means 50ms. ActionDurations overrides it per command (start_server,
	// stop_server, reset_server, enable_rescue, create_image, create_server,
	// delete_server).
	ActionDuration  time.Duration
	ActionDurations map[string]time.Duration
	// Faults are the initial fault knobs; see Cloud.SetFaults.
	Faults Faults
	// Seed seeds the generator that decides faults.
	Seed uint64
	// RateLimit is the request budget of the rate limit headers, refilling
	// one per second; zero means 3600. With EnforceRateLimit an exhausted
	// budget answers 429 rate_limit_exceeded.
	RateLimit        int
	EnforceRateLimit bool
	// Logger receives what cannot be answered to an API client (e.g. a
	// failing Machines call during a guest reboot); nil means slog.Default.
	Logger *slog.Logger
}

// Server is a read-only view of an emulated server.
type Server struct {
	ID            int64
	Name          string
	Status        string // initializing, off, running, deleting
	IPv4          string
	ServerType    string
	Location      string
	Image         int64 // the image it was created from
	Labels        map[string]string
	RescueEnabled bool
	Created       time.Time
}

// SSHKey is a read-only view of an SSH key.
type SSHKey struct {
	ID          int64
	Name        string
	Fingerprint string
	PublicKey   string
	Labels      map[string]string
	Created     time.Time
}

// Image is a read-only view of an image; Digest is the digest of the disk a
// snapshot holds (Machines.SaveImage, CorruptImage).
type Image struct {
	ID              int64
	Type            string // system, snapshot, backup
	Status          string // creating, available, unavailable
	Name            string
	Description     string
	Architecture    string // x86, arm
	OSFlavor        string
	OSVersion       string
	DiskSize        float32
	ImageSize       float32
	CreatedFrom     int64
	CreatedFromName string
	BoundTo         int64
	Labels          map[string]string
	Digest          string
	Created         time.Time
	Deprecated      time.Time
}

// server is a server's state.
type server struct {
	Server
	typ        serverTypeSpec
	location   schema.Location
	rescueKeys []string // authorized keys for the next rescue boot
}

// Cloud is one emulated Hetzner Cloud project.
type Cloud struct {
	opts     Options
	machines Machines
	logger   *slog.Logger
	faults   faultState
	rate     rateBucket
	log      requestLog
	handler  http.Handler

	mu      sync.Mutex
	servers map[int64]*server
	keys    map[int64]*SSHKey
	images  map[int64]*Image
	actions map[int64]*action
	busy    map[schema.ActionResourceReference]int // running actions per resource
	lastID  map[string]int64
	// rootPasswords counts servers created without SSH keys: each would
	// have mailed a root password.
	rootPasswords int

	closed    bool // guarded by mu; no new background work once set
	done      chan struct{}
	wg        sync.WaitGroup // action goroutines and background boots
	closeOnce sync.Once
	httpSrv   *http.Server
}

// New returns a cloud holding only the catalog: server types, locations and
// system images.
func New(opts Options) *Cloud {
	if opts.Token == "" {
		opts.Token = DefaultToken
	}
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.ActionDuration == 0 {
		opts.ActionDuration = 50 * time.Millisecond
	}
	opts.ActionDurations = maps.Clone(opts.ActionDurations)
	if opts.RateLimit == 0 {
		opts.RateLimit = 3600
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &Cloud{
		opts:     opts,
		machines: opts.Machines,
		logger:   opts.Logger,
		servers:  map[int64]*server{},
		keys:     map[int64]*SSHKey{},
		images:   map[int64]*Image{},
		actions:  map[int64]*action{},
		busy:     map[schema.ActionResourceReference]int{},
		// Distinct ranges per kind make a mixed-up ID fail loudly.
		lastID: map[string]int64{"server": 41_000_000, "ssh_key": 9_000_000, "image": 400_000_000, "action": 1_000_000_000},
		done:   make(chan struct{}),
	}
	if c.machines == nil {
		c.machines = newLoopbackMachines()
	}
	c.faults.set(opts.Faults)
	c.faults.rng = newRand(opts.Seed)
	c.rate = rateBucket{limit: float64(opts.RateLimit), tokens: float64(opts.RateLimit), updated: time.Now()}
	for _, img := range systemImageRecords() {
		c.images[img.ID] = img
	}
	c.handler = c.middleware(c.routes())
	return c
}

func (c *Cloud) routes() http.Handler {
	mux := http.NewServeMux()
	for pattern, h := range map[string]apiHandler{
		"GET /v1/actions":                         c.listActions,
		"GET /v1/ssh_keys":                        c.listSSHKeys,
		"POST /v1/ssh_keys":                       c.createSSHKey,
		"PUT /v1/ssh_keys/{id}":                   c.updateSSHKey,
		"DELETE /v1/ssh_keys/{id}":                c.deleteSSHKey,
		"GET /v1/servers":                         c.listServers,
		"POST /v1/servers":                        c.createServer,
		"PUT /v1/servers/{id}":                    c.updateServer,
		"DELETE /v1/servers/{id}":                 c.deleteServer,
		"POST /v1/servers/{id}/actions/{command}": c.serverAction,
		"GET /v1/images":                          c.listImages,
		"GET /v1/images/{id}":                     c.getImage,
		"PUT /v1/images/{id}":                     c.updateImage,
		"DELETE /v1/images/{id}":                  c.deleteImage,
		"GET /v1/server_types":                    c.listServerTypes,
		"/":                                       c.unknownPath,
	} {
		mux.Handle(pattern, c.serve(h))
	}
	return mux
}

func (c *Cloud) unknownPath(r *http.Request) (int, any, error) {
	return 0, nil, &apiError{http.StatusNotFound, "not_found", "no such endpoint: " + r.Method + " " + r.URL.Path, nil}
}

// Start serves the cloud on Options.Addr and returns the base URL for
// hcloud.WithEndpoint, e.g. http://127.0.0.1:PORT/v1.
func (c *Cloud) Start() (string, error) {
	host, _, err := net.SplitHostPort(c.opts.Addr)
	if err != nil {
		return "", fmt.Errorf("listen address %s: %w", c.opts.Addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("listen address %s: not a loopback IP", c.opts.Addr)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.httpSrv != nil || c.closed {
		return "", errors.New("start: cloud already started or closed")
	}
	ln, err := net.Listen("tcp", c.opts.Addr)
	if err != nil {
		return "", fmt.Errorf("listen on %s: %w", c.opts.Addr, err)
	}
	srv := &http.Server{Handler: c.handler, ReadHeaderTimeout: 10 * time.Second}
	c.httpSrv = srv
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.logger.Error("fakehcloud stopped serving", "err", err)
		}
	}()
	return "http://" + ln.Addr().String() + apiPrefix, nil
}

// Close stops serving, abandons running actions and waits for background
// work to end.
func (c *Cloud) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.mu.Lock()
		srv := c.httpSrv
		c.closed = true
		c.mu.Unlock()
		if srv != nil {
			err = srv.Close()
		}
		close(c.done)
		c.wg.Wait()
	})
	return err
}

// SetFaults replaces the fault knobs; it is safe while serving.
func (c *Cloud) SetFaults(f Faults) { c.faults.set(f) }

// Requests returns the request log, oldest first.
func (c *Cloud) Requests() []Request { return c.log.all() }

// CountRequests counts logged requests with the method (empty for any) whose
// path matches pattern in path.Match syntax, e.g. "/v1/servers/*/actions/*".
func (c *Cloud) CountRequests(method, pattern string) int {
	n := 0
	for _, r := range c.log.all() {
		if (method == "" || r.Method == method) && matchPath(pattern, r.Path) {
			n++
		}
	}
	return n
}

// RootPasswords is how many servers were created without SSH keys, each of
// which real Hetzner answers with a root password mailed to the project
// owner.
func (c *Cloud) RootPasswords() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rootPasswords
}

// Servers returns the servers ordered by ID.
func (c *Cloud) Servers() []Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Server, 0, len(c.servers))
	for _, s := range c.servers {
		out = append(out, s.view())
	}
	slices.SortFunc(out, func(a, b Server) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

func (s *server) view() Server {
	v := s.Server
	v.Labels = cloneLabels(s.Labels)
	return v
}

// SSHKeys returns the SSH keys ordered by ID.
func (c *Cloud) SSHKeys() []SSHKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]SSHKey, 0, len(c.keys))
	for _, k := range c.keys {
		v := *k
		v.Labels = cloneLabels(k.Labels)
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b SSHKey) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Images returns all images, system images included, ordered by ID.
func (c *Cloud) Images() []Image {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Image, 0, len(c.images))
	for _, img := range c.images {
		out = append(out, img.view())
	}
	slices.SortFunc(out, func(a, b Image) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Image returns one image.
func (c *Cloud) Image(id int64) (Image, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	img, ok := c.images[id]
	if !ok {
		return Image{}, false
	}
	return img.view(), true
}

func (img *Image) view() Image {
	v := *img
	v.Labels = cloneLabels(img.Labels)
	return v
}

// AddImage adds a pre-existing image, e.g. an unmanaged os=talos snapshot.
// The ID is assigned; zero fields default to a snapshot that is available,
// x86, os_flavor unknown, 40 GB disk, created now.
func (c *Cloud) AddImage(img Image) (Image, error) {
	img.Type = cmp.Or(img.Type, "snapshot")
	img.Status = cmp.Or(img.Status, "available")
	img.Architecture = cmp.Or(img.Architecture, "x86")
	img.OSFlavor = cmp.Or(img.OSFlavor, "unknown")
	img.DiskSize = cmp.Or(img.DiskSize, 40)
	if img.Created.IsZero() {
		img.Created = now()
	}
	switch {
	case img.Type != "snapshot" && img.Type != "backup":
		return Image{}, fmt.Errorf("add image: type %q is not snapshot or backup", img.Type)
	case img.Status != "available" && img.Status != "creating":
		return Image{}, fmt.Errorf("add image: status %q is not available or creating", img.Status)
	case img.Architecture != "x86" && img.Architecture != "arm":
		return Image{}, fmt.Errorf("add image: architecture %q is not x86 or arm", img.Architecture)
	}
	if err := validateLabels(img.Labels); err != nil {
		return Image{}, fmt.Errorf("add image: %w", err)
	}
	img.Labels = cloneLabels(img.Labels)
	c.mu.Lock()
	defer c.mu.Unlock()
	img.ID = c.nextID("image")
	c.images[img.ID] = &img
	return img.view(), nil
}

// GuestPower records a power request made from inside the guest, e.g.
// `poweroff` typed in the rescue system. op "poweroff" marks the server off
// (the guest has already stopped itself, so Machines.Halt is not called);
// "reboot" boots the server again, into rescue if rescue is enabled, in the
// background so that the caller's session may end first.
func (c *Cloud) GuestPower(id int64, op string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.servers[id]
	if !ok {
		c.logger.Warn("guest power request for unknown server", "server", id, "op", op)
		return
	}
	switch op {
	case "poweroff":
		s.Status = "off"
	case "reboot":
		if c.closed {
			return
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			if err := c.boot(id); err != nil {
				c.logger.Warn("guest reboot", "server", id, "err", err)
			}
		}()
	default:
		c.logger.Warn("unknown guest power request", "server", id, "op", op)
	}
}

// nextID allocates an ID of kind; c.mu must be held.
func (c *Cloud) nextID(kind string) int64 {
	c.lastID[kind]++
	return c.lastID[kind]
}

// now is the time stamp of new resources, whole seconds like the real API.
func now() time.Time { return time.Now().UTC().Truncate(time.Second) }
