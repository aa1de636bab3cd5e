// Package fakefactory is a stand-in for the Talos Image Factory
// (factory.talos.dev) for tests and local runs: hcloud disk images per
// (schematic, version, arch) and schematic registration.
//
// Images are synthetic but faithful where a builder can tell: raw GPT disks
// with the partitions, attributes and raw size of the real Talos hcloud image
// of their version and architecture (LayoutOf), data where a real image has
// data (DataBytesOf), compressed by the system xz and zstd like the Talos
// imager, different and deterministic per (schematic, version, arch). Like
// the real factory, it builds an image on the first request for it and
// answers when it is built (Options.BuildDelay), then serves it from its
// cache. Knobs reproduce the failures seen in practice: a freshly published
// release that still 404s (SetAvailable), truncated downloads (SetTruncate)
// and broken images (SetOmitPartition). Identify tells a disk that holds one
// of its whole images by the disk's digest, which is how the local world
// decides what a server boots.
//
// It serves only what pkg/talos and the rescue system's download ask for
// (HEAD and GET of an hcloud image, the CDN path GET is redirected to, POST
// /schematics): no version, extension or overlay listings, no other image
// kinds or platforms (ISO, installer, PXE, kernel, initramfs), SecureBoot,
// OCI registry frontend, authentication or build concurrency limit, and no
// file systems inside the partitions.
package fakefactory

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// QuickScale is a Scale for tests: v1.11+ images of 19 MiB (arm64) and
// 35 MiB (amd64) with the real partition names, order and types.
const QuickScale = 128

// Options configure a Factory.
type Options struct {
	// Addr is the listen address for Start; default "127.0.0.1:0". It must be
	// a loopback address.
	Addr string
	// Dir caches generated images. Default: a temporary directory that Close
	// removes. Images from an earlier run with the same sizes are reused.
	Dir string
	// Versions are the accepted Talos versions (with or without "v";
	// prereleases allowed). Default: DefaultVersions().
	Versions []string
	// Schematics are known schematic IDs besides VanillaSchematic and
	// QemuGuestAgentSchematic, which are always known.
	Schematics []string
	// Scale divides the partition and image sizes (see LayoutOf) and the
	// data (DataBytesOf); 0 or 1: the real sizes, e.g. 4247 MiB for v1.13
	// amd64. QuickScale keeps tests fast.
	Scale int64
	// Data is the kind of data in the images; default Incompressible.
	Data DataKind
	// BuildDelay is how long the first request (HEAD or GET) for an image
	// that is not built yet blocks before it is answered, as the real
	// factory builds on a cache miss (for minutes). Concurrent requests wait
	// for the same build; a client that goes away does not cancel it; once
	// built, the image is answered at once. Default 0.
	BuildDelay time.Duration
	// Redirect makes a GET of an image answer 302 to a CDN-like path on the
	// same server, as the real factory does. HEAD is always answered directly.
	Redirect bool
	// Logger receives generation events; default: discard.
	Logger *slog.Logger
}

// Truncation selects how image downloads are cut short (SetTruncate).
type Truncation int

const (
	// TruncateNone serves complete images.
	TruncateNone Truncation = iota
	// TruncateShort serves the first half of the compressed file as if it were
	// the whole object (Content-Length, Range and HEAD agree with the short
	// object): the HTTP transfer succeeds and only the decompressor notices,
	// like a truncated object on a CDN.
	TruncateShort
	// TruncateCut announces the full Content-Length, sends half of the body
	// and drops the connection: the client sees an unexpected EOF. Range and
	// conditional headers are ignored in this mode.
	TruncateCut
)

// Request is one entry of the request log.
type Request struct {
	Time   time.Time
	Method string
	Path   string // path and query
	Range  string // the Range header, if any
	Status int
	Bytes  int64 // body bytes sent
}

// Factory is the emulated Image Factory. It is an http.Handler; Start serves
// it on a loopback listener.
type Factory struct {
	opts   Options
	log    *slog.Logger
	dir    string
	ownDir bool
	mux    *http.ServeMux

	ctx    context.Context // cancelled by Close; bounds generation
	cancel context.CancelFunc
	gen    sync.WaitGroup // running generations

	mu         sync.Mutex
	closed     bool
	versions   map[string]bool // accepted version -> available
	schematics map[string]bool
	truncate   Truncation
	omit       string // partition left out of images generated from now on
	requests   []Request
	jobs       map[string]*job
	digests    map[string]string

	srv *http.Server
	url string
}

// New returns a Factory; Close releases it, also when it is only used as an
// http.Handler. New panics if opts holds a malformed version or schematic
// ID, a negative scale or an unknown data kind: those are programming errors
// in a test or scenario.
func New(opts Options) *Factory {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.Scale == 0 {
		opts.Scale = 1
	}
	if opts.Scale < 0 {
		panic(fmt.Sprintf("factory: scale %d: want 1 or more", opts.Scale))
	}
	if opts.Data != Incompressible && opts.Data != Compressible {
		panic(fmt.Sprintf("factory: unknown %v", opts.Data))
	}
	if len(opts.Versions) == 0 {
		opts.Versions = DefaultVersions()
	}
	var err error

	f := &Factory{
		opts:       opts,
		log:        opts.Logger,
		dir:        opts.Dir,
		versions:   make(map[string]bool),
		schematics: map[string]bool{VanillaSchematic: true, QemuGuestAgentSchematic: true},
		jobs:       make(map[string]*job),
		digests:    make(map[string]string),
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	if f.dir == "" {
		if f.dir, err = os.MkdirTemp("", "talos-factory-"); err != nil {
			panic(fmt.Sprintf("factory: %v", err))
		}
		f.ownDir = true
	}
	for _, v := range opts.Versions {
		nv, err := normalizeVersion(v)
		if err != nil {
			panic(fmt.Sprintf("factory: %v", err))
		}
		f.versions[nv] = true
	}
	for _, id := range opts.Schematics {
		if !schematicIDRE.MatchString(id) {
			panic(fmt.Sprintf("factory: schematic ID %q is not 64 lowercase hex digits", id))
		}
		f.schematics[id] = true
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())

	f.mux = http.NewServeMux()
	f.mux.HandleFunc("POST /schematics", f.handleSchematics)
	f.mux.HandleFunc("GET /image/{schematic}/{version}/{file}", func(w http.ResponseWriter, r *http.Request) {
		f.serveImage(w, r, f.opts.Redirect && r.Method == http.MethodGet)
	})
	f.mux.HandleFunc("GET /cdn/{schematic}/{version}/{file}", func(w http.ResponseWriter, r *http.Request) {
		f.serveImage(w, r, false)
	})
	return f
}

// Start serves the factory on Options.Addr and returns its base URL (for
// TALOS_FACTORY_URL), e.g. "http://127.0.0.1:41234".
func (f *Factory) Start() (string, error) {
	ln, err := listenLoopback(f.opts.Addr)
	if err != nil {
		return "", fmt.Errorf("start factory: %w", err)
	}
	f.srv = &http.Server{Handler: f, ReadHeaderTimeout: 10 * time.Second}
	go f.srv.Serve(ln) //nolint:errcheck // Serve returns ErrServerClosed after Close
	f.url = "http://" + ln.Addr().String()
	return f.url, nil
}

// URL returns the base URL after Start.
func (f *Factory) URL() string { return f.url }

// Close stops the server, aborts running generations (killing the
// compressors) and removes the cache directory if the factory created it.
func (f *Factory) Close() error {
	var err error
	if f.srv != nil {
		err = f.srv.Close()
	}
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.cancel()
	f.gen.Wait()
	if f.ownDir {
		if rerr := os.RemoveAll(f.dir); err == nil {
			err = rerr
		}
	}
	if err != nil {
		return fmt.Errorf("close factory: %w", err)
	}
	return nil
}

func listenLoopback(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("address %s is not a loopback address", addr)
	}
	return net.Listen("tcp", addr)
}

// SetAvailable makes a version answer (true) or 404 (false) on image
// requests, like a release the factory has not picked up yet. Making an unknown version available adds it.
func (f *Factory) SetAvailable(version string, available bool) error {
	v, err := normalizeVersion(version)
	if err != nil {
		return fmt.Errorf("set available: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.versions[v]; ok || available {
		f.versions[v] = available
	}
	return nil
}

// SetTruncate sets how image downloads are cut short from now on.
func (f *Factory) SetTruncate(t Truncation) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.truncate = t
}

// SetOmitPartition makes the images generated from now on lack the named
// partition (one of PartitionNames), like a broken build; "" restores whole
// images. The partition's space stays in the image, unpartitioned and zero.
// It is part of the cache key: images of both kinds can be served side by
// side.
func (f *Factory) SetOmitPartition(name string) error {
	if name != "" && !slices.Contains(PartitionNames, name) {
		return fmt.Errorf("omit partition %q: not one of %v", name, PartitionNames)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.omit = name
	return nil
}

// Requests returns a copy of the request log.
func (f *Factory) Requests() []Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

// Count returns how many logged requests have the method (any if "") and a
// path starting with pathPrefix.
func (f *Factory) Count(method, pathPrefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.requests {
		if (method == "" || r.Method == method) && strings.HasPrefix(r.Path, pathPrefix) {
			n++
		}
	}
	return n
}

// ServeHTTP serves the factory API and logs the request.
func (f *Factory) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &recorder{ResponseWriter: w}
	start := time.Now()
	defer func() {
		f.mu.Lock()
		f.requests = append(f.requests, Request{
			Time: start, Method: r.Method, Path: r.URL.RequestURI(), Range: r.Header.Get("Range"),
			Status: rec.status, Bytes: rec.bytes,
		})
		f.mu.Unlock()
	}()
	f.mux.ServeHTTP(rec, r)
}

func (f *Factory) handleSchematics(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		http.Error(w, fmt.Sprintf("read body: %v", err), http.StatusBadRequest)
		return
	}
	s, err := ParseSchematic(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	id, err := s.ID()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	f.mu.Lock()
	f.schematics[id] = true
	f.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]string{"id": id})
}

var imageFileRE = regexp.MustCompile(`^hcloud-(amd64|arm64)\.raw\.(xz|zst)$`)

// statusError is a failure with the HTTP status the real factory answers.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return e.msg }

// lookup validates a request in the order the real factory does: schematic,
// version syntax, file name, then whether the version exists.
func (f *Factory) lookup(schematic, version, arch string, checkAvailable bool) (target, error) {
	f.mu.Lock()
	known := f.schematics[schematic]
	f.mu.Unlock()
	if !known {
		return target{}, &statusError{http.StatusNotFound, fmt.Sprintf("schematic ID %q not found", schematic)}
	}
	v, err := normalizeVersion(version)
	if err != nil {
		return target{}, &statusError{http.StatusInternalServerError, err.Error()}
	}
	if arch != "amd64" && arch != "arm64" {
		return target{}, &statusError{http.StatusNotFound, fmt.Sprintf("unsupported architecture or image path %q", arch)}
	}
	f.mu.Lock()
	available, ok := f.versions[v]
	omit := f.omit
	f.mu.Unlock()
	if !ok || checkAvailable && !available {
		return target{}, &statusError{http.StatusNotFound, fmt.Sprintf("version %s not found", v)}
	}
	return target{schematic: schematic, version: v, arch: arch, omit: omit}, nil
}

func (f *Factory) serveImage(w http.ResponseWriter, r *http.Request, redirect bool) {
	file := r.PathValue("file")
	// checksums of images are an Enterprise feature of the real factory
	if strings.HasSuffix(file, ".sha256") || strings.HasSuffix(file, ".sha512") {
		http.Error(w, "enterprise not enabled: checksum endpoint is not available", http.StatusPaymentRequired)
		return
	}
	arch, format := file, "" // an unknown file name fails as an unknown arch
	if m := imageFileRE.FindStringSubmatch(file); m != nil {
		arch, format = m[1], m[2]
	}
	t, err := f.lookup(r.PathValue("schematic"), r.PathValue("version"), arch, true)
	if err != nil {
		var se *statusError
		errors.As(err, &se)
		http.Error(w, se.msg, se.code)
		return
	}
	// The real factory builds a missing image before it answers, also a
	// HEAD and before a redirect (image-factory internal/frontend/http/
	// image.go handleImage: assetBuilder.Build, then the redirect for GET).
	path, err := f.compressed(r.Context(), t, format)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if redirect {
		http.Redirect(w, r, "/cdn/"+t.schematic+"/"+t.version+"/"+file, http.StatusFound)
		return
	}
	fh, err := os.Open(path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}

	f.mu.Lock()
	trunc := f.truncate
	f.mu.Unlock()
	h := w.Header()
	h.Set("Content-Type", map[string]string{"xz": "application/x-xz", "zst": "application/zstd"}[format])
	h.Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", file))
	// the content is a function of the cache path (target, scale, data,
	// omitted partition) and format
	key := strings.TrimPrefix(path, f.dir)
	etag := fmt.Sprintf("%x", sha256.Sum256([]byte(key)))[:32]
	switch trunc {
	case TruncateShort:
		h.Set("ETag", `"`+etag+`-short"`)
		http.ServeContent(w, r, "", st.ModTime(), io.NewSectionReader(fh, 0, st.Size()/2))
	case TruncateCut:
		h.Set("ETag", `"`+etag+`"`)
		h.Set("Content-Length", strconv.FormatInt(st.Size(), 10))
		h.Set("Last-Modified", st.ModTime().UTC().Format(http.TimeFormat))
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodHead {
			return
		}
		io.CopyN(w, fh, st.Size()/2) //nolint:errcheck // the connection is dropped anyway
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler) // drop the connection without finishing the body
	default:
		h.Set("ETag", `"`+etag+`"`)
		http.ServeContent(w, r, "", st.ModTime(), fh)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v) //nolint:errcheck // the client went away
}

// recorder captures the status and body size for the request log.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// ReadFrom keeps net/http's sendfile path for image bodies.
func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := io.Copy(r.ResponseWriter, src)
	r.bytes += n
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
