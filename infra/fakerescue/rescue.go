// Package fakerescue is a stand-in for what stands behind Hetzner Cloud
// servers, for tests and local runs: a disk per server, held in a sparse
// file, and the rescue system, an SSH server on the server's own loopback
// address that runs commands against that disk.
//
// Commands never see the host's devices. Every rescue boot gets private
// mount, UTS and PID namespaces whose /dev is a fresh tmpfs with the server's
// disk file bind-mounted as /dev/sda, next to the harmless character devices
// (null, zero, ...). The namespace is verified before any command runs in
// it, and killing its init on Halt ends every process of the boot.
//
// The sessions run the host's tools, with shims in front for what acts on a
// disk (blkdiscard, blockdev, dd) or on the machine (poweroff and friends).
// The power shims reach the Pool over a loopback HTTP channel of its own,
// which only they call. Options model what is not documented about
// Hetzner's rescue system and may differ from the host: root's login shell,
// tools that are missing, and a discard that leaves the data in place.
//
// It boots no kernel: a boot from disk starts nothing, sessions get no PTY,
// and nothing sees the disk as a kernel would (lsblk, udev).
//
// A server booted from its disk runs the Talos API stand-in of
// infra/faketalos on its address, port 50000, when the disk holds a Talos
// image of the server's architecture (Options.Identify); anything else boots
// to nothing that listens. Servers created from a snapshot start with the
// disk the snapshot saved (SaveImage, Provision).
//
// Pool implements the Machines interface of infra/fakehcloud but for the type of
// Boot's argument, which converts (see Rescue).
package fakerescue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/disk"
	"github.com/hcloud-k8s/hcloud-k8s/infra/faketalos"
)

// Options configure a Pool. The zero value works.
type Options struct {
	// Dir holds the disk files and shim directories. Empty: a temporary
	// directory that Close removes.
	Dir string
	// DiskSize is the size of every disk file in bytes (sparse, so it costs
	// nothing until written). Default 4 GiB; the size a server type
	// advertises is ignored.
	DiskSize int64
	// BootDelay is the time from Boot until SSH accepts connections. Default
	// 100 ms; real Hetzner takes about 80 s.
	BootDelay time.Duration
	// Port is the SSH port. Default 22.
	Port int
	// Dirty makes Create write random data at the start, middle and end of
	// each new disk, standing in for the OS image a real server comes with:
	// a build that neither discards nor overwrites the disk leaves traces.
	Dirty bool
	// Shell is root's login shell, an absolute path on the host: it runs
	// the command of an exec request as "Shell -c command", as sshd does,
	// and serves shell requests. Default /bin/bash; /bin/sh is dash on
	// Debian, which has no pipefail (dash 0.5.12, Debian 12).
	Shell string
	// MissingTools are commands the rescue system lacks, e.g. "curl",
	// "sfdisk", "zstd": no directory of its PATH has them. Whether Hetzner's
	// rescue system has curl and sfdisk is not documented. With tools
	// missing, the sessions' PATH is the machine's bin directory alone,
	// holding the shims and links to every other tool of the host; an
	// absolute path (/usr/bin/curl) still reaches the host's tool.
	MissingTools []string
	// DiscardKeepsData makes blkdiscard succeed without zeroing anything,
	// as Linux allows: "blkdiscard --zeroout" still zeroes.
	DiscardKeepsData bool
	// Identify tells what a disk holds from its disk.FileDigest: the Talos
	// version and architecture (amd64, arm64) of an image that boots, ok
	// false for anything else (fakefactory.Factory.Identify). Nil: no disk
	// boots.
	Identify func(digest string) (version, arch string, ok bool)
	// TalosBootDelay is the time from a boot from disk until the Talos API
	// accepts connections. Default 100 ms; no public source gives a figure
	// for Hetzner (the Talos integration tests wait up to a minute for the
	// maintenance API of a QEMU node).
	TalosBootDelay time.Duration
	// TalosPort is the Talos API port. Default 50000.
	TalosPort int
	// PowerFunc, if set, is called after a guest powered itself off
	// ("poweroff") or asked for a reboot ("reboot"). The pool has halted the
	// machine already; for a reboot the caller decides how to boot it again.
	PowerFunc func(id int64, op string)
	// Logger receives the pool's logs. Default: discarded.
	Logger *slog.Logger
}

// Rescue describes a rescue boot. It has the same fields as fakehcloud.Rescue,
// so a *fakehcloud.Rescue converts: pool.Boot(id, (*fakerescue.Rescue)(r)).
type Rescue struct {
	// AuthorizedKeys are public keys in authorized_keys format.
	AuthorizedKeys []string
}

// EventKind names what happened in an Event.
type EventKind string

// Kinds of events in the pool's log.
const (
	EventCreate     EventKind = "create"      // disk and address allocated; Detail: address
	EventProvision  EventKind = "provision"   // the disk took a saved image's content; Detail: "image <id>"
	EventBoot       EventKind = "boot"        // Detail: "rescue" or "disk"
	EventReady      EventKind = "ready"       // SSH accepts connections; Detail: address
	EventTalos      EventKind = "talos"       // the Talos API accepts connections; Detail: version and address
	EventNoBoot     EventKind = "no-boot"     // a boot from disk found nothing to boot; Detail: why
	EventLogin      EventKind = "login"       // Detail: key fingerprint
	EventAuthFailed EventKind = "auth-failed" // Detail: user and key fingerprint
	EventExec       EventKind = "exec"        // a command started; Detail: command ("" for a shell)
	EventExit       EventKind = "exit"        // a command ended; Detail: command, Status: exit status
	EventPower      EventKind = "power"       // the guest ran poweroff or reboot; Detail: op
	EventHalt       EventKind = "halt"
	EventDelete     EventKind = "delete"
)

// Event is one entry of the pool's log.
type Event struct {
	Time   time.Time
	Server int64
	Kind   EventKind
	Detail string
	// Status is the exit status of an EventExit, -1 if the command was
	// killed by a signal.
	Status int
}

// Pool runs the emulated machines. Its methods are safe for concurrent use.
type Pool struct {
	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	started   bool
	closed    bool
	dir       string
	ownDir    bool
	env       hostEnv
	control   *http.Server
	powerURL  string
	bootDelay time.Duration
	// talosBootDelay is Options.TalosBootDelay until SetTalosBootDelay.
	talosBootDelay time.Duration
	machines       map[int64]*machine
	tokens         map[string]int64 // power-control token → server id
	images         map[int64]string // image id → saved disk file

	eventsMu sync.Mutex
	events   []Event

	power sync.WaitGroup // guest power requests in flight
	boots sync.WaitGroup // boots from disk reading their disk or waiting
}

// machine is one emulated server.
type machine struct {
	id    int64
	ip    string
	disk  string
	bin   string // shims, mounted first on PATH
	token string

	mu      sync.Mutex // serialises power transitions
	arch    string     // x86 or arm once provisioned
	host    *host      // the running rescue system, nil otherwise
	os      *diskBoot  // the boot from disk, nil otherwise
	deleted bool
}

// New returns a pool. It starts nothing yet; the first Create does.
func New(opts Options) *Pool {
	if opts.DiskSize <= 0 {
		opts.DiskSize = 4 << 30
	}
	if opts.BootDelay <= 0 {
		opts.BootDelay = 100 * time.Millisecond
	}
	if opts.Port == 0 {
		opts.Port = 22
	}
	if opts.TalosBootDelay <= 0 {
		opts.TalosBootDelay = 100 * time.Millisecond
	}
	if opts.TalosPort == 0 {
		opts.TalosPort = faketalos.Port
	}
	if opts.Shell == "" {
		opts.Shell = "/bin/bash"
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pool{
		opts:           opts,
		log:            log,
		bootDelay:      opts.BootDelay,
		talosBootDelay: opts.TalosBootDelay,
		machines:       make(map[int64]*machine),
		tokens:         make(map[string]int64),
		images:         make(map[int64]string),
	}
}

// startLocked checks the host and starts the power-control server, once.
func (p *Pool) startLocked() error {
	if p.closed {
		return errors.New("pool closed")
	}
	if p.started {
		return nil
	}
	env, err := probeHost()
	if err != nil {
		return err
	}
	if err := checkOptions(p.opts); err != nil {
		return err
	}
	dir := p.opts.Dir
	own := dir == ""
	if own {
		if dir, err = os.MkdirTemp("", "rescue-"); err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	srv, url, err := p.startControl()
	if err != nil {
		if own {
			os.RemoveAll(dir)
		}
		return err
	}
	p.env, p.dir, p.ownDir, p.control, p.powerURL = env, dir, own, srv, url
	p.started = true
	return nil
}

// Create allocates the disk of a new server and a loopback address for it.
// diskBytes is ignored: every disk has Options.DiskSize bytes.
func (p *Pool) Create(id int64, diskBytes int64) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.startLocked(); err != nil {
		return "", fmt.Errorf("create machine %d: %w", id, err)
	}
	if _, ok := p.machines[id]; ok {
		return "", fmt.Errorf("create machine %d: already exists", id)
	}
	m := &machine{
		id:    id,
		disk:  filepath.Join(p.dir, fmt.Sprintf("server-%d.disk", id)),
		bin:   filepath.Join(p.dir, fmt.Sprintf("server-%d.bin", id)),
		token: randomToken(),
	}
	if err := createDisk(m.disk, p.opts.DiskSize, p.opts.Dirty); err != nil {
		return "", fmt.Errorf("create machine %d: %w", id, err)
	}
	err := writeBin(m.bin, binConfig{powerURL: p.powerURL + "/power/" + m.token + "/", dd: p.env.dd, curl: p.env.curl,
		keepData: p.opts.DiscardKeepsData, missing: p.opts.MissingTools})
	if err != nil {
		os.Remove(m.disk)
		os.RemoveAll(m.bin)
		return "", fmt.Errorf("create machine %d: %w", id, err)
	}
	ip, err := claimAddr(p.opts.Port, p.opts.TalosPort)
	if err != nil {
		os.Remove(m.disk)
		os.RemoveAll(m.bin)
		return "", fmt.Errorf("create machine %d: %w", id, err)
	}
	m.ip = ip
	p.machines[id] = m
	p.tokens[m.token] = id
	p.record(Event{Server: id, Kind: EventCreate, Detail: ip})
	p.log.Info("machine created", "id", id, "ip", ip, "disk", m.disk)
	return ip, nil
}

// toolName is what MissingTools accepts: a command name, no path.
var toolName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._+-]*$`)

// checkOptions checks the options that name things on the host.
func checkOptions(o Options) error {
	st, err := os.Stat(o.Shell)
	if !filepath.IsAbs(o.Shell) || err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("login shell %q is not an executable file on the host", o.Shell)
	}
	for _, t := range o.MissingTools {
		if !toolName.MatchString(t) {
			return fmt.Errorf("missing tool %q is not a command name", t)
		}
	}
	return nil
}

// sessionPath is the sessions' PATH: the shims first, as /usr/local/sbin
// comes first on Debian; the machine's bin directory alone when tools are
// missing.
func (p *Pool) sessionPath() string {
	if len(p.opts.MissingTools) > 0 {
		return shimDir
	}
	return shimDir + ":" + systemPath
}

// createDisk makes a sparse file of size bytes, replacing a stale one.
func createDisk(path string, size int64, dirty bool) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create disk: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("size disk %s: %w", path, err)
	}
	if !dirty {
		return nil
	}
	const chunk = 64 << 10
	buf := make([]byte, chunk)
	for _, off := range []int64{0, size / 2, size - chunk} {
		rand.Read(buf)
		if _, err := f.WriteAt(buf, max(off, 0)); err != nil {
			return fmt.Errorf("dirty disk %s: %w", path, err)
		}
	}
	return nil
}

func randomToken() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (p *Pool) machine(id int64) (*machine, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m, ok := p.machines[id]
	if !ok {
		return nil, fmt.Errorf("machine %d not found", id)
	}
	return m, nil
}

// Boot powers the server on; a running server is reset first. With rescue
// non-nil it boots the rescue system: its namespace is built at once (an
// error here means commands could not run safely), and SSH accepts root
// logins with rescue.AuthorizedKeys on ip:Port after the boot delay, with a
// host key of its own. With rescue nil it boots from disk: the Talos API
// listens on ip:TalosPort after TalosBootDelay if the disk holds a Talos
// image of the machine's architecture; otherwise nothing listens.
func (p *Pool) Boot(id int64, rescue *Rescue) error {
	m, err := p.machine(id)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed || m.deleted {
		return fmt.Errorf("boot machine %d: deleted or pool closed", id)
	}
	if m.haltLocked() {
		p.record(Event{Server: id, Kind: EventHalt})
	}
	if rescue == nil {
		p.record(Event{Server: id, Kind: EventBoot, Detail: "disk"})
		m.os = p.bootDisk(m)
		return nil
	}
	start := time.Now()
	h, err := p.newHost(m, rescue.AuthorizedKeys)
	if err != nil {
		return fmt.Errorf("boot machine %d into rescue: %w", id, err)
	}
	m.host = h
	p.record(Event{Server: id, Kind: EventBoot, Detail: "rescue"})
	p.mu.Lock()
	delay := p.bootDelay - time.Since(start)
	p.mu.Unlock()
	h.start(delay)
	return nil
}

// Halt powers the server off at once: SSH or the Talos API stops listening,
// connections drop and every process of the rescue system is killed before
// it returns.
func (p *Pool) Halt(id int64) error {
	m, err := p.machine(id)
	if err != nil {
		return fmt.Errorf("halt: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.haltLocked() {
		p.record(Event{Server: id, Kind: EventHalt})
	}
	return nil
}

// haltLocked stops the rescue system or the boot from disk if one runs and
// reports whether it did.
func (m *machine) haltLocked() bool {
	switch {
	case m.host != nil:
		m.host.stop()
		m.host = nil
	case m.os != nil:
		m.os.halt()
		m.os = nil
	default:
		return false
	}
	return true
}

// DiskDigest returns disk.FileDigest of the server's disk.
func (p *Pool) DiskDigest(id int64) (string, error) {
	m, err := p.machine(id)
	if err != nil {
		return "", fmt.Errorf("disk digest: %w", err)
	}
	return disk.FileDigest(m.disk)
}

// DiskPath returns the file that holds the server's disk.
func (p *Pool) DiskPath(id int64) (string, error) {
	m, err := p.machine(id)
	if err != nil {
		return "", fmt.Errorf("disk path: %w", err)
	}
	return m.disk, nil
}

// Delete halts the server and releases its disk and address.
func (p *Pool) Delete(id int64) error {
	m, err := p.machine(id)
	if err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	m.mu.Lock()
	m.haltLocked()
	m.deleted = true
	m.mu.Unlock()

	p.mu.Lock()
	delete(p.machines, id)
	delete(p.tokens, m.token)
	p.mu.Unlock()
	releaseAddr(m.ip)
	p.record(Event{Server: id, Kind: EventDelete})
	if err := errors.Join(os.Remove(m.disk), os.RemoveAll(m.bin)); err != nil {
		return fmt.Errorf("delete machine %d: %w", id, err)
	}
	return nil
}

// SetBootDelay changes the boot delay of later rescue boots.
func (p *Pool) SetBootDelay(d time.Duration) {
	p.mu.Lock()
	p.bootDelay = d
	p.mu.Unlock()
}

// SetTalosBootDelay changes the time later boots from disk take until the
// Talos API listens, e.g. beyond a client's patience.
func (p *Pool) SetTalosBootDelay(d time.Duration) {
	p.mu.Lock()
	p.talosBootDelay = d
	p.mu.Unlock()
}

// DropConnections closes the server's SSH connections as a network failure
// would, and returns how many there were. Commands keep running, as they do
// under sshd when the client goes away; SSH keeps listening.
func (p *Pool) DropConnections(id int64) (int, error) {
	m, err := p.machine(id)
	if err != nil {
		return 0, fmt.Errorf("drop connections: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.host == nil {
		return 0, nil
	}
	return m.host.dropConns(), nil
}

// Events returns a copy of the pool's log.
func (p *Pool) Events() []Event {
	p.eventsMu.Lock()
	defer p.eventsMu.Unlock()
	return append([]Event(nil), p.events...)
}

func (p *Pool) record(e Event) {
	e.Time = time.Now()
	p.eventsMu.Lock()
	p.events = append(p.events, e)
	p.eventsMu.Unlock()
}

// Close halts every machine, waits for guest power requests and boots from
// disk, and stops the power-control server. Disk and image files stay,
// unless the pool made its own Dir.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	machines := make([]*machine, 0, len(p.machines))
	for _, m := range p.machines {
		machines = append(machines, m)
	}
	started, control := p.started, p.control
	p.mu.Unlock()
	if !started {
		return nil
	}

	// Stop taking power requests first, so none starts after the wait.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := control.Shutdown(ctx)
	p.power.Wait()
	for _, m := range machines {
		m.mu.Lock()
		m.haltLocked()
		m.mu.Unlock()
		releaseAddr(m.ip)
	}
	p.boots.Wait()
	if p.ownDir {
		err = errors.Join(err, os.RemoveAll(p.dir))
	}
	if err != nil {
		return fmt.Errorf("close pool: %w", err)
	}
	return nil
}

// startControl serves the power requests of the shims on 127.0.0.1.
func (p *Pool) startControl() (*http.Server, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", fmt.Errorf("power control: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /power/{token}/{op}", p.handlePower)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return srv, "http://" + ln.Addr().String(), nil
}

// handlePower answers a guest's poweroff or reboot: the machine goes down
// (which drops the asking session) and PowerFunc hears of it.
func (p *Pool) handlePower(w http.ResponseWriter, r *http.Request) {
	op := r.PathValue("op")
	if op != "poweroff" && op != "reboot" {
		http.Error(w, "unknown power operation", http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	id, ok := p.tokens[r.PathValue("token")]
	p.mu.Unlock()
	if !ok {
		http.Error(w, "unknown machine", http.StatusNotFound)
		return
	}
	p.record(Event{Server: id, Kind: EventPower, Detail: op})
	p.log.Info("guest power request", "id", id, "op", op)
	w.WriteHeader(http.StatusAccepted)
	io.WriteString(w, "going down: "+op+"\n")

	p.power.Add(1)
	go func() {
		defer p.power.Done()
		if err := p.Halt(id); err != nil {
			p.log.Warn("halt after guest power request", "id", id, "err", err)
		}
		if p.opts.PowerFunc != nil {
			p.opts.PowerFunc(id, op)
		}
	}()
}

// keepDiskSize restores a disk file that something truncated, e.g. a shell
// redirection "> /dev/sda": a block device never changes its size.
func (p *Pool) keepDiskSize(id int64, path string) {
	st, err := os.Stat(path)
	if err != nil || st.Size() >= p.opts.DiskSize {
		return
	}
	p.log.Warn("disk file was truncated; restoring its size", "id", id, "size", st.Size())
	if err := os.Truncate(path, p.opts.DiskSize); err != nil {
		p.log.Error("restore disk size", "id", id, "err", err)
	}
}

func (m *machine) addr(port int) string {
	return net.JoinHostPort(m.ip, strconv.Itoa(port))
}
