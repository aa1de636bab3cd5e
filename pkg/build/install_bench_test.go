package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/disk"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakefactory"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakerescue"
	"github.com/hcloud-k8s/hcloud-k8s/infra/testenv"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// The benchmarks write the real-sized Talos hcloud image the way the Builder
// does and the way its peers do, side by side, each inside an emulated
// rescue system over SSH, on a fresh sparse disk and on a used one, for both
// kinds of data the factory makes: incompressible (what a real image mostly
// holds) and compressible. They check the figures the README gives from
// measurements by hand, and keep them current.

const (
	// v1.13 amd64: 4247 MiB raw with ~230 MiB of data (fakefactory.LayoutOf,
	// fakefactory.DataBytesOf).
	benchVersion = "v1.13.9"
	benchArch    = "amd64"
	// benchDiskSlack is how much bigger than the image the disk is: the old
	// data a used disk keeps behind the image is what stale-MB counts.
	benchDiskSlack = 512 << 20
)

// The targets the Builder's pipeline is held to, on each kind of data.
const (
	// targetVsUpload: at least this many times faster than
	// hcloud-upload-image on a used disk.
	targetVsUpload = 3.0
	// targetVsLimit: at most this many times the time of writing the data
	// alone (the faster limit pipeline).
	targetVsLimit = 1.3
)

// benchPipeline is one way of writing the image to /dev/sda.
type benchPipeline struct {
	name string
	// discards is set when the pipeline discards the whole disk first: then
	// nothing of the disk's old content may remain. The others overwrite the
	// image's span only.
	discards bool
	// stage runs in the rescue system before the timed script.
	stage  string
	script string
}

// benchEnv is what all benchmarks share: the images and the rescue pool. It
// lives as long as the test binary (see TestMain in main_test.go).
type benchEnv struct {
	pool      *fakerescue.Pool
	images    []*benchImage // one per kind of data
	imageSize int64         // raw bytes
	dataBytes int64
	// dropErr says why the page cache cannot be dropped; nil if it can.
	dropErr   error
	generated time.Duration // how long setting up took
	nextID    atomic.Int64
}

// benchImage is the image of one kind of data: a factory serving it and the
// pipelines that write it.
type benchImage struct {
	kind      fakefactory.DataKind
	factory   *fakefactory.Factory
	zst, xz   string // image URLs
	rawPath   string
	rawDigest string
	pipelines []benchPipeline
}

var bench struct {
	once sync.Once
	env  *benchEnv
	err  error
}

// benchSetup generates the image and its compressed forms once per process.
func benchSetup(b *testing.B) *benchEnv {
	b.Helper()
	testenv.NeedRoot(b) // the rescue pool
	bench.once.Do(func() {
		start := time.Now()
		bench.env, bench.err = newBenchEnv()
		if bench.err == nil {
			bench.env.generated = time.Since(start)
		}
	})
	if bench.err != nil {
		b.Fatal(bench.err)
	}
	return bench.env
}

func newBenchEnv() (_ *benchEnv, err error) {
	e := &benchEnv{}
	if _, e.imageSize, err = fakefactory.LayoutOf(benchVersion, benchArch, 1); err != nil {
		return nil, err
	}
	if e.dataBytes, err = fakefactory.DataBytesOf(benchVersion, benchArch, 1); err != nil {
		return nil, err
	}
	e.pool = fakerescue.New(fakerescue.Options{DiskSize: e.imageSize + benchDiskSlack, BootDelay: 10 * time.Millisecond, Port: rescuePort})
	defer func() {
		if err != nil {
			err = errors.Join(err, e.close())
		}
	}()
	for _, kind := range []fakefactory.DataKind{fakefactory.Incompressible, fakefactory.Compressible} {
		img := &benchImage{kind: kind, factory: fakefactory.New(fakefactory.Options{Data: kind, Redirect: true})}
		e.images = append(e.images, img)
		if err := img.setup(); err != nil {
			return nil, err
		}
	}
	e.dropErr = dropCaches()
	return e, nil
}

// setup generates the image at the real size and makes its pipelines.
func (img *benchImage) setup() (err error) {
	base, err := img.factory.Start()
	if err != nil {
		return err
	}
	if img.rawPath, img.rawDigest, err = img.factory.Image(talos.VanillaSchematic, benchVersion, benchArch); err != nil {
		return err
	}
	fc := &talos.Factory{BaseURL: base}
	if img.zst, err = fc.ImageURL(talos.VanillaSchematic, benchVersion, benchArch, talos.Zstd); err != nil {
		return err
	}
	if img.xz, err = fc.ImageURL(talos.VanillaSchematic, benchVersion, benchArch, talos.XZ); err != nil {
		return err
	}
	// The factory compresses on the first request: not in a timed run.
	if err := img.fetch(context.Background()); err != nil {
		return err
	}
	ours, err := installScript(talos.Image{URL: img.zst, Compression: talos.Zstd}, writeAttempts, writeRetryDelay)
	if err != nil {
		return err
	}
	img.pipelines = []benchPipeline{
		{name: "ours", discards: true, script: ours},
		{
			name:   "talos-docs",
			script: fmt.Sprintf("wget -O /tmp/x.raw.xz %s && xz -d -c /tmp/x.raw.xz | dd of=/dev/sda\n", shellQuote(img.xz)),
		},
		{
			name:     "hcloud-upload-image",
			discards: true,
			script: fmt.Sprintf("set -euo pipefail\nblkdiscard --force /dev/sda\n"+
				"wget -O - %s | xz -cd | dd of=/dev/sda bs=4M conv=sparse && sync\n", shellQuote(img.xz)),
		},
	}
	// The limit: the raw image in the rescue system's RAM (its /tmp is a
	// tmpfs), so there is no download and no decoding, only data to write.
	// With 4 MiB blocks dd skips only 4 MiB runs of zeros, which a disk image
	// whose files are spread over its partitions hardly has; 4 KiB blocks
	// write little more than the data.
	stage := fmt.Sprintf("set -euo pipefail\ncurl -fsSL %s | zstd -dq -o /tmp/x.raw\n", shellQuote(img.zst))
	for _, bs := range []string{"4M", "4K"} {
		img.pipelines = append(img.pipelines, benchPipeline{
			name:     "limit-" + bs,
			discards: true,
			stage:    stage,
			script:   "set -euo pipefail\nblkdiscard --force /dev/sda\ndd if=/tmp/x.raw of=/dev/sda bs=" + bs + " conv=sparse\nsync\n",
		})
	}
	return nil
}

func (e *benchEnv) close() error {
	var errs []error
	if e.pool != nil {
		errs = append(errs, e.pool.Close())
	}
	for _, img := range e.images {
		errs = append(errs, img.factory.Close())
	}
	return errors.Join(errs...)
}

// fetch downloads both compressed images, which also puts them in the page
// cache: a download over a fast network, not a read from our disk, is what
// the pipelines should wait for.
func (img *benchImage) fetch(ctx context.Context) error {
	for _, u := range []string{img.zst, img.xz} {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("fetch %s: %w", u, err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("fetch %s: %w", u, err)
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("fetch %s: %s", u, resp.Status)
		}
	}
	return nil
}

// BenchmarkInstall writes the image of each kind of data with each pipeline
// on a fresh sparse disk and on a dirty one: filled with random data and, if
// the kernel lets us, with the page cache dropped, like a used disk on a
// freshly booted machine. Metrics: s/op of the pipeline alone, MB/s of raw
// image size, alloc-MB allocated by the disk file afterwards, stale-MB of old
// data left behind the image. A disk that does not hold the image fails the
// run. After the pipelines of a kind, its "targets" entry reports how ours
// compares with hcloud-upload-image and with the limit.
func BenchmarkInstall(b *testing.B) {
	e := benchSetup(b)
	// Only leaf benchmarks print their logs without -v.
	var noteOnce sync.Once
	note := func(b *testing.B) {
		noteOnce.Do(func() {
			b.Logf("image: %s %s, %d MiB raw, %d MiB data; generated in %s", benchVersion, benchArch,
				e.imageSize>>20, e.dataBytes>>20, e.generated.Round(time.Millisecond))
			if e.dropErr != nil {
				b.Logf("page cache NOT dropped before dirty runs: %v", e.dropErr)
			} else {
				b.Log("page cache dropped before dirty runs")
			}
		})
	}
	for _, img := range e.images {
		secs := map[string]float64{} // "pipeline/fresh|dirty" -> s/op
		for _, p := range img.pipelines {
			for _, dirty := range []bool{false, true} {
				name := p.name + "/fresh"
				if dirty {
					name = p.name + "/dirty"
				}
				b.Run(img.kind.String()+"/"+name, func(b *testing.B) {
					note(b)
					var total time.Duration
					var res benchResult
					for range b.N {
						res = e.run(b, img, p, dirty)
						total += res.elapsed
					}
					s := total.Seconds() / float64(b.N)
					secs[name] = s
					b.ReportMetric(0, "ns/op") // suppressed: s/op says it readably, without setup
					b.ReportMetric(s, "s/op")
					b.ReportMetric(float64(e.imageSize)/1e6/s, "MB/s")
					b.ReportMetric(float64(res.alloc)/1e6, "alloc-MB")
					b.ReportMetric(float64(res.stale)/1e6, "stale-MB")
				})
			}
		}
		b.Run(img.kind.String()+"/targets", func(b *testing.B) {
			reportTargets(b, secs)
		})
	}
}

// reportTargets reports, from the s/op of the pipelines of one kind of
// data, how many times faster ours is than hcloud-upload-image on a dirty
// disk and how many times the limit's time it takes, fresh and dirty, and
// logs whether the targets are met. It does not fail the benchmark: the
// figures depend on the machine.
func reportTargets(b *testing.B, secs map[string]float64) {
	for _, name := range []string{"ours/dirty", "hcloud-upload-image/dirty", "limit-4M/dirty", "limit-4K/dirty"} {
		if secs[name] == 0 {
			b.Skipf("no figure for %s: run the whole benchmark", name)
		}
	}
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	vsUpload := secs["hcloud-upload-image/dirty"] / secs["ours/dirty"]
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(vsUpload, "x-faster-than-upload-dirty")
	b.Logf("dirty disk: ours %.2f s, hcloud-upload-image %.2f s: %.1fx faster (target >= %.1fx): %s",
		secs["ours/dirty"], secs["hcloud-upload-image/dirty"], vsUpload, targetVsUpload, verdict(vsUpload >= targetVsUpload))
	for _, disk := range []string{"fresh", "dirty"} {
		limit := min(secs["limit-4M/"+disk], secs["limit-4K/"+disk])
		if limit == 0 {
			continue
		}
		vsLimit := secs["ours/"+disk] / limit
		b.ReportMetric(vsLimit, "x-limit-"+disk)
		b.Logf("%s disk: ours %.2f s, writing the data alone %.2f s: %.2fx (target <= %.1fx): %s",
			disk, secs["ours/"+disk], limit, vsLimit, targetVsLimit, verdict(vsLimit <= targetVsLimit))
	}
}

type benchResult struct {
	elapsed time.Duration
	alloc   int64 // bytes the disk file allocates
	stale   int64 // non-zero bytes behind the image
}

// run writes the image once with p on a new machine and checks the disk.
func (e *benchEnv) run(b *testing.B, img *benchImage, p benchPipeline, dirty bool) benchResult {
	ctx, cancel := context.WithTimeout(b.Context(), 10*time.Minute)
	defer cancel()
	id := e.nextID.Add(1)
	var prepare func(string) error
	if dirty {
		prepare = fillRandom
	}
	client, diskPath, err := newRescue(ctx, e.pool, id, prepare)
	if err != nil {
		b.Fatalf("rescue host: %v", err)
	}
	defer func() {
		client.Close()
		if err := e.pool.Delete(id); err != nil {
			b.Errorf("delete machine: %v", err)
		}
	}()
	if p.stage != "" {
		if err := client.Run(ctx, p.stage, nil); err != nil {
			b.Fatalf("%s: stage: %v", p.name, err)
		}
	}
	if dirty && e.dropErr == nil {
		if err := dropCaches(); err != nil {
			b.Fatal(err)
		}
	}
	// Back into the cache what a real rescue system would have in RAM or
	// fetch from the network: its programs and the images.
	if err := client.Run(ctx, warmCommand, nil); err != nil {
		b.Fatalf("warm up: %v", err)
	}
	if err := img.fetch(ctx); err != nil {
		b.Fatal(err)
	}

	start := time.Now()
	// Every pipeline runs under bash, as the Builder's and both peers' do.
	err = client.RunStdin(ctx, scriptCommand, strings.NewReader(p.script), nil)
	res := benchResult{elapsed: time.Since(start)}
	if err != nil {
		b.Fatalf("%s: %v", p.name, err)
	}
	if res.alloc, err = allocated(diskPath); err != nil {
		b.Fatal(err)
	}
	if res.stale, err = e.checkDisk(img, diskPath, p.discards); err != nil {
		b.Fatalf("%s: %v", p.name, err)
	}
	return res
}

// warmCommand loads the programs the pipelines run.
const warmCommand = `for c in curl wget xz zstd dd sync getopt stat fallocate; do "$c" --version >/dev/null; done`

// checkDisk checks that the disk holds the image. After a discard the whole
// disk must equal the image followed by zeros. Otherwise the image's span
// must equal the image; stale returns how much old data is left behind it,
// which a snapshot of the disk would carry along.
func (e *benchEnv) checkDisk(img *benchImage, diskPath string, discards bool) (stale int64, err error) {
	got, err := disk.FileDigest(diskPath)
	if err != nil {
		return 0, err
	}
	if got == img.rawDigest {
		return 0, nil
	}
	if discards {
		return 0, fmt.Errorf("disk digest %s, want the image's %s", got, img.rawDigest)
	}
	off, err := firstDifference(diskPath, img.rawPath, e.imageSize)
	if err != nil {
		return 0, err
	}
	if off >= 0 {
		return 0, fmt.Errorf("disk differs from the image at byte %d", off)
	}
	return nonZeroBytes(diskPath, e.imageSize)
}

// firstDifference returns the offset of the first byte in which the first n
// bytes of files a and b differ, or -1.
func firstDifference(a, b string, n int64) (int64, error) {
	fa, err := os.Open(a)
	if err != nil {
		return 0, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return 0, err
	}
	defer fb.Close()
	const chunk = 4 << 20
	ba, bb := make([]byte, chunk), make([]byte, chunk)
	for off := int64(0); off < n; off += chunk {
		m := min(chunk, n-off)
		if _, err := fa.ReadAt(ba[:m], off); err != nil {
			return 0, fmt.Errorf("read %s: %w", a, err)
		}
		if _, err := fb.ReadAt(bb[:m], off); err != nil {
			return 0, fmt.Errorf("read %s: %w", b, err)
		}
		if !bytes.Equal(ba[:m], bb[:m]) {
			for i := range m {
				if ba[i] != bb[i] {
					return off + i, nil
				}
			}
		}
	}
	return -1, nil
}

// nonZeroBytes returns the size of the 4 KiB blocks of the file from off on
// that hold anything but zeros.
func nonZeroBytes(path string, off int64) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	const block = 4 << 10
	buf, zero := make([]byte, 1<<20), make([]byte, block)
	var n int64
	for {
		m, err := f.ReadAt(buf, off)
		for i := 0; i+block <= m; i += block {
			if !bytes.Equal(buf[i:i+block], zero) {
				n += block
			}
		}
		off += int64(m)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return 0, fmt.Errorf("read %s: %w", path, err)
		}
	}
}

// allocated returns the bytes the file occupies on its filesystem.
func allocated(path string) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return st.Sys().(*syscall.Stat_t).Blocks * 512, nil
}

// fillRandom overwrites the whole file with random data and writes it back
// to the disk, as a disk that held an OS is full of old data.
func fillRandom(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	rnd := rand.NewChaCha8([32]byte{'d', 'i', 'r', 't', 'y'})
	buf := make([]byte, 4<<20)
	for off := int64(0); off < st.Size(); off += int64(len(buf)) {
		m := min(int64(len(buf)), st.Size()-off)
		_, _ = rnd.Read(buf[:m]) // ChaCha8.Read never fails
		if _, err := f.WriteAt(buf[:m], off); err != nil {
			return fmt.Errorf("fill %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fill %s: %w", path, err)
	}
	return f.Close()
}

// dropCaches writes dirty pages back and empties the page cache, so that the
// disk's old content has to be read from the device, as after a boot.
func dropCaches() error {
	syscall.Sync()
	f, err := os.OpenFile("/proc/sys/vm/drop_caches", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("drop page cache: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString("3\n"); err != nil {
		return fmt.Errorf("drop page cache: %w", err)
	}
	return f.Close()
}
