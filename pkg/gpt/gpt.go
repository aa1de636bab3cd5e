// Package gpt reads and checks a GUID Partition Table (UEFI Specification
// 2.10, chapter 5 "GUID Partition Table (GPT) Disk Layout") through an
// io.ReaderAt, so that a disk on another machine can be checked from the few
// sectors that hold its partition table.
//
// Read accepts a table only if every check passes: a protective MBR, a
// primary header and entry array with valid CRC32s, and a backup header and
// entry array that agree with them. A disk image written to a bigger disk
// keeps its backup header at the end of the image, not of the disk; Read
// looks for it where the primary header says it is.
package gpt

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"unicode/utf16"
)

// SectorSize is the logical sector size Read assumes: 512 bytes, as on
// Hetzner Cloud's disks and in Talos' disk images.
const SectorSize = 512

const (
	// headSectors is what Read reads first: the MBR, the primary header and
	// the usual entry array (128 entries of 128 bytes from LBA 2).
	headSectors = 34
	// minHeaderSize is the size of the header fields defined by UEFI.
	minHeaderSize = 92
	// minEntrySize is the smallest entry size UEFI allows (128 × 2^n).
	minEntrySize = 128
	// maxEntryBytes bounds the entry array a header may declare, so a
	// corrupt header cannot make Read fetch gigabytes. UEFI requires at
	// least 16 KiB; no known tool writes more than a few.
	maxEntryBytes = 1 << 20
	// nameBytes is the size of an entry's UTF-16LE name field.
	nameBytes = 72
)

var signature = []byte("EFI PART")

// GUID is a GUID as stored on disk: the first three fields little-endian.
type GUID [16]byte

// String formats g as "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".
func (g GUID) String() string {
	return fmt.Sprintf("%08X-%04X-%04X-%X-%X",
		binary.LittleEndian.Uint32(g[0:4]), binary.LittleEndian.Uint16(g[4:6]),
		binary.LittleEndian.Uint16(g[6:8]), g[8:10], g[10:16])
}

// Header is a GPT header (UEFI 2.10, table 5.5).
type Header struct {
	MyLBA          uint64
	AlternateLBA   uint64
	FirstUsableLBA uint64
	LastUsableLBA  uint64
	DiskGUID       GUID
	EntriesLBA     uint64
	NumEntries     uint32
	EntrySize      uint32
	EntriesCRC     uint32
}

// entrySectors is the number of sectors of the entry array.
func (h Header) entrySectors() uint64 {
	return (uint64(h.NumEntries)*uint64(h.EntrySize) + SectorSize - 1) / SectorSize
}

// Partition is a used entry of the partition array.
type Partition struct {
	Number     int // 1-based position in the array, the kernel's partition number
	Type       GUID
	ID         GUID
	FirstLBA   uint64
	LastLBA    uint64 // inclusive
	Attributes uint64
	Name       string
}

// Table is a checked partition table.
type Table struct {
	Primary, Backup Header
	Partitions      []Partition // used entries, in array order
}

// Names returns the partitions' names in array order.
func (t *Table) Names() []string {
	names := make([]string, len(t.Partitions))
	for i, p := range t.Partitions {
		names[i] = p.Name
	}
	return names
}

// Read reads and checks the GPT of a disk of size bytes through r. Every
// read is whole sectors at a sector boundary: typically one of 34 sectors
// at the start and one of 33 sectors ending at the backup header.
func Read(r io.ReaderAt, size int64) (*Table, error) {
	if size < 2*headSectors*SectorSize {
		return nil, fmt.Errorf("disk of %d bytes is too small for a GPT", size)
	}
	lastLBA := uint64(size/SectorSize) - 1
	head := make([]byte, headSectors*SectorSize)
	if err := readSectors(r, head, 0); err != nil {
		return nil, err
	}
	if err := checkProtectiveMBR(head[:SectorSize]); err != nil {
		return nil, err
	}
	primary, err := parseHeader(head[SectorSize : 2*SectorSize])
	if err != nil {
		return nil, fmt.Errorf("primary GPT header: %w", err)
	}
	if err := checkPrimary(primary, lastLBA); err != nil {
		return nil, fmt.Errorf("primary GPT header: %w", err)
	}
	entries, err := entryArray(r, primary, head, 0)
	if err != nil {
		return nil, fmt.Errorf("primary GPT entries: %w", err)
	}
	if crc32.ChecksumIEEE(entries) != primary.EntriesCRC {
		return nil, errors.New("primary GPT entries: CRC32 mismatch")
	}

	// The backup entries normally end just before the backup header:
	// read both at once.
	// checkPrimary made sure they fit between the usable range and the
	// header.
	start := primary.AlternateLBA - primary.entrySectors()
	tail := make([]byte, (primary.AlternateLBA-start+1)*SectorSize)
	if err := readSectors(r, tail, start); err != nil {
		return nil, err
	}
	backup, err := parseHeader(tail[len(tail)-SectorSize:])
	if err != nil {
		return nil, fmt.Errorf("backup GPT header at LBA %d: %w", primary.AlternateLBA, err)
	}
	if err := checkBackup(backup, primary); err != nil {
		return nil, fmt.Errorf("backup GPT header at LBA %d: %w", primary.AlternateLBA, err)
	}
	backupEntries, err := entryArray(r, backup, tail, start)
	if err != nil {
		return nil, fmt.Errorf("backup GPT entries: %w", err)
	}
	if !bytes.Equal(entries, backupEntries) {
		return nil, errors.New("backup GPT entries differ from the primary ones")
	}

	parts, err := parseEntries(entries, primary)
	if err != nil {
		return nil, err
	}
	return &Table{Primary: primary, Backup: backup, Partitions: parts}, nil
}

// readSectors fills p from the sector lba on.
func readSectors(r io.ReaderAt, p []byte, lba uint64) error {
	if _, err := r.ReadAt(p, int64(lba)*SectorSize); err != nil {
		return fmt.Errorf("read %d sectors at LBA %d: %w", len(p)/SectorSize, lba, err)
	}
	return nil
}

// checkProtectiveMBR requires the MBR boot signature and a partition record
// of type 0xEE from LBA 1 (UEFI 2.10, 5.2.3). Talos marks that record
// bootable for legacy BIOS boot (siderolabs/go-blockdevice
// partitioning/gpt/gpt.go, writePMBR), so the boot indicator is not checked.
func checkProtectiveMBR(mbr []byte) error {
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return errors.New("no MBR boot signature: the disk has no partition table")
	}
	for i := range 4 {
		rec := mbr[446+16*i : 446+16*(i+1)]
		if rec[4] == 0xEE && binary.LittleEndian.Uint32(rec[8:12]) == 1 {
			return nil
		}
	}
	return errors.New("MBR has no protective GPT record (type 0xEE): an MBR partition table, not a GPT")
}

// parseHeader decodes a header sector and checks its signature, size and
// CRC32.
func parseHeader(sec []byte) (Header, error) {
	if !bytes.Equal(sec[:8], signature) {
		return Header{}, errors.New(`no "EFI PART" signature`)
	}
	size := binary.LittleEndian.Uint32(sec[12:16])
	if size < minHeaderSize || size > SectorSize {
		return Header{}, fmt.Errorf("header size %d out of range", size)
	}
	want := binary.LittleEndian.Uint32(sec[16:20])
	b := slices.Clone(sec[:size])
	clear(b[16:20])
	if got := crc32.ChecksumIEEE(b); got != want {
		return Header{}, fmt.Errorf("header CRC32 %08x, stored %08x", got, want)
	}
	h := Header{
		MyLBA:          binary.LittleEndian.Uint64(sec[24:32]),
		AlternateLBA:   binary.LittleEndian.Uint64(sec[32:40]),
		FirstUsableLBA: binary.LittleEndian.Uint64(sec[40:48]),
		LastUsableLBA:  binary.LittleEndian.Uint64(sec[48:56]),
		EntriesLBA:     binary.LittleEndian.Uint64(sec[72:80]),
		NumEntries:     binary.LittleEndian.Uint32(sec[80:84]),
		EntrySize:      binary.LittleEndian.Uint32(sec[84:88]),
		EntriesCRC:     binary.LittleEndian.Uint32(sec[88:92]),
	}
	copy(h.DiskGUID[:], sec[56:72])
	es := h.EntrySize
	if es < minEntrySize || es&(es-1) != 0 {
		return Header{}, fmt.Errorf("entry size %d is not 128 × 2^n", es)
	}
	if h.NumEntries == 0 || uint64(h.NumEntries)*uint64(es) > maxEntryBytes {
		return Header{}, fmt.Errorf("%d entries of %d bytes", h.NumEntries, es)
	}
	return h, nil
}

// checkPrimary checks the primary header's LBAs against each other and the
// disk, in an order that keeps every sum and difference in range.
func checkPrimary(h Header, lastLBA uint64) error {
	n := h.entrySectors()
	switch {
	case h.MyLBA != 1:
		return fmt.Errorf("claims to be at LBA %d, read at LBA 1", h.MyLBA)
	case h.AlternateLBA > lastLBA:
		return fmt.Errorf("backup header at LBA %d lies beyond the disk's last LBA %d", h.AlternateLBA, lastLBA)
	case h.FirstUsableLBA > h.LastUsableLBA || h.LastUsableLBA >= h.AlternateLBA:
		return fmt.Errorf("usable range %d-%d is empty or reaches the backup header at LBA %d", h.FirstUsableLBA, h.LastUsableLBA, h.AlternateLBA)
	case h.AlternateLBA-h.LastUsableLBA-1 < n:
		return fmt.Errorf("no room for the backup entries between the usable range ending at LBA %d and the backup header at LBA %d", h.LastUsableLBA, h.AlternateLBA)
	case h.EntriesLBA < 2 || h.EntriesLBA > h.FirstUsableLBA || h.FirstUsableLBA-h.EntriesLBA < n:
		return fmt.Errorf("entries at LBA %d overlap LBA 0-1 or the usable range from LBA %d", h.EntriesLBA, h.FirstUsableLBA)
	}
	return nil
}

// checkBackup checks that the backup header describes the same table as the
// primary one from the other end of the disk (UEFI 2.10, 5.3.2).
func checkBackup(b, p Header) error {
	switch {
	case b.MyLBA != p.AlternateLBA:
		return fmt.Errorf("claims to be at LBA %d", b.MyLBA)
	case b.AlternateLBA != p.MyLBA:
		return fmt.Errorf("points to a primary header at LBA %d, not %d", b.AlternateLBA, p.MyLBA)
	case b.DiskGUID != p.DiskGUID:
		return fmt.Errorf("disk GUID %s, primary %s", b.DiskGUID, p.DiskGUID)
	case b.FirstUsableLBA != p.FirstUsableLBA || b.LastUsableLBA != p.LastUsableLBA:
		return fmt.Errorf("usable range %d-%d, primary %d-%d", b.FirstUsableLBA, b.LastUsableLBA, p.FirstUsableLBA, p.LastUsableLBA)
	case b.NumEntries != p.NumEntries || b.EntrySize != p.EntrySize || b.EntriesCRC != p.EntriesCRC:
		return fmt.Errorf("%d entries of %d bytes with CRC32 %08x, primary %d of %d with %08x",
			b.NumEntries, b.EntrySize, b.EntriesCRC, p.NumEntries, p.EntrySize, p.EntriesCRC)
	case b.EntriesLBA <= b.LastUsableLBA || b.EntriesLBA > b.MyLBA || b.MyLBA-b.EntriesLBA < b.entrySectors():
		return fmt.Errorf("entries at LBA %d overlap the usable range or the header", b.EntriesLBA)
	}
	return nil
}

// entryArray returns h's entry array, from buf (which holds the sectors from
// bufLBA on) when it is there, else read through r.
func entryArray(r io.ReaderAt, h Header, buf []byte, bufLBA uint64) ([]byte, error) {
	n := uint64(h.NumEntries) * uint64(h.EntrySize)
	if h.EntriesLBA >= bufLBA {
		off := (h.EntriesLBA - bufLBA) * SectorSize
		if off+n <= uint64(len(buf)) {
			return buf[off : off+n], nil
		}
	}
	b := make([]byte, h.entrySectors()*SectorSize)
	if err := readSectors(r, b, h.EntriesLBA); err != nil {
		return nil, err
	}
	return b[:n], nil
}

// parseEntries decodes the used entries (those with a type GUID) and
// checks that each lies in the usable range and none overlap.
func parseEntries(entries []byte, h Header) ([]Partition, error) {
	var parts []Partition
	for i := range int(h.NumEntries) {
		e := entries[i*int(h.EntrySize) : (i+1)*int(h.EntrySize)]
		var p Partition
		copy(p.Type[:], e[0:16])
		if p.Type == (GUID{}) {
			continue
		}
		copy(p.ID[:], e[16:32])
		p.Number = i + 1
		p.FirstLBA = binary.LittleEndian.Uint64(e[32:40])
		p.LastLBA = binary.LittleEndian.Uint64(e[40:48])
		p.Attributes = binary.LittleEndian.Uint64(e[48:56])
		p.Name = decodeName(e[56 : 56+nameBytes])
		if p.FirstLBA > p.LastLBA || p.FirstLBA < h.FirstUsableLBA || p.LastLBA > h.LastUsableLBA {
			return nil, fmt.Errorf("partition %d (%q) at LBA %d-%d lies outside the usable range %d-%d",
				p.Number, p.Name, p.FirstLBA, p.LastLBA, h.FirstUsableLBA, h.LastUsableLBA)
		}
		parts = append(parts, p)
	}
	byStart := slices.Clone(parts)
	slices.SortFunc(byStart, func(a, b Partition) int { return cmp.Compare(a.FirstLBA, b.FirstLBA) })
	for i := 1; i < len(byStart); i++ {
		if a, b := byStart[i-1], byStart[i]; b.FirstLBA <= a.LastLBA {
			return nil, fmt.Errorf("partitions %d (%q) and %d (%q) overlap", a.Number, a.Name, b.Number, b.Name)
		}
	}
	return parts, nil
}

// decodeName decodes a NUL-terminated UTF-16LE name.
func decodeName(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}
