// Package disk holds what the emulators share about disk contents: a digest
// that is equal for an image file and a disk that holds that image followed by
// zeros, so a test can prove what a build wrote.
package disk

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// FileDigest returns "sha256:<hex>" of the file's content with trailing zero
// bytes removed. A disk file that holds an image and nothing after it (zeros,
// holes) has the same digest as the image file itself.
func FileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("digest %s: %w", path, err)
	}
	defer f.Close()
	end, err := contentEnd(f)
	if err != nil {
		return "", fmt.Errorf("digest %s: %w", path, err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, end)); err != nil {
		return "", fmt.Errorf("digest %s: %w", path, err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// lastDataEnd returns the end of the file's last data extent, skipping the
// holes of a sparse file so a large empty disk is not read.
func lastDataEnd(f *os.File, size int64) (int64, error) {
	var last, off int64
	for off < size {
		data, err := f.Seek(off, seekData)
		if errors.Is(err, syscall.ENXIO) {
			break
		}
		if err != nil {
			return size, nil // no SEEK_DATA support: scan everything
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil {
			return size, nil
		}
		last, off = hole, hole
	}
	return last, nil
}

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// contentEnd returns the offset just past the last non-zero byte. It reads
// backwards from the last data extent.
func contentEnd(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	end, err := lastDataEnd(f, st.Size())
	if err != nil {
		return 0, err
	}
	const block = 1 << 20
	buf := make([]byte, block)
	for end > 0 {
		n := int64(block)
		if end < n {
			n = end
		}
		off := end - n
		if _, err := f.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		for i := n - 1; i >= 0; i-- {
			if buf[i] != 0 {
				return off + i + 1, nil
			}
		}
		end = off
	}
	return 0, nil
}

// Copy makes dst a sparse file of size bytes that holds src's content (its
// bytes up to the last non-zero one) and returns the digest of that content,
// as FileDigest does, from the same pass. Only non-zero blocks are written,
// so a disk holding a small image costs little room. It fails if the content
// does not fit in size bytes.
func Copy(dst, src string, size int64) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	end, err := contentEnd(in)
	if err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	if end > size {
		return "", fmt.Errorf("copy %s: %d bytes of content do not fit in %d", src, end, size)
	}
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", fmt.Errorf("copy to %s: %w", dst, err)
	}
	defer out.Close()
	if err := out.Truncate(size); err != nil {
		return "", fmt.Errorf("copy to %s: %w", dst, err)
	}
	h := sha256.New()
	const block = 1 << 20
	buf, zeros := make([]byte, block), make([]byte, block)
	for off := int64(0); off < end; off += block {
		n := min(block, end-off)
		if _, err := in.ReadAt(buf[:n], off); err != nil {
			return "", fmt.Errorf("copy %s: %w", src, err)
		}
		h.Write(buf[:n])
		if bytes.Equal(buf[:n], zeros[:n]) {
			continue // a hole reads as zeros
		}
		if _, err := out.WriteAt(buf[:n], off); err != nil {
			return "", fmt.Errorf("copy to %s: %w", dst, err)
		}
	}
	if err := out.Close(); err != nil {
		return "", fmt.Errorf("copy to %s: %w", dst, err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
