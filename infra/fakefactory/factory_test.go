package fakefactory_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/disk"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakefactory"
)

const (
	vanilla = fakefactory.VanillaSchematic
	qemu    = fakefactory.QemuGuestAgentSchematic
)

// start starts a factory; small images keep the tests fast.
func start(t *testing.T, opts fakefactory.Options) (*fakefactory.Factory, string) {
	t.Helper()
	if opts.Scale == 0 {
		opts.Scale = fakefactory.QuickScale
	}
	f := fakefactory.New(opts)
	url, err := f.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Error(err)
		}
	})
	return f, url
}

func do(t *testing.T, method, url string, body io.Reader, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func imageURL(base, schematic, version, file string) string {
	return fmt.Sprintf("%s/image/%s/%s/%s", base, schematic, version, file)
}

func TestImageRoutes(t *testing.T) {
	_, url := start(t, fakefactory.Options{Versions: []string{"v1.12.5", "v1.13.9", "v1.14.0-beta.1"}})
	unknown := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name, method, schematic, version, file string
		want                                   int
	}{
		{"xz", "GET", vanilla, "v1.13.9", "hcloud-amd64.raw.xz", 200},
		{"zst head", "HEAD", qemu, "v1.13.9", "hcloud-arm64.raw.zst", 200},
		{"prerelease", "HEAD", vanilla, "v1.14.0-beta.1", "hcloud-amd64.raw.xz", 200},
		{"no v prefix", "HEAD", vanilla, "1.12.5", "hcloud-amd64.raw.zst", 200},
		{"unknown schematic", "GET", unknown, "v1.13.9", "hcloud-amd64.raw.xz", 404},
		{"short schematic", "GET", "abc", "v1.13.9", "hcloud-amd64.raw.xz", 404},
		{"unknown version", "GET", vanilla, "v1.13.10", "hcloud-amd64.raw.xz", 404},
		{"malformed version", "GET", vanilla, "v1.13", "hcloud-amd64.raw.xz", 500},
		{"malformed version head", "HEAD", vanilla, "latest", "hcloud-amd64.raw.xz", 500},
		{"unknown schematic before version", "GET", unknown, "v1.13", "hcloud-amd64.raw.xz", 404},
		{"other platform", "GET", vanilla, "v1.13.9", "metal-amd64.raw.xz", 404},
		{"other arch", "GET", vanilla, "v1.13.9", "hcloud-riscv64.raw.xz", 404},
		{"other compression", "GET", vanilla, "v1.13.9", "hcloud-amd64.raw.gz", 404},
		{"checksum is enterprise", "GET", vanilla, "v1.13.9", "hcloud-amd64.raw.xz.sha256", 402},
		{"post", "POST", vanilla, "v1.13.9", "hcloud-amd64.raw.xz", 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, _ := do(t, tc.method, imageURL(url, tc.schematic, tc.version, tc.file), nil)
			if resp.StatusCode != tc.want {
				t.Errorf("%s: status %d, want %d", tc.method, resp.StatusCode, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/schematics", 405},
		{"GET", "/", 404},
		{"GET", "/image/" + vanilla + "/v1.13.9", 404},
	} {
		t.Run(tc.method+tc.path, func(t *testing.T) {
			if resp, _ := do(t, tc.method, url+tc.path, nil); resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}

func run(t *testing.T, stdin []byte, name string, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", name, err, stderr.String())
	}
	return out, nil
}

func TestImageDownload(t *testing.T) {
	f, url := start(t, fakefactory.Options{})
	rawPath, digest, err := f.Image(qemu, "v1.13.9", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(rawPath)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := disk.FileDigest(rawPath); d != digest || !strings.HasPrefix(digest, "sha256:") {
		t.Errorf("digest %q, disk.FileDigest %q", digest, d)
	}

	for _, tc := range []struct {
		file, contentType string
		test, decompress  []string
	}{
		{"hcloud-amd64.raw.xz", "application/x-xz", []string{"xz", "-t"}, []string{"xz", "-T0", "-dc"}},
		{"hcloud-amd64.raw.zst", "application/zstd", []string{"zstd", "-q", "-t"}, []string{"zstd", "-dc"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			u := imageURL(url, qemu, "v1.13.9", tc.file)
			head, _ := do(t, "HEAD", u, nil)
			resp, body := do(t, "GET", u, nil)
			if resp.StatusCode != 200 || head.StatusCode != 200 {
				t.Fatalf("status GET %d HEAD %d", resp.StatusCode, head.StatusCode)
			}
			if head.ContentLength != int64(len(body)) || resp.ContentLength != int64(len(body)) {
				t.Errorf("Content-Length HEAD %d GET %d, body %d", head.ContentLength, resp.ContentLength, len(body))
			}
			if got := resp.Header.Get("Content-Type"); got != tc.contentType {
				t.Errorf("Content-Type %q, want %q", got, tc.contentType)
			}
			if len(body) >= len(raw)/2 {
				t.Errorf("compressed %d bytes of %d raw", len(body), len(raw))
			}
			if _, err := run(t, body, tc.test[0], tc.test[1:]...); err != nil {
				t.Error(err)
			}
			out, err := run(t, body, tc.decompress[0], tc.decompress[1:]...)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, raw) {
				t.Error("decompressed image differs from the raw image")
			}

			etag, lastMod := resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
			if etag == "" || lastMod == "" || head.Header.Get("ETag") != etag {
				t.Errorf("ETag %q (HEAD %q), Last-Modified %q", etag, head.Header.Get("ETag"), lastMod)
			}
			if r, _ := do(t, "GET", u, nil, "If-None-Match", etag); r.StatusCode != http.StatusNotModified {
				t.Errorf("If-None-Match: status %d, want 304", r.StatusCode)
			}
			if r, _ := do(t, "GET", u, nil, "If-Modified-Since", lastMod); r.StatusCode != http.StatusNotModified {
				t.Errorf("If-Modified-Since: status %d, want 304", r.StatusCode)
			}
			r, part := do(t, "GET", u, nil, "Range", "bytes=100-1099")
			if r.StatusCode != http.StatusPartialContent || !bytes.Equal(part, body[100:1100]) {
				t.Errorf("Range: status %d, %d bytes", r.StatusCode, len(part))
			}
			r, rest := do(t, "GET", u, nil, "Range", "bytes=1000-", "If-Range", etag)
			if r.StatusCode != http.StatusPartialContent || !bytes.Equal(rest, body[1000:]) {
				t.Errorf("resume: status %d, %d bytes", r.StatusCode, len(rest))
			}
		})
	}

	// xz -T0 must be able to decode in parallel: more than one block
	path := rawPath + ".xz"
	out, err := exec.Command("xz", "--robot", "--list", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	var blocks int
	for _, line := range strings.Split(string(out), "\n") {
		if fields := strings.Split(line, "\t"); fields[0] == "file" {
			blocks, _ = strconv.Atoi(fields[2])
		}
	}
	_, size, err := fakefactory.LayoutOf("v1.13.9", "amd64", fakefactory.QuickScale)
	if err != nil {
		t.Fatal(err)
	}
	if want := int(size >> 20); blocks != want {
		t.Errorf("xz stream has %d blocks, want %d (1 MiB each)", blocks, want)
	}
}

func TestImagesDiffer(t *testing.T) {
	dirA, dirB := t.TempDir(), t.TempDir()
	fa, _ := start(t, fakefactory.Options{Dir: dirA})
	fb, _ := start(t, fakefactory.Options{Dir: dirB})
	seen := map[string]string{}
	for _, sch := range []string{vanilla, qemu} {
		for _, v := range []string{"v1.13.8", "v1.13.9"} {
			for _, arch := range []string{"amd64", "arm64"} {
				triple := sch[:8] + "/" + v + "/" + arch
				_, da, err := fa.Image(sch, v, arch)
				if err != nil {
					t.Fatal(err)
				}
				_, db, err := fb.Image(sch, v, arch)
				if err != nil {
					t.Fatal(err)
				}
				if da != db {
					t.Errorf("%s: not deterministic: %s vs %s", triple, da, db)
				}
				if other, ok := seen[da]; ok {
					t.Errorf("%s has the same image as %s", triple, other)
				}
				seen[da] = triple
			}
		}
	}
	for _, tc := range []struct{ schematic, version, arch string }{
		{strings.Repeat("0", 64), "v1.13.9", "amd64"},
		{vanilla, "v1.99.0", "amd64"},
		{vanilla, "v1.13", "amd64"},
		{vanilla, "v1.13.9", "riscv64"},
	} {
		if _, _, err := fa.Image(tc.schematic, tc.version, tc.arch); err == nil {
			t.Errorf("Image(%v): no error", tc)
		}
	}
}

func TestSchematics(t *testing.T) {
	_, url := start(t, fakefactory.Options{})
	for _, tc := range []struct {
		name, body string
		want       int
		id         string
	}{
		{"empty customization", "customization: {}\n", 201, vanilla},
		{"empty document", "{}", 201, vanilla},
		{"qemu guest agent", "customization:\n  systemExtensions:\n    officialExtensions:\n      - siderolabs/qemu-guest-agent\n", 201, qemu},
		{"json", `{"customization":{"systemExtensions":{"officialExtensions":["siderolabs/qemu-guest-agent"]}}}`, 201, qemu},
		// IDs from the real factory's own tests
		{"kernel args", `{"customization": {"extraKernelArgs": ["noapic", "nolapic"]}}`, 201, "9cba8e32753f91a16c1837ab8abf356af021706ef284aef07380780177d9a06c"},
		{"meta", `{"customization": {"meta": [{"key": 10, "value": "foo"}], "extraKernelArgs": [], "systemExtensions": {}}}`, 201, "d308a2a5ee2277bed5fbaa104fcbc8d59122abfa737df987a95b4ca763459a7f"},
		{"overlay", `{"overlay": {"name": "rpi_generic", "image": "siderolabs/sbc-raspberrypi"}}`, 201, "ee21ef4a5ef808a9b7484cc0dda0f25075021691c8c09a276591eedb638ea1f9"},
		{"secureboot", `{"customization":{"secureboot": {"includeWellKnownCertificates": true}}}`, 201, "fa8e05f142a851d3ee568eb0a8e5841eaf6b0ebc8df9a63df16ac5ed2c04f3e6"},
		{"unknown field", "customization:\n  systemExtension: {}\n", 400, ""},
		{"unknown top-level field", "extensions: [a]\n", 400, ""},
		{"invalid yaml", "customization: [\n", 400, ""},
		{"wrong type", "customization:\n  extraKernelArgs: 3\n", 400, ""},
		{"empty body", "", 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := do(t, "POST", url+"/schematics", strings.NewReader(tc.body), "Content-Type", "application/yaml")
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
			if tc.want != 201 {
				return
			}
			var got struct{ ID string }
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatal(err)
			}
			if got.ID != tc.id {
				t.Errorf("id %s, want %s", got.ID, tc.id)
			}
		})
	}

	// a posted schematic becomes known
	custom := "customization:\n  extraKernelArgs: [console=ttyS0]\n"
	s, err := fakefactory.ParseSchematic([]byte(custom))
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.ID()
	if err != nil {
		t.Fatal(err)
	}
	u := imageURL(url, id, "v1.13.9", "hcloud-amd64.raw.zst")
	if resp, _ := do(t, "HEAD", u, nil); resp.StatusCode != 404 {
		t.Fatalf("before POST: status %d, want 404", resp.StatusCode)
	}
	if resp, _ := do(t, "POST", url+"/schematics", strings.NewReader(custom)); resp.StatusCode != 201 {
		t.Fatalf("POST: status %d", resp.StatusCode)
	}
	if resp, _ := do(t, "HEAD", u, nil); resp.StatusCode != 200 {
		t.Errorf("after POST: status %d, want 200", resp.StatusCode)
	}
}

// served reports whether the factory answers 200 for an hcloud image of
// version.
func served(t *testing.T, url, version string) bool {
	t.Helper()
	resp, _ := do(t, "HEAD", imageURL(url, vanilla, version, "hcloud-amd64.raw.xz"), nil)
	return resp.StatusCode == 200
}

func TestVersionsAndAvailability(t *testing.T) {
	f, url := start(t, fakefactory.Options{Versions: []string{"v1.13.9", "1.12.10"}})
	// Options.Versions, like image paths, take a version with or without "v".
	for _, v := range []string{"v1.12.10", "1.13.9"} {
		if !served(t, url, v) {
			t.Errorf("%s not served", v)
		}
	}

	u := imageURL(url, vanilla, "v1.13.10", "hcloud-amd64.raw.xz")
	steps := []struct {
		name      string
		available bool
		want      int
	}{
		{"new release not yet known", false, 404},
		{"picked up", true, 200},
		{"withdrawn", false, 404},
		{"back", true, 200},
	}
	for _, s := range steps {
		if err := f.SetAvailable("v1.13.10", s.available); err != nil {
			t.Fatal(err)
		}
		if resp, _ := do(t, "HEAD", u, nil); resp.StatusCode != s.want {
			t.Errorf("%s: status %d, want %d", s.name, resp.StatusCode, s.want)
		}
	}
	if err := f.SetAvailable("v1.13", true); err == nil {
		t.Error("SetAvailable accepted a malformed version")
	}
}

func TestDefaultVersions(t *testing.T) {
	vs := fakefactory.DefaultVersions()
	for _, v := range []string{"v1.10.0", "v1.12.5", "v1.13.9", "v1.14.0-rc.1"} {
		if !slices.Contains(vs, v) {
			t.Errorf("default versions lack %s", v)
		}
	}
	// A factory without Options.Versions serves them, the oldest to the
	// newest, and no release outside them.
	_, url := start(t, fakefactory.Options{})
	for v, want := range map[string]bool{"v1.10.0-alpha.0": true, "v1.14.0-rc.1": true, "v1.14.0": false, "v1.9.0": false} {
		if got := served(t, url, v); got != want {
			t.Errorf("%s served %v, want %v", v, got, want)
		}
	}
}

func TestRedirect(t *testing.T) {
	f, url := start(t, fakefactory.Options{Redirect: true})
	u := imageURL(url, vanilla, "v1.13.9", "hcloud-arm64.raw.zst")

	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(loc, "/cdn/") {
		t.Fatalf("status %d Location %q, want 302 to /cdn/", resp.StatusCode, loc)
	}

	resp, body := do(t, "GET", u, nil) // net/http follows the redirect
	if resp.StatusCode != 200 || resp.Request.URL.Path != loc {
		t.Fatalf("followed: status %d at %s", resp.StatusCode, resp.Request.URL.Path)
	}
	if _, err := run(t, body, "zstd", "-q", "-t"); err != nil {
		t.Error(err)
	}
	if head, _ := do(t, "HEAD", u, nil); head.StatusCode != 200 || head.ContentLength != int64(len(body)) {
		t.Errorf("HEAD: status %d length %d, want 200 %d without redirect", head.StatusCode, head.ContentLength, len(body))
	}
	if n := f.Count("GET", "/image/"); n != 2 {
		t.Errorf("%d GET /image/ requests logged, want 2", n)
	}
	if n := f.Count("GET", "/cdn/"); n != 1 {
		t.Errorf("%d GET /cdn/ requests logged, want 1", n)
	}
	// errors are answered before any redirect
	if resp, _ := do(t, "GET", imageURL(url, vanilla, "v9.9.9", "hcloud-arm64.raw.zst"), nil); resp.StatusCode != 404 {
		t.Errorf("unknown version: status %d, want 404", resp.StatusCode)
	}
}

func TestTruncate(t *testing.T) {
	f, url := start(t, fakefactory.Options{})
	for _, tc := range []struct {
		file string
		test []string
	}{
		{"hcloud-amd64.raw.xz", []string{"xz", "-t"}},
		{"hcloud-amd64.raw.zst", []string{"zstd", "-q", "-t"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			u := imageURL(url, vanilla, "v1.13.9", tc.file)
			f.SetTruncate(fakefactory.TruncateNone)
			_, full := do(t, "GET", u, nil)

			f.SetTruncate(fakefactory.TruncateShort)
			resp, short := do(t, "GET", u, nil)
			if resp.StatusCode != 200 || resp.ContentLength != int64(len(short)) || len(short) != len(full)/2 {
				t.Errorf("short: status %d Content-Length %d, got %d bytes of %d", resp.StatusCode, resp.ContentLength, len(short), len(full))
			}
			if !bytes.Equal(short, full[:len(short)]) {
				t.Error("short body is not a prefix of the image")
			}
			if _, err := run(t, short, tc.test[0], tc.test[1:]...); err == nil {
				t.Errorf("%s accepted a truncated stream", tc.test[0])
			}
			if head, _ := do(t, "HEAD", u, nil); head.ContentLength != int64(len(short)) {
				t.Errorf("short HEAD: Content-Length %d, want %d", head.ContentLength, len(short))
			}

			f.SetTruncate(fakefactory.TruncateCut)
			resp, err := http.Get(u)
			if err != nil {
				t.Fatal(err)
			}
			cut, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !errors.Is(err, io.ErrUnexpectedEOF) || resp.ContentLength != int64(len(full)) {
				t.Errorf("cut: Content-Length %d, read %d bytes, err %v; want %d and unexpected EOF", resp.ContentLength, len(cut), err, len(full))
			}
			if _, err := run(t, cut, tc.test[0], tc.test[1:]...); err == nil {
				t.Errorf("%s accepted a cut stream", tc.test[0])
			}
			f.SetTruncate(fakefactory.TruncateNone)
			if _, again := do(t, "GET", u, nil); !bytes.Equal(again, full) {
				t.Error("image differs after truncation was switched off")
			}
		})
	}
}

// lockedBuffer collects log output from concurrent goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestConcurrentRequestsGenerateOnce(t *testing.T) {
	var logs lockedBuffer
	dir := t.TempDir()
	f, url := start(t, fakefactory.Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	u := imageURL(url, qemu, "v1.12.5", "hcloud-arm64.raw.xz")

	const n = 8
	bodies := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			resp, err := http.Get(u)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			bodies[i], _ = io.ReadAll(resp.Body)
		})
	}
	wg.Wait()
	for i := 1; i < n; i++ {
		if len(bodies[i]) == 0 || !bytes.Equal(bodies[i], bodies[0]) {
			t.Fatalf("response %d differs", i)
		}
	}
	if got := strings.Count(logs.String(), "msg=generated"); got != 2 { // raw and xz
		t.Errorf("%d generations, want 2:\n%s", got, logs.String())
	}
	if reqs := f.Requests(); len(reqs) != n || reqs[0].Status != 200 || reqs[0].Bytes != int64(len(bodies[0])) {
		t.Errorf("request log %+v", reqs)
	}

	// a second factory on the same Dir reuses the cached files
	var logs2 lockedBuffer
	_, url2 := start(t, fakefactory.Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(&logs2, nil))})
	if _, body := do(t, "GET", imageURL(url2, qemu, "v1.12.5", "hcloud-arm64.raw.xz"), nil); !bytes.Equal(body, bodies[0]) {
		t.Error("second factory served another image")
	}
	if strings.Contains(logs2.String(), "msg=generated") {
		t.Errorf("second factory regenerated:\n%s", logs2.String())
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "*", "*", "*", "*.tmp"))
	if len(matches) != 0 {
		t.Errorf("temporary files left: %v", matches)
	}
}

func TestStartRejectsNonLoopback(t *testing.T) {
	f := fakefactory.New(fakefactory.Options{Addr: "0.0.0.0:0"})
	t.Cleanup(func() { f.Close() })
	if _, err := f.Start(); err == nil {
		t.Error("Start listened on a non-loopback address")
	}
}

func TestCloseRemovesOwnDir(t *testing.T) {
	f, url := start(t, fakefactory.Options{})
	rawPath, _, err := f.Image(vanilla, "v1.13.9", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(rawPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cache file survived Close: %v", err)
	}
	if _, err := http.Get(imageURL(url, vanilla, "v1.13.9", "hcloud-amd64.raw.xz")); err == nil {
		t.Error("server still answers after Close")
	}
}

// partitionNames reads the partition names of a raw image with sfdisk.
func partitionNames(t *testing.T, path string) []string {
	t.Helper()
	tab, _ := sfdisk(t, path)
	var names []string
	for _, p := range tab.PartitionTable.Partitions {
		names = append(names, p.Name)
	}
	return names
}

func TestOmitPartition(t *testing.T) {
	f, url := start(t, fakefactory.Options{})
	whole, wholeDigest, err := f.Image(vanilla, "v1.13.9", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	if got := partitionNames(t, whole); fmt.Sprint(got) != "[EFI BIOS BOOT META]" {
		t.Fatalf("whole image: %v", got)
	}
	if err := f.SetOmitPartition("STAT"); err == nil {
		t.Error("SetOmitPartition accepted an unknown name")
	}
	if err := f.SetOmitPartition("META"); err != nil {
		t.Fatal(err)
	}
	broken, brokenDigest, err := f.Image(vanilla, "v1.13.9", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	if got := partitionNames(t, broken); fmt.Sprint(got) != "[EFI BIOS BOOT]" || brokenDigest == wholeDigest {
		t.Errorf("without META: %v, digest %s (whole %s)", got, brokenDigest, wholeDigest)
	}
	// served as well: the download is the broken image
	_, body := do(t, "GET", imageURL(url, vanilla, "v1.13.9", "hcloud-amd64.raw.zst"), nil)
	raw, err := run(t, body, "zstd", "-dc")
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := os.ReadFile(broken); !bytes.Equal(raw, want) {
		t.Error("the served image is not the one without META")
	}
	// a partition the layout does not have leaves the image whole
	if err := f.SetOmitPartition("STATE"); err != nil {
		t.Fatal(err)
	}
	if _, d, err := f.Image(vanilla, "v1.13.9", "amd64"); err != nil || d != wholeDigest {
		t.Errorf("without STATE (which v1.13 lacks): %s, %v; want the whole image", d, err)
	}
	if err := f.SetOmitPartition(""); err != nil {
		t.Fatal(err)
	}
	if p, d, err := f.Image(vanilla, "v1.13.9", "amd64"); err != nil || p != whole || d != wholeDigest {
		t.Errorf("whole again: %s %s, %v", p, d, err)
	}
}

func TestDataKinds(t *testing.T) {
	sizes := map[fakefactory.DataKind]int{}
	for _, kind := range []fakefactory.DataKind{fakefactory.Incompressible, fakefactory.Compressible} {
		_, url := start(t, fakefactory.Options{Data: kind})
		_, body := do(t, "GET", imageURL(url, vanilla, "v1.13.9", "hcloud-amd64.raw.zst"), nil)
		sizes[kind] = len(body)
	}
	data, err := fakefactory.DataBytesOf("v1.13.9", "amd64", fakefactory.QuickScale)
	if err != nil {
		t.Fatal(err)
	}
	// zstd keeps incompressible data as it is and shrinks text-like data
	if n := sizes[fakefactory.Incompressible]; n < int(data) || n > int(data)*11/10 {
		t.Errorf("incompressible: %d compressed bytes for %d of data", n, data)
	}
	if n := sizes[fakefactory.Compressible]; n > int(data)/2 {
		t.Errorf("compressible: %d compressed bytes for %d of data", n, data)
	}
}

// TestBuildOnFirstRequest: the first requests for an image wait for one
// build, a client that gives up does not stop it, a built image is answered
// at once, and errors never wait.
func TestBuildOnFirstRequest(t *testing.T) {
	const delay = time.Second
	var logs lockedBuffer
	f, url := start(t, fakefactory.Options{BuildDelay: delay, Redirect: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	timed := func(method, u string, timeout time.Duration) (int, time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, method, u, nil)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, time.Since(start), err
		}
		defer resp.Body.Close()
		_, err = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, time.Since(start), err
	}

	u := imageURL(url, vanilla, "v1.13.9", "hcloud-amd64.raw.zst")
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if code, took, err := timed("HEAD", u, time.Minute); err != nil || code != 200 || took < delay {
				t.Errorf("first HEADs: %d after %s, %v; want 200 after %s", code, took, err, delay)
			}
		})
	}
	wg.Wait()
	if n := strings.Count(logs.String(), "hcloud-amd64.raw.zst\n"); n != 1 {
		t.Errorf("%d builds of the zst image, want 1:\n%s", n, logs.String())
	}
	for _, method := range []string{"HEAD", "GET"} {
		if code, took, err := timed(method, u, time.Minute); err != nil || code != 200 || took >= delay/2 {
			t.Errorf("%s of the built image: %d after %s, %v", method, code, took, err)
		}
	}

	// another format is another build; a GET waits for it before the redirect
	xz := imageURL(url, vanilla, "v1.13.9", "hcloud-amd64.raw.xz")
	if code, took, err := timed("GET", xz, time.Minute); err != nil || code != 200 || took < delay {
		t.Errorf("first GET of the xz image: %d after %s, %v", code, took, err)
	}

	// a client that gives up leaves the build running
	arm := imageURL(url, vanilla, "v1.13.9", "hcloud-arm64.raw.zst")
	begun := time.Now()
	if _, _, err := timed("HEAD", arm, delay/5); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("impatient HEAD: %v, want a timeout", err)
	}
	time.Sleep(delay - time.Since(begun) + delay/5) // the build is done by now
	if code, took, err := timed("HEAD", arm, time.Minute); err != nil || code != 200 || took >= delay/2 {
		t.Errorf("HEAD after the abandoned build: %d after %s, %v", code, took, err)
	}

	for _, tc := range []struct {
		u    string
		want int
	}{
		{imageURL(url, vanilla, "v1.99.0", "hcloud-amd64.raw.zst"), 404},
		{imageURL(url, strings.Repeat("0", 64), "v1.13.9", "hcloud-amd64.raw.zst"), 404},
		{imageURL(url, vanilla, "v1.13", "hcloud-amd64.raw.zst"), 500},
	} {
		if code, took, err := timed("HEAD", tc.u, time.Minute); err != nil || code != tc.want || took >= delay/2 {
			t.Errorf("HEAD %s: %d after %s, %v; want %d at once", tc.u, code, took, err, tc.want)
		}
	}
	if n := f.Count("HEAD", "/cdn/"); n != 0 {
		t.Errorf("%d HEADs redirected", n)
	}
}

func TestIdentify(t *testing.T) {
	f, url := start(t, fakefactory.Options{})
	_, amd, err := f.Image(vanilla, "v1.13.9", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	// made by a download, as a build makes it: what the download holds
	_, body := do(t, "GET", imageURL(url, qemu, "v1.12.8", "hcloud-arm64.raw.zst"), nil)
	raw, err := run(t, body, "zstd", "-dc")
	if err != nil {
		t.Fatal(err)
	}
	downloaded := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(downloaded, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	arm, err := disk.FileDigest(downloaded)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SetOmitPartition("META"); err != nil {
		t.Fatal(err)
	}
	_, broken, err := f.Image(vanilla, "v1.11.6", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		digest, version, arch string
		ok                    bool
	}{
		{amd, "v1.13.9", "amd64", true},
		{arm, "v1.12.8", "arm64", true},
		{broken, "", "", false},
		{"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "", "", false}, // an empty disk
	}
	for _, tt := range tests {
		v, a, ok := f.Identify(tt.digest)
		if v != tt.version || a != tt.arch || ok != tt.ok {
			t.Errorf("Identify(%s) = %q, %q, %v; want %q, %q, %v", tt.digest, v, a, ok, tt.version, tt.arch, tt.ok)
		}
	}
}
