package build

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/disk"
	"github.com/hcloud-k8s/hcloud-k8s/infra/factory"
	"github.com/hcloud-k8s/hcloud-k8s/infra/rescue"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/ssh"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// rescuePort is where the emulated rescue systems listen, as on Hetzner.
const rescuePort = 22

// newRescue creates machine id in pool, lets prepare (if not nil) work on
// its disk file, boots its rescue system with a fresh key and logs in as the
// Builder does. It returns the client and the disk file; the caller closes
// the client and deletes the machine. On error the machine is deleted.
func newRescue(ctx context.Context, pool *rescue.Pool, id int64, prepare func(diskPath string) error) (_ *ssh.Client, diskPath string, err error) {
	ip, err := pool.Create(id, 0)
	if err != nil {
		return nil, "", err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, pool.Delete(id))
		}
	}()
	if diskPath, err = pool.DiskPath(id); err != nil {
		return nil, "", err
	}
	if prepare != nil {
		if err := prepare(diskPath); err != nil {
			return nil, "", fmt.Errorf("prepare disk of machine %d: %w", id, err)
		}
	}
	key, err := ssh.NewKey()
	if err != nil {
		return nil, "", err
	}
	if err := pool.Boot(id, &rescue.Rescue{AuthorizedKeys: []string{key.AuthorizedKey()}}); err != nil {
		return nil, "", err
	}
	d := &ssh.Dialer{Key: key, Addr: net.JoinHostPort(ip, strconv.Itoa(rescuePort)), Logger: slog.New(slog.DiscardHandler)}
	client, err := d.Dial(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("log in to machine %d: %w", id, err)
	}
	return client, diskPath, nil
}

// TestInstallScriptOnRescueHost runs the install script where the Builder
// runs it, in an emulated rescue system over SSH, on a disk that holds old
// data, against the emulated factory: good images must land on the disk byte
// for byte, and a cut-short download must fail the script.
func TestInstallScriptOnRescueHost(t *testing.T) {
	f := factory.New(factory.Options{Scale: factory.QuickScale, Redirect: true})
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("close factory: %v", err)
		}
	})
	base, err := f.Start()
	if err != nil {
		t.Fatal(err)
	}
	const version, arch = "v1.13.9", "amd64"
	_, want, err := f.Image(talos.VanillaSchematic, version, arch)
	if err != nil {
		t.Fatal(err)
	}
	_, imageSize, err := factory.LayoutOf(version, arch, factory.QuickScale)
	if err != nil {
		t.Fatal(err)
	}
	// Dirty puts old data inside the image's span and behind it: only a
	// discard followed by a sparse write gives back the image exactly.
	pool := rescue.New(rescue.Options{Dir: t.TempDir(), DiskSize: 2 * imageSize, Dirty: true,
		BootDelay: 10 * time.Millisecond, Port: rescuePort})
	t.Cleanup(func() {
		if err := pool.Close(); err != nil {
			t.Errorf("close rescue pool: %v", err)
		}
	})
	fc := &talos.Factory{BaseURL: base}

	tests := []struct {
		name     string
		c        talos.Compression
		truncate factory.Truncation
		wantOK   bool
	}{
		{"zstd", talos.Zstd, factory.TruncateNone, true},
		{"xz", talos.XZ, factory.TruncateNone, true},
		{"zstd short object", talos.Zstd, factory.TruncateShort, false},
		{"zstd cut connection", talos.Zstd, factory.TruncateCut, false},
		{"xz short object", talos.XZ, factory.TruncateShort, false},
		{"xz cut connection", talos.XZ, factory.TruncateCut, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.SetTruncate(tt.truncate) // the factory is shared: subtests run one by one
			url, err := fc.ImageURL(talos.VanillaSchematic, version, arch, tt.c)
			if err != nil {
				t.Fatal(err)
			}
			script, err := installScript(talos.Image{URL: url, Compression: tt.c})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			id := int64(i + 1)
			client, diskPath, err := newRescue(ctx, pool, id, nil)
			if err != nil {
				t.Fatalf("rescue host: %v", err)
			}
			t.Cleanup(func() {
				client.Close()
				if err := pool.Delete(id); err != nil {
					t.Errorf("delete machine: %v", err)
				}
			})

			err = client.Run(ctx, script, nil)
			if !tt.wantOK {
				var exit *ssh.ExitError
				if !errors.As(err, &exit) || exit.Status == 0 {
					t.Fatalf("script on a truncated download: err = %v, want a non-zero exit status", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("script: %v", err)
			}
			got, err := disk.FileDigest(diskPath)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("disk digest %s, want the image's %s", got, want)
			}
		})
	}
	if n := f.Count("GET", "/cdn/"); n != len(tests) {
		t.Errorf("%d image downloads, want %d (one per script)", n, len(tests))
	}
}
