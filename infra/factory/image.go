package factory

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"strings"
	"unicode/utf16"
)

const (
	sectorSize    = 512
	mib           = 1 << 20
	sectorsPerMiB = mib / sectorSize
	gptEntries    = 128
	gptEntrySize  = 128
	// gptTableSectors is the size of one partition entry array.
	gptTableSectors = gptEntries * gptEntrySize / sectorSize
	// dataChunk is the unit in which pseudo-random data is placed, so data
	// sits in many runs separated by zeros, like files in a filesystem.
	dataChunk = 64 << 10
)

// GPT partition type GUIDs used by Talos.
const (
	TypeEFISystem = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	TypeBIOSBoot  = "21686148-6449-6E6F-744E-656564454649"
	TypeLinuxFS   = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
)

// attrLegacyBIOSBootable is GPT attribute bit 2, which Talos sets on BIOS.
const attrLegacyBIOSBootable = 1 << 2

// talosPartitions is the Talos hcloud image layout with nominal sizes.
var talosPartitions = []struct {
	name  string
	typ   string
	mib   int64
	attrs uint64
}{
	{"EFI", TypeEFISystem, 100, 0},
	{"BIOS", TypeBIOSBoot, 1, attrLegacyBIOSBootable},
	{"BOOT", TypeLinuxFS, 1000, 0},
	{"META", TypeLinuxFS, 1, 0},
	{"STATE", TypeLinuxFS, 100, 0},
}

// MinImageSize is the smallest image WriteImage accepts: the 1 MiB gap in
// front, five 1 MiB partitions and room for the backup GPT.
const MinImageSize = 7 * mib

// Partition is one partition of a synthetic image. LBAs are 512-byte sectors,
// LastLBA inclusive, as in the GPT.
type Partition struct {
	Name     string
	Type     string // GPT partition type GUID
	FirstLBA int64
	LastLBA  int64
	Attrs    uint64
}

// Size returns the partition size in bytes.
func (p Partition) Size() int64 { return (p.LastLBA - p.FirstLBA + 1) * sectorSize }

// Layout returns the partitions of an image of size bytes: EFI, BIOS, BOOT,
// META and STATE, 1 MiB aligned. Images large enough for Talos' nominal sizes
// (100, 1, 1000, 1, 100 MiB) get them and a zero tail; smaller ones keep BIOS
// and META at 1 MiB and share the rest among EFI, BOOT and STATE 1:10:1.
func Layout(size int64) ([]Partition, error) {
	if size%sectorSize != 0 || size < MinImageSize {
		return nil, fmt.Errorf("image size %d: want a multiple of %d bytes and at least %d", size, sectorSize, MinImageSize)
	}
	lastUsable := size/sectorSize - 1 - gptTableSectors - 1
	// whole MiBs from the 1 MiB mark up to the last usable sector
	avail := (lastUsable+1)/sectorsPerMiB - 1

	sizes := make([]int64, len(talosPartitions))
	var nominal int64
	for i, p := range talosPartitions {
		sizes[i] = p.mib
		nominal += p.mib
	}
	if avail < nominal {
		rest := avail - 2 // BIOS and META keep 1 MiB
		efi := max(1, rest/12)
		state := max(1, rest/12)
		sizes = []int64{efi, 1, rest - efi - state, 1, state}
	}

	parts := make([]Partition, len(talosPartitions))
	start := int64(sectorsPerMiB)
	for i, p := range talosPartitions {
		end := start + sizes[i]*sectorsPerMiB
		parts[i] = Partition{Name: p.name, Type: p.typ, FirstLBA: start, LastLBA: end - 1, Attrs: p.attrs}
		start = end
	}
	return parts, nil
}

// WriteImage writes a synthetic Talos raw disk image of size bytes to path: a
// protective MBR, primary and backup GPT with the Talos partitions, and
// dataBytes of pseudo-random (incompressible) data spread over the partitions
// in proportion to their sizes; everything else is zero (and left as holes
// in the file). The content is a function of seed, size and dataBytes.
func WriteImage(path string, seed []byte, size, dataBytes int64) error {
	parts, err := Layout(size)
	if err != nil {
		return fmt.Errorf("write image %s: %w", path, err)
	}
	var room int64
	for _, p := range parts {
		room += p.Size()
	}
	if dataBytes < 0 || dataBytes > room {
		return fmt.Errorf("write image %s: data bytes %d: want 0..%d", path, dataBytes, room)
	}

	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("write image: %w", err)
	}
	err = writeImage(f, seed, size, dataBytes, parts)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write image %s: %w", path, err)
	}
	return nil
}

func writeImage(f *os.File, seed []byte, size, dataBytes int64, parts []Partition) error {
	if err := f.Truncate(size); err != nil {
		return err
	}
	if err := writeGPT(f, size, parts, newStream(seed, "guid")); err != nil {
		return err
	}
	return writeData(f, newStream(seed, "data"), dataBytes, parts)
}

// newStream returns a deterministic pseudo-random stream for one purpose.
func newStream(seed []byte, purpose string) *rand.ChaCha8 {
	return rand.NewChaCha8(sha256.Sum256(append([]byte(purpose+"\x00"), seed...)))
}

// writeGPT writes the protective MBR and both GPT copies.
func writeGPT(f *os.File, size int64, parts []Partition, rnd *rand.ChaCha8) error {
	lastLBA := size/sectorSize - 1
	diskGUID := randomGUID(rnd)

	table := make([]byte, gptTableSectors*sectorSize)
	for i, p := range parts {
		e := table[i*gptEntrySize : (i+1)*gptEntrySize]
		typ := mustGUID(p.Type)
		copy(e[0:16], typ[:])
		uniq := randomGUID(rnd)
		copy(e[16:32], uniq[:])
		binary.LittleEndian.PutUint64(e[32:], uint64(p.FirstLBA))
		binary.LittleEndian.PutUint64(e[40:], uint64(p.LastLBA))
		binary.LittleEndian.PutUint64(e[48:], p.Attrs)
		for j, u := range utf16.Encode([]rune(p.Name)) {
			binary.LittleEndian.PutUint16(e[56+2*j:], u)
		}
	}
	tableCRC := crc32.ChecksumIEEE(table)

	header := func(my, alternate, entries int64) []byte {
		h := make([]byte, sectorSize)
		copy(h, "EFI PART")
		binary.LittleEndian.PutUint32(h[8:], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:], 92)
		binary.LittleEndian.PutUint64(h[24:], uint64(my))
		binary.LittleEndian.PutUint64(h[32:], uint64(alternate))
		binary.LittleEndian.PutUint64(h[40:], 2+gptTableSectors)
		binary.LittleEndian.PutUint64(h[48:], uint64(lastLBA-gptTableSectors-1))
		copy(h[56:72], diskGUID[:])
		binary.LittleEndian.PutUint64(h[72:], uint64(entries))
		binary.LittleEndian.PutUint32(h[80:], gptEntries)
		binary.LittleEndian.PutUint32(h[84:], gptEntrySize)
		binary.LittleEndian.PutUint32(h[88:], tableCRC)
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
		return h
	}

	mbr := make([]byte, sectorSize)
	pe := mbr[446:462]
	copy(pe[1:4], []byte{0x00, 0x02, 0x00}) // CHS of LBA 1
	pe[4] = 0xEE                            // GPT protective
	copy(pe[5:8], []byte{0xFF, 0xFF, 0xFF})
	binary.LittleEndian.PutUint32(pe[8:], 1)
	binary.LittleEndian.PutUint32(pe[12:], uint32(min(lastLBA, 0xFFFFFFFF)))
	mbr[510], mbr[511] = 0x55, 0xAA

	backupTable := lastLBA - gptTableSectors
	writes := []struct {
		lba  int64
		data []byte
	}{
		{0, mbr},
		{1, header(1, lastLBA, 2)},
		{2, table},
		{backupTable, table},
		{lastLBA, header(lastLBA, 1, backupTable)},
	}
	for _, w := range writes {
		if _, err := f.WriteAt(w.data, w.lba*sectorSize); err != nil {
			return err
		}
	}
	return nil
}

// writeData spreads dataBytes of pseudo-random data over the partitions in
// proportion to their sizes, in chunks evenly spaced across each partition.
func writeData(f *os.File, rnd *rand.ChaCha8, dataBytes int64, parts []Partition) error {
	var room int64
	for _, p := range parts {
		room += p.Size()
	}
	// partitions are whole MiBs; counting in MiBs keeps the product in range
	shares := make([]int64, len(parts))
	var given int64
	for i, p := range parts {
		shares[i] = dataBytes * (p.Size() / mib) / (room / mib)
		given += shares[i]
	}
	// rounding leftovers go to the first partitions that still have room
	for i := range parts {
		extra := min(dataBytes-given, parts[i].Size()-shares[i])
		shares[i] += extra
		given += extra
	}

	buf := make([]byte, dataChunk)
	for i, p := range parts {
		share := shares[i]
		if share == 0 {
			continue
		}
		chunks := (share + dataChunk - 1) / dataChunk
		stride := p.Size() / chunks &^ (sectorSize - 1)
		if stride < dataChunk {
			stride = dataChunk
		}
		off := p.FirstLBA * sectorSize
		for left := share; left > 0; left -= dataChunk {
			n := min(left, dataChunk)
			_, _ = rnd.Read(buf[:n]) // ChaCha8.Read never fails
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				return err
			}
			off += stride
		}
	}
	return nil
}

// randomGUID returns a random (version 4) GUID in GPT on-disk byte order.
func randomGUID(rnd *rand.ChaCha8) [16]byte {
	var g [16]byte
	_, _ = rnd.Read(g[:])
	g[6] = g[6]&0x0f | 0x40
	g[8] = g[8]&0x3f | 0x80
	return toDiskOrder(g)
}

// mustGUID parses a textual GUID into GPT on-disk byte order.
func mustGUID(s string) [16]byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		panic(errors.New("bad GUID constant " + s))
	}
	return toDiskOrder([16]byte(b))
}

// toDiskOrder converts a GUID from its textual (big-endian) byte order to the
// mixed-endian GPT order: the first three fields are little-endian.
func toDiskOrder(g [16]byte) [16]byte {
	d := g
	d[0], d[1], d[2], d[3] = g[3], g[2], g[1], g[0]
	d[4], d[5] = g[5], g[4]
	d[6], d[7] = g[7], g[6]
	return d
}
