// Package gpttest makes GPT disk images for tests, laid out as Talos writes
// them (siderolabs/go-blockdevice partitioning/gpt/gpt.go): a protective
// MBR, 128 entries of 128 bytes after the primary header, partitions from
// 1 MiB on, and the backup entries and header in the last 33 sectors.
package gpttest

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"strings"
	"unicode/utf16"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/gpt"
)

const (
	numEntries   = 128
	entrySize    = 128
	entrySectors = numEntries * entrySize / gpt.SectorSize
	mibSectors   = 1 << 20 / gpt.SectorSize
)

// LinuxData is the partition type "Linux filesystem data".
var LinuxData = GUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")

// GUID parses "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" into its on-disk form,
// or panics.
func GUID(s string) gpt.GUID {
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		panic(fmt.Sprintf("gpttest: bad GUID %q", s))
	}
	var g gpt.GUID
	binary.LittleEndian.PutUint32(g[0:4], binary.BigEndian.Uint32(b[0:4]))
	binary.LittleEndian.PutUint16(g[4:6], binary.BigEndian.Uint16(b[4:6]))
	binary.LittleEndian.PutUint16(g[6:8], binary.BigEndian.Uint16(b[6:8]))
	copy(g[8:], b[8:])
	return g
}

// Partition is a partition to put in an image.
type Partition struct {
	Name              string
	Type              gpt.GUID // zero: LinuxData
	FirstLBA, LastLBA uint64   // inclusive
}

// Layout returns partitions with the given names, 1 MiB each, one after
// the other from 1 MiB on.
func Layout(names ...string) []Partition {
	parts := make([]Partition, len(names))
	for i, n := range names {
		first := uint64(i+1) * mibSectors
		parts[i] = Partition{Name: n, FirstLBA: first, LastLBA: first + mibSectors - 1}
	}
	return parts
}

// Image returns a disk image of size bytes (a multiple of 1 MiB, room for
// the partitions) holding a GPT with parts and nothing else.
func Image(size int64, parts []Partition) []byte {
	img := make([]byte, size)
	last := uint64(size/gpt.SectorSize) - 1

	mbr := img[:gpt.SectorSize]
	rec := mbr[446:462]
	rec[4] = 0xEE
	binary.LittleEndian.PutUint32(rec[8:12], 1)
	binary.LittleEndian.PutUint32(rec[12:16], uint32(min(last, 0xFFFFFFFF)))
	mbr[510], mbr[511] = 0x55, 0xAA

	entries := make([]byte, numEntries*entrySize)
	for i, p := range parts {
		e := entries[i*entrySize : (i+1)*entrySize]
		typ := p.Type
		if typ == (gpt.GUID{}) {
			typ = LinuxData
		}
		copy(e[0:16], typ[:])
		e[16], e[17] = byte(i+1), 0xAA // unique partition GUID
		binary.LittleEndian.PutUint64(e[32:40], p.FirstLBA)
		binary.LittleEndian.PutUint64(e[40:48], p.LastLBA)
		for j, c := range utf16.Encode([]rune(p.Name)) {
			binary.LittleEndian.PutUint16(e[56+2*j:], c)
		}
	}
	backupEntries := last - entrySectors
	for _, h := range []struct{ my, alt, entries uint64 }{{1, last, 2}, {last, 1, backupEntries}} {
		copy(img[h.entries*gpt.SectorSize:], entries)
		b := img[h.my*gpt.SectorSize : (h.my+1)*gpt.SectorSize]
		copy(b, "EFI PART")
		binary.LittleEndian.PutUint32(b[8:12], 0x00010000)
		binary.LittleEndian.PutUint32(b[12:16], 92)
		binary.LittleEndian.PutUint64(b[24:32], h.my)
		binary.LittleEndian.PutUint64(b[32:40], h.alt)
		binary.LittleEndian.PutUint64(b[40:48], mibSectors) // 1 MiB aligned, as Talos
		binary.LittleEndian.PutUint64(b[48:56], backupEntries-1)
		copy(b[56:72], "disk-guid-test01")
		binary.LittleEndian.PutUint64(b[72:80], h.entries)
		binary.LittleEndian.PutUint32(b[80:84], numEntries)
		binary.LittleEndian.PutUint32(b[84:88], entrySize)
		binary.LittleEndian.PutUint32(b[88:92], crc32.ChecksumIEEE(entries))
		SetHeaderCRC(img, h.my)
	}
	return img
}

// SetHeaderCRC recomputes the CRC32 of the header at lba, so that a test
// can change a field and still pass the CRC check.
func SetHeaderCRC(img []byte, lba uint64) {
	h := img[lba*gpt.SectorSize : lba*gpt.SectorSize+92]
	clear(h[16:20])
	binary.LittleEndian.PutUint32(h[16:20], crc32.ChecksumIEEE(h))
}
