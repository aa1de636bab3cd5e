package disk_test

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/hcloud-k8s/hcloud-k8s/infra/disk"
)

// write makes a file of size bytes holding each chunk at its offset.
func write(t *testing.T, path string, size int64, chunks map[int64][]byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, b := range chunks {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCopy(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name   string
		size   int64
		chunks map[int64][]byte
	}{
		{"empty", 8 * mib, nil},
		{"data with a hole", 8 * mib, map[int64][]byte{0: []byte("start"), 5*mib + 3: []byte("later")}},
		// Zeros written as data (as dd writes them) are not copied as data.
		{"written zeros", 8 * mib, map[int64][]byte{0: []byte("x"), 1: make([]byte, 4*mib), 6 * mib: []byte("y")}},
		{"data at the very end", 3 * mib, map[int64][]byte{3*mib - 1: {1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			write(t, src, tt.size, tt.chunks)
			// a stale, bigger destination is replaced
			write(t, dst, 2*tt.size, map[int64][]byte{tt.size + 7: []byte("stale")})
			want, err := disk.FileDigest(src)
			if err != nil {
				t.Fatal(err)
			}
			got, err := disk.Copy(dst, src, tt.size)
			if err != nil || got != want {
				t.Fatalf("Copy = %s, %v; want %s", got, err, want)
			}
			if d, err := disk.FileDigest(dst); err != nil || d != want {
				t.Errorf("copy's digest %s, %v; want %s", d, err, want)
			}
			a, _ := os.ReadFile(src)
			b, _ := os.ReadFile(dst)
			if !bytes.Equal(a, b) {
				t.Error("copy differs from the source")
			}
			var st syscall.Stat_t
			if err := syscall.Stat(dst, &st); err != nil {
				t.Fatal(err)
			}
			// At most the 1 MiB blocks that hold non-zero data, which a
			// chunk may straddle (512-byte units).
			var data int64
			for _, b := range tt.chunks {
				if !bytes.Equal(b, make([]byte, len(b))) {
					data++
				}
			}
			if limit := data * 2 * mib / 512; st.Blocks > limit {
				t.Errorf("copy allocates %d blocks, want at most %d", st.Blocks, limit)
			}
		})
	}
}

func TestCopyTooSmall(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	write(t, src, 4<<20, map[int64][]byte{3 << 20: []byte("data")})
	if _, err := disk.Copy(filepath.Join(dir, "dst"), src, 2<<20); err == nil {
		t.Error("Copy into a smaller disk succeeded")
	}
}
