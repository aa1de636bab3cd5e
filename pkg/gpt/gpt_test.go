package gpt_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/gpt"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/gpt/gpttest"
)

const (
	imageSize = 8 << 20
	lastLBA   = imageSize/gpt.SectorSize - 1
)

func TestReadValid(t *testing.T) {
	tests := []struct {
		name  string
		names []string
		disk  int64 // size of the disk the image is on; 0: the image's
	}{
		{"talos v1.13 amd64", []string{"EFI", "BIOS", "BOOT", "META"}, 0},
		{"talos arm64", []string{"EFI", "META"}, 0},
		{"talos v1.7", []string{"EFI", "BIOS", "BOOT", "META", "STATE", "EPHEMERAL"}, 0},
		{"image on a bigger disk", []string{"EFI", "META"}, 5 * imageSize},
		{"no partitions", nil, 0},
		{"non-ASCII name", []string{"dätä-ü"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := gpttest.Image(imageSize, gpttest.Layout(tt.names...))
			size := tt.disk
			if size == 0 {
				size = imageSize
			}
			tbl, err := gpt.Read(newDisk(img, size), size)
			if err != nil {
				t.Fatal(err)
			}
			if got := tbl.Names(); !slices.Equal(got, tt.names) {
				t.Errorf("names %q, want %q", got, tt.names)
			}
			if tbl.Backup.MyLBA != lastLBA || tbl.Primary.AlternateLBA != lastLBA {
				t.Errorf("backup header at LBA %d (primary says %d), want %d", tbl.Backup.MyLBA, tbl.Primary.AlternateLBA, lastLBA)
			}
			for i, p := range tbl.Partitions {
				if p.Number != i+1 || p.Type != gpttest.LinuxData || p.LastLBA-p.FirstLBA+1 != 2048 {
					t.Errorf("partition %+v", p)
				}
			}
		})
	}
}

// A table written by util-linux, an independent implementation.
func TestReadSfdiskTable(t *testing.T) {
	sfdisk, err := exec.LookPath("sfdisk")
	if err != nil {
		t.Skip("sfdisk (util-linux fdisk) is not installed")
	}
	path := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 64<<20); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sfdisk, "--quiet", path)
	cmd.Stdin = strings.NewReader("label: gpt\nsize=2MiB, type=U, name=EFI\nsize=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=BIOS\nsize=4MiB, type=L, name=META\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tbl, err := gpt.Read(f, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	if got := tbl.Names(); !slices.Equal(got, []string{"EFI", "BIOS", "META"}) {
		t.Errorf("names %q", got)
	}
	if got := tbl.Partitions[0].Type.String(); got != "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" {
		t.Errorf("EFI type %s", got)
	}
	if got := tbl.Partitions[1].Type.String(); got != "21686148-6449-6E6F-744E-656564454649" {
		t.Errorf("BIOS type %s", got)
	}
}

func TestReadRejects(t *testing.T) {
	mbrOnly := func(img []byte) {
		clear(img[gpt.SectorSize : 2*gpt.SectorSize])
		rec := img[446:462]
		rec[4] = 0x83 // Linux
		binary.LittleEndian.PutUint32(rec[8:12], 2048)
	}
	backupField := func(off int, v byte) func([]byte) {
		return func(img []byte) {
			img[lastLBA*gpt.SectorSize+off] ^= v
			gpttest.SetHeaderCRC(img, lastLBA)
		}
	}
	// primaryField sets a field of the primary header and fixes its CRC:
	// a header that is consistent in itself but not with the disk.
	primaryField := func(off int, v uint64) func([]byte) {
		return func(img []byte) {
			binary.LittleEndian.PutUint64(img[gpt.SectorSize+off:], v)
			gpttest.SetHeaderCRC(img, 1)
		}
	}
	tests := []struct {
		name    string
		parts   []gpttest.Partition
		corrupt func(img []byte)
		size    int64
		want    string
	}{
		{name: "blank disk", corrupt: func(img []byte) { clear(img) }, want: "no MBR boot signature"},
		{name: "MBR partition table", corrupt: mbrOnly, want: "not a GPT"},
		{name: "no protective record", corrupt: func(img []byte) { img[446+4] = 0x07 }, want: "not a GPT"},
		{name: "primary header CRC", corrupt: func(img []byte) { img[gpt.SectorSize+60] ^= 1 }, want: "primary GPT header: header CRC32"},
		{name: "primary header signature", corrupt: func(img []byte) { img[gpt.SectorSize] = 'X' }, want: `primary GPT header: no "EFI PART"`},
		{name: "primary entries CRC", corrupt: func(img []byte) { img[2*gpt.SectorSize+57] ^= 1 }, want: "primary GPT entries: CRC32 mismatch"},
		{name: "no backup header", corrupt: func(img []byte) { clear(img[lastLBA*gpt.SectorSize:]) }, want: "backup GPT header at LBA 16383"},
		{name: "backup header CRC", corrupt: func(img []byte) { img[lastLBA*gpt.SectorSize+60] ^= 1 }, want: "backup GPT header at LBA 16383: header CRC32"},
		{name: "backup disk GUID", corrupt: backupField(56, 1), want: "disk GUID"},
		{name: "backup usable range", corrupt: backupField(48, 1), want: "usable range"},
		{name: "backup points elsewhere", corrupt: backupField(32, 2), want: "points to a primary header at LBA 3"},
		{name: "backup entry count", corrupt: backupField(80, 0x40), want: "entries of 128 bytes"},
		{name: "backup entries differ", corrupt: func(img []byte) { img[(lastLBA-32)*gpt.SectorSize+57] ^= 1 }, want: "backup GPT entries differ"},
		{name: "primary elsewhere", corrupt: primaryField(24, 7), want: "claims to be at LBA 7"},
		{name: "huge backup LBA", corrupt: primaryField(32, 1<<63), want: "beyond the disk's last LBA"},
		{name: "huge last usable LBA", corrupt: primaryField(48, 1<<64-1), want: "usable range 2048-18446744073709551615 is empty or reaches"},
		{name: "no room for backup entries", corrupt: primaryField(48, lastLBA-2), want: "no room for the backup entries"},
		{name: "huge entries LBA", corrupt: primaryField(72, 1<<64-1), want: "entries at LBA 18446744073709551615 overlap"},
		{name: "entries in the usable range", corrupt: primaryField(72, 2040), want: "entries at LBA 2040 overlap"},
		{name: "too many entries", corrupt: primaryField(80, 1<<32-1|128<<32), want: "4294967295 entries of 128 bytes"},
		{name: "odd entry size", corrupt: primaryField(80, 128|100<<32), want: "entry size 100"},
		{name: "disk smaller than the table", size: imageSize - gpt.SectorSize, want: "beyond the disk's last LBA"},
		{name: "tiny disk", size: 4096, want: "too small"},
		{name: "partition outside the usable range", parts: []gpttest.Partition{{Name: "EFI", FirstLBA: 40, LastLBA: 4000}}, want: `partition 1 ("EFI") at LBA 40-4000 lies outside`},
		{name: "partition ends before it starts", parts: []gpttest.Partition{{Name: "META", FirstLBA: 4000, LastLBA: 3000}}, want: "lies outside"},
		{name: "overlapping partitions", parts: []gpttest.Partition{{Name: "A", FirstLBA: 2048, LastLBA: 5000}, {Name: "B", FirstLBA: 5000, LastLBA: 6000}},
			want: `partitions 1 ("A") and 2 ("B") overlap`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parts := tt.parts
			if parts == nil {
				parts = gpttest.Layout("EFI", "BIOS", "BOOT", "META")
			}
			img := gpttest.Image(imageSize, parts)
			if tt.corrupt != nil {
				tt.corrupt(img)
			}
			size := tt.size
			if size == 0 {
				size = imageSize
			}
			tbl, err := gpt.Read(newDisk(img, size), size)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Read = %v, %v; want an error with %q", tbl, err, tt.want)
			}
		})
	}
}

// A failing or short read is an error, not a table.
func TestReadErrors(t *testing.T) {
	img := gpttest.Image(imageSize, gpttest.Layout("EFI", "META"))
	broken := errors.New("connection lost")
	tests := []struct {
		name string
		r    io.ReaderAt
		want error
	}{
		{"failing reader", &failAfter{r: bytes.NewReader(img), n: 1, err: broken}, broken},
		{"short disk", bytes.NewReader(img[:imageSize/2]), io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := gpt.Read(tt.r, imageSize); !errors.Is(err, tt.want) {
				t.Errorf("Read: %v, want %v", err, tt.want)
			}
		})
	}
}

// Every byte the table's meaning depends on is protected: changing one
// byte of a header, an entry array, the MBR signature or the protective
// record fails the read (CRC32 detects every error burst of up to 32 bits);
// changing any other byte (boot code, header padding, the gap, data) does
// not. Read never panics.
func TestReadSingleByteChanges(t *testing.T) {
	img := gpttest.Image(imageSize, gpttest.Layout("EFI", "BIOS", "BOOT", "META"))
	var offs []int
	for off := 0; off < 34*gpt.SectorSize; off += 3 {
		offs = append(offs, off)
	}
	for off := (lastLBA - 32) * gpt.SectorSize; off < imageSize; off += 3 {
		offs = append(offs, off)
	}
	offs = append(offs, 2048*gpt.SectorSize, imageSize/2, (lastLBA-33)*gpt.SectorSize)
	for _, off := range offs {
		checkSingleByteChange(t, img, off, 0x5A)
	}
}

func FuzzReadSingleByteChange(f *testing.F) {
	img := gpttest.Image(imageSize, gpttest.Layout("EFI", "BIOS", "BOOT", "META"))
	for _, off := range []uint32{0, 446 + 4, 510, 512 + 16, 512 + 100, 1024, 17000, imageSize - 512, imageSize - 1} {
		f.Add(off, byte(1))
	}
	f.Fuzz(func(t *testing.T, off uint32, x byte) {
		if x == 0 {
			return
		}
		checkSingleByteChange(t, img, int(off%imageSize), x)
	})
}

// checkSingleByteChange xors img[off] with x (not 0) and checks that Read
// fails exactly when off is a protected byte. It restores img.
func checkSingleByteChange(t *testing.T, img []byte, off int, x byte) {
	t.Helper()
	const sec = gpt.SectorSize
	protected := func(off int) bool {
		in := func(lo, hi int) bool { return off >= lo && off < hi }
		return in(510, 512) || // MBR signature
			in(446+4, 446+5) || in(446+8, 446+12) || // type and start of the protective record
			in(sec, sec+92) || in(2*sec, 34*sec) || // primary header and entries
			in((lastLBA-32)*sec, lastLBA*sec) || in(lastLBA*sec, lastLBA*sec+92) // backup entries and header
	}
	img[off] ^= x
	defer func() { img[off] ^= x }()
	tbl, err := gpt.Read(bytes.NewReader(img), imageSize)
	if protected(off) && err == nil {
		t.Errorf("byte %d ^ %#x: read succeeded with %q", off, x, tbl.Names())
	}
	if !protected(off) && err != nil {
		t.Errorf("byte %d ^ %#x: %v", off, x, err)
	}
}

// newDisk returns img at the start of a disk of size bytes, zeros after it.
func newDisk(img []byte, size int64) io.ReaderAt {
	if size <= int64(len(img)) {
		return bytes.NewReader(img[:size])
	}
	return &paddedDisk{img: img, size: size}
}

type paddedDisk struct {
	img  []byte
	size int64
}

func (d *paddedDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= d.size {
		return 0, io.EOF
	}
	n := copy(p, d.img[min(off, int64(len(d.img))):])
	end := min(off+int64(len(p)), d.size)
	clear(p[n : end-off])
	if end-off < int64(len(p)) {
		return int(end - off), io.EOF
	}
	return len(p), nil
}

// failAfter fails every read after the first n.
type failAfter struct {
	r   io.ReaderAt
	n   int
	err error
}

func (f *failAfter) ReadAt(p []byte, off int64) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	f.n--
	return f.r.ReadAt(p, off)
}
