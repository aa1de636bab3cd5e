package fakefactory

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"strconv"
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
	// firstUsableLBA follows the protective MBR, the GPT header and its
	// entry array.
	firstUsableLBA = 2 + gptTableSectors
	// dataRun is the largest run of data: data sits in runs of up to this
	// size, spread over each partition, like files in a file system. Runs
	// are long because xz -0 stores incompressible bytes as they are only
	// where they fill its chunks: random bytes cut in 64 KiB pieces among
	// zeros get LZMA-coded and decode at ~90 MB/s, which no real image does.
	dataRun = 8 << 20
	// minData is the least data a scaled image holds.
	minData = 64 << 10
)

// GPT partition type GUIDs used by Talos (siderolabs/talos
// internal/pkg/partition/constants.go).
const (
	TypeEFISystem = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	TypeBIOSBoot  = "21686148-6449-6E6F-744E-656564454649"
	TypeLinuxFS   = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
)

// AttrLegacyBIOSBootable is GPT attribute bit 2, which Talos sets on BIOS
// (gpt.WithLegacyBIOSBootableAttribute in internal/pkg/partition).
const AttrLegacyBIOSBootable = 1 << 2

// PartitionNames are the GPT partition names Talos images use, in order.
var PartitionNames = []string{"EFI", "BIOS", "BOOT", "META", "STATE", "EPHEMERAL"}

// Partition is one partition of an image. LBAs are 512-byte sectors,
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

// DataKind is what the data of an image is made of.
type DataKind int

const (
	// Incompressible data is pseudo-random bytes, as most of a real image
	// is: the kernel, the initramfs and the squashfs inside it are
	// compressed already. xz -0 stores such runs as they are and decodes
	// them at memory speed; only the zeros around them cost decoding time.
	Incompressible DataKind = iota
	// Compressible data is text-like (pseudo-random words of a small
	// vocabulary): xz -0 shrinks it about 2.8:1 and zstd 3:1, and decoding
	// it is real work for xz. Nothing in a real image is like that at this
	// scale; it shows how the pipelines compare when decoding weighs more.
	Compressible
)

func (k DataKind) String() string {
	switch k {
	case Incompressible:
		return "incompressible"
	case Compressible:
		return "compressible"
	}
	return "DataKind(" + strconv.Itoa(int(k)) + ")"
}

// partSpec is a partition of a real Talos image: size in MiB, 0 for "the
// rest of the disk".
type partSpec struct {
	name, typ string
	mib       int64
	attrs     uint64
}

// bootAssetsMiB is how much data one copy of the boot assets puts in an
// image: a kernel (~20 MiB) and an initramfs (~95 MiB; siderolabs/talos
// issue #6931 lists 55-94 MB for initramfs-amd64.xz), both compressed. A
// GRUB or an sd-boot image holds one copy (GRUB in BOOT, sd-boot in EFI as
// a UKI); a dual-boot image holds both, ~230 MiB, which compressed is the
// size of a real hcloud-amd64.raw.zst of v1.10+. An estimate, not a
// measurement: the factory publishes no sizes.
const bootAssetsMiB = 115

// talosLayout returns the partitions, raw size and data of the Talos hcloud
// image of version (any prerelease counts as its release, as quirks.New
// does) and arch, at real sizes. Sources, all in siderolabs/talos:
//   - partitions: cmd/installer/pkg/install/install.go getPartitionOptions
//     (boot partitions, then META; STATE and EPHEMERAL only in images of
//     Talos < 1.8, quirks SkipDataPartitions), cmd/installer/pkg/install/
//     manifest.go before v1.8, and the bootloaders' partition lists in
//     internal/app/machined/pkg/runtime/v1alpha1/bootloader/{grub,sdboot,dual};
//   - sizes: internal/pkg/partition (EFI 100 MiB, or EFI+BIOS+BOOT for a
//     UKI, which sd-boot and dual-boot use; BIOS 1 MiB legacy-bootable; META
//     1 MiB; STATE 100 MiB; EPHEMERAL the rest) and pkg/machinery/imager/
//     quirks/partitions.go (BOOT 2000 MiB from v1.11, 1000 MiB before);
//   - bootloader: pkg/imager/profile/output.go FillDefaults (GRUB before
//     v1.10, quirks UseSDBootForUEFI; then dual-boot on amd64, sd-boot on
//     arm64);
//   - raw size: pkg/imager/profile/default.go (hcloud: MinRAWDiskSize, 1246
//     MiB) plus FillDefaults' growth for the bigger BOOT and for dual-boot's
//     BIOS and BOOT, as pkg/imager/profile/testdata/hcloud-*.yaml record.
func talosLayout(version, arch string) (parts []partSpec, rawMiB, dataMiB int64, err error) {
	v, err := normalizeVersion(version)
	if err != nil {
		return nil, 0, 0, err
	}
	if arch != "amd64" && arch != "arm64" {
		return nil, 0, 0, fmt.Errorf("architecture %q: want amd64 or arm64", arch)
	}
	m := semverRE.FindStringSubmatch(v[1:])
	major, _ := strconv.ParseUint(m[1], 10, 64)
	minor, _ := strconv.ParseUint(m[2], 10, 64)
	before := func(mi uint64) bool { return major < 1 || major == 1 && minor < mi }

	bios := partSpec{"BIOS", TypeBIOSBoot, 1, AttrLegacyBIOSBootable}
	meta := partSpec{"META", TypeLinuxFS, 1, 0}
	grub := func(boot int64) []partSpec {
		return []partSpec{{"EFI", TypeEFISystem, 100, 0}, bios, {"BOOT", TypeLinuxFS, boot, 0}}
	}
	const minRaw = 1246
	switch {
	case before(8):
		return append(grub(1000), meta, partSpec{"STATE", TypeLinuxFS, 100, 0}, partSpec{"EPHEMERAL", TypeLinuxFS, 0, 0}),
			minRaw, bootAssetsMiB, nil
	case before(10):
		return append(grub(1000), meta), minRaw, bootAssetsMiB, nil
	}
	boot := int64(2000)
	if before(11) {
		boot = 1000
	}
	uki := partSpec{"EFI", TypeEFISystem, 100 + 1 + boot, 0}
	raw := minRaw + boot - 1000
	if arch == "arm64" {
		return []partSpec{uki, meta}, raw, bootAssetsMiB, nil
	}
	return []partSpec{uki, bios, {"BOOT", TypeLinuxFS, boot, 0}, meta}, raw + 1 + boot, 2 * bootAssetsMiB, nil
}

// LayoutOf returns the partitions and the raw size in bytes of the Talos
// hcloud image of (version, arch), scaled down by scale for quick tests: 1
// gives the real sizes (v1.13 amd64: EFI 2101, BIOS 1, BOOT 2000, META 1 MiB
// in 4247 MiB), larger values divide every partition and the raw size,
// keeping each partition at least 1 MiB and every boundary 1 MiB aligned, as
// Talos aligns them. Names, types, order and attributes never change.
func LayoutOf(version, arch string, scale int64) ([]Partition, int64, error) {
	specs, rawMiB, _, err := talosLayout(version, arch)
	if err != nil {
		return nil, 0, err
	}
	if scale < 1 {
		return nil, 0, fmt.Errorf("scale %d: want 1 or more", scale)
	}
	// 1 MiB in front, at least 1 MiB for a partition that takes the rest,
	// and 1 MiB behind for the backup GPT, which Talos' alignment leaves.
	need := int64(2)
	for _, s := range specs {
		need += max(1, s.mib/scale)
	}
	size := max((rawMiB+scale-1)/scale, need) * mib

	parts := make([]Partition, len(specs))
	start := int64(sectorsPerMiB)
	for i, s := range specs {
		end := start + max(1, s.mib/scale)*sectorsPerMiB
		if s.mib == 0 {
			// go-blockdevice aligns the end of a maximum-size partition
			// down to 1 MiB before the backup GPT
			end = size/sectorSize - sectorsPerMiB
		}
		parts[i] = Partition{Name: s.name, Type: s.typ, FirstLBA: start, LastLBA: end - 1, Attrs: s.attrs}
		start = end
	}
	return parts, size, nil
}

// DataBytesOf returns how much data (everything but zeros) the image of
// (version, arch) holds at scale: see bootAssetsMiB, divided by scale, at
// least 64 KiB.
func DataBytesOf(version, arch string, scale int64) (int64, error) {
	_, _, dataMiB, err := talosLayout(version, arch)
	if err != nil {
		return 0, err
	}
	if scale < 1 {
		return 0, fmt.Errorf("scale %d: want 1 or more", scale)
	}
	return max(minData, dataMiB*mib/scale&^(sectorSize-1)), nil
}

// WriteImage writes a synthetic raw disk image of size bytes to path: a
// protective MBR, primary and backup GPT with parts, and dataBytes of data
// of kind spread over the partitions in proportion to their sizes, in runs
// of up to 8 MiB evenly spaced within each; everything else is zero (and
// left as holes in the file). The content is a function of the arguments.
func WriteImage(path string, seed []byte, parts []Partition, size, dataBytes int64, kind DataKind) error {
	if err := checkLayout(parts, size); err != nil {
		return fmt.Errorf("write image %s: %w", path, err)
	}
	var room int64
	for _, p := range parts {
		room += p.Size()
	}
	if dataBytes < 0 || dataBytes > room {
		return fmt.Errorf("write image %s: data bytes %d: want 0..%d", path, dataBytes, room)
	}
	if kind != Incompressible && kind != Compressible {
		return fmt.Errorf("write image %s: unknown %v", path, kind)
	}

	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("write image: %w", err)
	}
	err = writeImage(f, seed, size, dataBytes, parts, kind)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write image %s: %w", path, err)
	}
	return nil
}

// checkLayout checks that parts fit a GPT disk of size bytes in order.
func checkLayout(parts []Partition, size int64) error {
	if size%sectorSize != 0 || size < (firstUsableLBA+1+gptTableSectors+1)*sectorSize {
		return fmt.Errorf("image size %d: want a multiple of %d bytes with room for two GPTs", size, sectorSize)
	}
	if len(parts) > gptEntries {
		return fmt.Errorf("%d partitions: a GPT holds %d", len(parts), gptEntries)
	}
	lastUsable := size/sectorSize - 2 - gptTableSectors
	next := int64(firstUsableLBA)
	for _, p := range parts {
		if p.FirstLBA < next || p.LastLBA < p.FirstLBA || p.LastLBA > lastUsable {
			return fmt.Errorf("partition %s (LBA %d-%d) does not fit after LBA %d and before %d", p.Name, p.FirstLBA, p.LastLBA, next, lastUsable)
		}
		if n := len(utf16.Encode([]rune(p.Name))); n > 36 {
			return fmt.Errorf("partition name %q: longer than 36 UTF-16 units", p.Name)
		}
		next = p.LastLBA + 1
	}
	return nil
}

func writeImage(f *os.File, seed []byte, size, dataBytes int64, parts []Partition, kind DataKind) error {
	if err := f.Truncate(size); err != nil {
		return err
	}
	if err := writeGPT(f, size, parts, newStream(seed, "guid")); err != nil {
		return err
	}
	return writeData(f, newStream(seed, "data"), dataBytes, parts, kind)
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
		binary.LittleEndian.PutUint64(h[40:], firstUsableLBA)
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

// writeData spreads dataBytes of data over the partitions in proportion to
// their sizes. In each partition the data sits in runs of up to dataRun
// bytes, 4 KiB aligned, with equal gaps between them.
func writeData(f *os.File, rnd *rand.ChaCha8, dataBytes int64, parts []Partition, kind DataKind) error {
	var room int64
	for _, p := range parts {
		room += p.Size()
	}
	// counting in sectors keeps the product in range
	shares := make([]int64, len(parts))
	var given int64
	for i, p := range parts {
		shares[i] = dataBytes / sectorSize * (p.Size() / sectorSize) / (room / sectorSize) * sectorSize
		given += shares[i]
	}
	// rounding leftovers go to the first partitions that still have room
	for i := range parts {
		extra := min(dataBytes-given, parts[i].Size()-shares[i])
		shares[i] += extra
		given += extra
	}

	fill := fillerFor(kind, rnd)
	buf := make([]byte, dataRun)
	for i, p := range parts {
		share := shares[i]
		if share == 0 {
			continue
		}
		runs := (share + dataRun - 1) / dataRun
		per := share / runs &^ 4095
		gap := (p.Size() - share) / runs &^ 4095
		off := p.FirstLBA * sectorSize
		for r := range runs {
			n := per
			if r == runs-1 {
				n = share - (runs-1)*per // ends at most (runs-1)*gap+share into p
			}
			for left := n; left > 0; {
				m := min(left, int64(len(buf)))
				fill(buf[:m])
				if _, err := f.WriteAt(buf[:m], off); err != nil {
					return err
				}
				off += m
				left -= m
			}
			off += gap
		}
	}
	return nil
}

// fillerFor returns a function that fills buffers with data of kind.
func fillerFor(kind DataKind, rnd *rand.ChaCha8) func([]byte) {
	if kind == Incompressible {
		return func(b []byte) { _, _ = rnd.Read(b) } // ChaCha8.Read never fails
	}
	// Words of 3-10 lowercase letters from a vocabulary of 4096, each
	// followed by a space.
	words := make([][]byte, 4096)
	for i := range words {
		w := make([]byte, 3+rnd.Uint64()%8, 11)
		for j := range w {
			w[j] = byte('a' + rnd.Uint64()%26)
		}
		words[i] = append(w, ' ')
	}
	var pending []byte // the rest of a word cut at the end of the last buffer
	return func(b []byte) {
		n := copy(b, pending)
		pending = pending[n:]
		for n < len(b) {
			w := words[rnd.Uint64()%uint64(len(words))]
			c := copy(b[n:], w)
			pending = w[c:]
			n += c
		}
	}
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
