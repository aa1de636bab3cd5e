package fakefactory

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/disk"
)

// job is one generation of a cache file; concurrent requests share it.
type job struct {
	done chan struct{}
	err  error
}

var errClosed = errors.New("factory closed")

// ensure makes path exist, running build at most once at a time per path
// even under concurrent calls. build writes to a temporary file that is
// renamed into place on success, so a file in the cache is always complete
// and files left by an earlier run with the same Dir are reused. The build
// runs under the factory's context, not ctx: a client that goes away stops
// waiting but does not abort a build others may wait for.
func (f *Factory) ensure(ctx context.Context, path string, build func(ctx context.Context, tmp string) error) error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return errClosed
	}
	j, ok := f.jobs[path]
	if !ok {
		j = &job{done: make(chan struct{})}
		if _, err := os.Stat(path); err == nil {
			close(j.done)
		} else {
			f.gen.Add(1)
			go f.run(path, j, build)
		}
		f.jobs[path] = j
	}
	f.mu.Unlock()

	select {
	case <-j.done:
		return j.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *Factory) run(path string, j *job, build func(ctx context.Context, tmp string) error) {
	defer f.gen.Done()
	j.err = f.build(path, build)
	if j.err != nil {
		f.log.Error("generate", "path", path, "err", j.err)
		f.mu.Lock()
		delete(f.jobs, path) // let a later request try again
		f.mu.Unlock()
	} else {
		f.log.Info("generated", "path", path)
	}
	close(j.done)
}

func (f *Factory) build(path string, build func(ctx context.Context, tmp string) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("generate %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("generate %s: %w", path, err)
	}
	tmp.Close()
	if err := build(f.ctx, tmp.Name()); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("generate %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("generate %s: %w", path, err)
	}
	return nil
}

// target is one image: (schematic, version, arch), and the partition left
// out of it if any (SetOmitPartition).
type target struct {
	schematic, version, arch string
	omit                     string
}

// rawPath returns where the raw image of t is cached. What shapes the
// content is part of the path, so a Dir shared between runs with other
// options stays consistent.
func (f *Factory) rawPath(t target) string {
	return filepath.Join(f.shapeDir(t.omit), t.schematic, t.version, "hcloud-"+t.arch+".raw")
}

// shapeDir is the directory of the raw images of this factory's scale and
// data, lacking the partition omit if it is not empty.
func (f *Factory) shapeDir(omit string) string {
	shape := fmt.Sprintf("scale%d-%s", f.opts.Scale, f.opts.Data)
	if omit != "" {
		shape += "-without-" + omit
	}
	return filepath.Join(f.dir, shape)
}

// raw generates (once) and returns the raw image of t.
func (f *Factory) raw(ctx context.Context, t target) (string, error) {
	path := f.rawPath(t)
	seed := []byte(t.schematic + "\x00" + t.version + "\x00" + t.arch)
	err := f.ensure(ctx, path, func(_ context.Context, tmp string) error {
		parts, size, err := LayoutOf(t.version, t.arch, f.opts.Scale)
		if err != nil {
			return err
		}
		data, err := DataBytesOf(t.version, t.arch, f.opts.Scale)
		if err != nil {
			return err
		}
		parts = slices.DeleteFunc(parts, func(p Partition) bool { return p.Name == t.omit })
		var room int64
		for _, p := range parts {
			room += p.Size()
		}
		return WriteImage(tmp, seed, parts, size, min(data, room), f.opts.Data)
	})
	return path, err
}

// compressed builds (once) and returns the compressed image of t in format
// "xz" or "zst". Building takes Options.BuildDelay and runs detached from
// ctx, as the real factory's single-flight build does (image-factory
// internal/asset/asset.go Builder.Build: singleflight DoChan on a context of
// its own with a 20-minute timeout; the request only stops waiting).
func (f *Factory) compressed(ctx context.Context, t target, format string) (string, error) {
	path := f.rawPath(t) + "." + format
	err := f.ensure(ctx, path, func(ctx context.Context, tmp string) error {
		select {
		case <-time.After(f.opts.BuildDelay):
		case <-ctx.Done():
			return ctx.Err()
		}
		raw, err := f.raw(ctx, t)
		if err != nil {
			return err
		}
		return compress(ctx, format, raw, tmp)
	})
	return path, err
}

// compress runs the system compressor like the Talos imager does: xz -0 -T0
// makes independent 1 MiB blocks that xz -T0 -d decodes in parallel.
func compress(ctx context.Context, format, src, dst string) error {
	var cmd *exec.Cmd
	switch format {
	case "xz":
		cmd = exec.CommandContext(ctx, "xz", "-0", "-T0", "-c", "--", src)
	case "zst":
		cmd = exec.CommandContext(ctx, "zstd", "-q", "-T0", "-c", "--", src)
	default:
		return fmt.Errorf("compress: unknown format %q", format)
	}
	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("compress: %w", err)
	}
	defer out.Close()
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", cmd.Path, err, strings.TrimSpace(stderr.String()))
	}
	return out.Close()
}

// Image returns the raw image the factory serves for (schematic, version,
// arch), generating it if needed, and its disk.FileDigest, so a test can
// compare it with what a disk holds after a build: as served now, without
// the partition SetOmitPartition names. Availability (SetAvailable) and
// BuildDelay are ignored; the schematic and version must be known.
func (f *Factory) Image(schematic, version, arch string) (rawPath, digest string, err error) {
	t, err := f.lookup(schematic, version, arch, false)
	if err != nil {
		return "", "", fmt.Errorf("image %s/%s/%s: %w", schematic, version, arch, err)
	}
	rawPath, err = f.raw(context.Background(), t)
	if err != nil {
		return "", "", err
	}
	if digest, err = f.digest(rawPath); err != nil {
		return "", "", err
	}
	return rawPath, digest, nil
}

// digest returns disk.FileDigest of a raw image, computed once per path: a
// path's content never changes.
func (f *Factory) digest(rawPath string) (string, error) {
	f.mu.Lock()
	digest, ok := f.digests[rawPath]
	f.mu.Unlock()
	if ok {
		return digest, nil
	}
	digest, err := disk.FileDigest(rawPath)
	if err != nil {
		return "", err
	}
	f.mu.Lock()
	f.digests[rawPath] = digest
	f.mu.Unlock()
	return digest, nil
}

// Identify tells which image a disk holds from its disk.FileDigest: the
// version and architecture (amd64, arm64) of a whole raw image this factory
// has made, in this run or an earlier one with the same Dir. An image that
// lacks a partition (SetOmitPartition) is not reported: like any broken
// build, it does not boot. It reads each image once, so the first call after
// new images were made takes a moment at real sizes.
func (f *Factory) Identify(digest string) (version, arch string, ok bool) {
	raws, err := filepath.Glob(filepath.Join(f.shapeDir(""), "*", "*", "hcloud-*.raw"))
	if err != nil {
		return "", "", false // the pattern is well-formed
	}
	for _, raw := range raws {
		d, err := f.digest(raw)
		if err != nil || d != digest {
			continue
		}
		arch = strings.TrimSuffix(strings.TrimPrefix(filepath.Base(raw), "hcloud-"), ".raw")
		return filepath.Base(filepath.Dir(raw)), arch, true
	}
	return "", "", false
}
