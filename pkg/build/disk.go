package build

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/gpt"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// scriptCommand runs a script given on stdin under bash, whatever root's
// login shell is: the script needs pipefail, which dash (Debian's /bin/sh)
// lacks. The real tools do the same: hcloud-upload-image wraps its command
// in "bash -c" because "pipefail does not work correctly without wrapping
// in bash" (apricote/hcloud-upload-image hcloudimages/client.go,
// assembleCommand); terraform-hcloud-kubernetes' Packer template sets
// inline_shebang = "/bin/bash -e" (packer/image_amd64.pkr.hcl).
const scriptCommand = "bash -s"

// The install script tries the whole write this many times, this long
// apart.
const (
	writeAttempts   = 3
	writeRetryDelay = 5 * time.Second
)

// writeImage writes img to the disk of the rescue system.
func writeImage(ctx context.Context, remote Remote, img talos.Image) error {
	script, err := installScript(img, writeAttempts, writeRetryDelay)
	if err != nil {
		return err
	}
	if err := remote.RunStdin(ctx, scriptCommand, strings.NewReader(script), nil); err != nil {
		return fmt.Errorf("write %s to the disk: %w", img.URL, err)
	}
	return nil
}

// installScript returns the bash script that writes img to /dev/sda: it
// tries up to attempts times, delay apart, each time from an empty disk.
// The URLs are validated and quoted; nothing else comes from outside.
func installScript(img talos.Image, attempts int, delay time.Duration) (string, error) {
	u, err := url.Parse(img.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return "", fmt.Errorf("image URL %q is not an http(s) URL", img.URL)
	}
	var zst, xz string
	switch img.Compression {
	case talos.Zstd:
		zst, xz = img.URL, strings.TrimSuffix(img.URL, ".zst")+".xz"
	case talos.XZ:
		xz = img.URL
	default:
		return "", fmt.Errorf("unknown compression %q", img.Compression)
	}
	return fmt.Sprintf("set -euo pipefail\nzst=%s\nxz=%s\nattempts=%d\ndelay=%d\n",
		shellQuote(zst), shellQuote(xz), max(attempts, 1), int(delay.Seconds())) + installBody, nil
}

// installBody writes the image, given $zst (may be empty), $xz, $attempts
// and $delay.
//
// It empties the disk first so that only the image's non-zero blocks need
// writing: a Talos image is mostly zeros, and on a used disk writing every
// zero costs 10x (make bench measures the candidates). blkdiscard succeeding
// does not promise zeros (Linux, Documentation/ABI/stable/sysfs-block:
// discard_zeroes_data "will always return 0. Don't rely on any specific
// behavior for discards"), so sample blocks are read back; if the discard
// left data, "blkdiscard --zeroout" (BLKZEROOUT, util-linux blkdiscard(8))
// zero-fills the disk, which is guaranteed but may take a while. Only a disk
// that cannot be zeroed gets every block of the image written.
//
// Neither curl nor wget retries by itself: a retried transfer sends its data
// into the pipe again ("not possible with redirected input or output ...
// you may receive duplicate data", curl docs/cmdline-opts/retry-all-errors.md),
// and the decoder would write that to the disk. Instead the whole write is
// retried, from a freshly emptied disk. Stalls fail instead of hanging: curl
// gives up below 1 byte/s for 60 s, wget after 60 s without data. The real
// references all use wget (infra/README.md, rescue system); the rescue system's tools are not
// documented, so curl is preferred where it exists and wget is the fallback.
//
// zstd decodes 4-6x faster than xz and writes sparsely by seeking over
// zeros; "1<>" opens the disk without truncating it. Without zstd the xz
// image goes through dd. A truncated or corrupt stream fails the decoder,
// pipefail the pipeline. All tools but curl, wget and zstd come from
// coreutils and util-linux, which Debian (the rescue system's base) marks
// Essential.
//
// bash reads a script from stdin as it runs it: everything is in functions,
// and main runs with its stdin elsewhere, so no command eats the script.
const installBody = `
fetch() {
	if command -v curl >/dev/null; then
		curl -fsSL --connect-timeout 20 --speed-limit 1 --speed-time 60 "$1"
	else
		wget --no-verbose --tries=1 --dns-timeout=20 --connect-timeout=20 --read-timeout=60 -O - "$1"
	fi
}

# zeroed tells whether the disk reads back zeros in 9 blocks of 512 KiB
# spread from its first to its last block. A failed read counts as data.
zeroed() {
	local size blocks i nonzero bs=524288 n=9
	size=$(blockdev --getsize64 /dev/sda) || return 1
	blocks=$((size / bs))
	[ "$blocks" -gt 0 ] || return 1
	for ((i = 0; i < n; i++)); do
		nonzero=$(dd if=/dev/sda bs=$bs skip=$((i * (blocks - 1) / (n - 1))) count=1 status=none | tr -d '\000' | wc -c) || return 1
		[ "$nonzero" -eq 0 ] || return 1
	done
}

# prepare empties the disk and sets sparse=1, or sparse=0 if it cannot.
prepare() {
	sparse=1
	if blkdiscard --force /dev/sda && zeroed; then
		return
	fi
	echo "rescue: the discard failed or left data on the disk; zero-filling it" >&2
	if blkdiscard --zeroout --force /dev/sda && zeroed; then
		return
	fi
	echo "rescue: the disk cannot be zeroed; writing every block of the image" >&2
	sparse=0
}

write() {
	if [ -n "$zst" ] && command -v zstd >/dev/null; then
		if [ "$sparse" = 1 ]; then z=--sparse; else z=--no-sparse; fi
		fetch "$zst" | zstd -dcq "$z" 1<>/dev/sda
	else
		if [ "$sparse" = 1 ]; then conv=sparse,notrunc; else conv=notrunc; fi
		fetch "$xz" | xz -T0 -dcq | dd of=/dev/sda bs=4M iflag=fullblock conv="$conv" status=none
	fi
}

main() {
	if ! command -v curl >/dev/null && ! command -v wget >/dev/null; then
		echo "rescue: neither curl nor wget is installed" >&2
		exit 1
	fi
	local attempt
	for ((attempt = 1; ; attempt++)); do
		prepare
		if write; then
			break
		fi
		if [ "$attempt" -ge "$attempts" ]; then
			echo "rescue: writing the image failed $attempt times" >&2
			exit 1
		fi
		echo "rescue: writing the image failed (attempt $attempt of $attempts); retrying in ${delay}s" >&2
		sleep "$delay"
	done
	sync
}

main </dev/null
`

// diskSizeCommand prints the disk's size in bytes. blockdev comes with
// blkdiscard in util-linux (Essential in Debian); sfdisk is in the separate
// fdisk package, and whether the rescue system has it is not documented.
const diskSizeCommand = "blockdev --getsize64 /dev/sda"

// readCommand prints count sectors of the disk from sector skip on.
const readCommand = "dd if=/dev/sda bs=512 skip=%d count=%d status=none"

// verifyDisk reads the written disk's partition table on the rescue system
// and checks it (checkDisk). It returns the partitions' names and logs how
// they differ from the layout expected for the target.
func verifyDisk(ctx context.Context, remote Remote, t Target, log *slog.Logger) ([]string, error) {
	v, err := talos.ParseVersion(t.Version)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := remote.RunStdin(ctx, diskSizeCommand, nil, &out); err != nil {
		return nil, fmt.Errorf("read the disk size: %w", err)
	}
	size, err := strconv.ParseInt(strings.TrimSpace(out.String()), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("read the disk size: %q is not a number", out.String())
	}
	lc, err := checkDisk(&remoteDisk{ctx: ctx, remote: remote}, size, v, t.Arch)
	if err != nil {
		return lc.Names, err
	}
	if len(lc.Missing) > 0 || len(lc.Extra) > 0 {
		log.WarnContext(ctx, "written disk differs from the Talos layout expected for the target",
			"partitions", lc.Names, "missing", lc.Missing, "unexpected", lc.Extra)
	}
	return lc.Names, nil
}

// layoutCheck compares a disk's partitions with the expected Talos layout.
type layoutCheck struct {
	Names   []string // on the disk, in table order
	Missing []string // expected but not on the disk
	Extra   []string // on the disk but not expected
}

// checkDisk reads the GPT of a disk of size bytes through r and checks it
// holds a Talos image of version v for arch: a valid GPT (gpt.Read) with
// the partitions every Talos image has. How it differs from the layout of
// exactly that version and arch is reported, not an error: the layouts
// change between versions and are known only from Talos' sources.
func checkDisk(r io.ReaderAt, size int64, v talos.Version, arch string) (layoutCheck, error) {
	tbl, err := gpt.Read(r, size)
	if err != nil {
		return layoutCheck{}, fmt.Errorf("written disk: %w", err)
	}
	lc := layoutCheck{Names: tbl.Names()}
	want := talos.ExpectedPartitions(v, arch)
	for _, n := range want {
		if !slices.Contains(lc.Names, n) {
			lc.Missing = append(lc.Missing, n)
		}
	}
	for _, n := range lc.Names {
		if !slices.Contains(want, n) {
			lc.Extra = append(lc.Extra, n)
		}
	}
	for _, n := range talos.RequiredPartitions() {
		if !slices.Contains(lc.Names, n) {
			return lc, fmt.Errorf("written disk lacks the Talos partition %s (has %q)", n, lc.Names)
		}
	}
	return lc, nil
}

// remoteDisk reads the rescue system's disk with dd, one command per read.
// It keeps a context because io.ReaderAt has none; it lives only as long as
// one verifyDisk.
type remoteDisk struct {
	ctx    context.Context
	remote Remote
}

func (d *remoteDisk) ReadAt(p []byte, off int64) (int, error) {
	if off%gpt.SectorSize != 0 || len(p)%gpt.SectorSize != 0 {
		return 0, fmt.Errorf("read %d bytes at %d: not whole sectors", len(p), off)
	}
	cmd := fmt.Sprintf(readCommand, off/gpt.SectorSize, len(p)/gpt.SectorSize)
	var out bytes.Buffer
	if err := d.remote.RunStdin(d.ctx, cmd, nil, &out); err != nil {
		return 0, fmt.Errorf("%s: %w", cmd, err)
	}
	n := copy(p, out.Bytes())
	if n < len(p) {
		return n, io.ErrUnexpectedEOF
	}
	return n, nil
}

// shellQuote quotes s for a POSIX shell. The inputs are validated before;
// quoting is the second line of defence.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
