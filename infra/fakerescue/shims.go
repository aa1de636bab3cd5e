package fakerescue

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The shims stand in for commands that behave differently on a regular file
// than on a real machine's block device, or that would act on the host.

// shimHeader starts every shim: bash, strict, and the host's PATH, so that
// a shim works whatever the session's PATH lacks (Options.MissingTools).
const shimHeader = "#!/bin/bash\nset -euo pipefail\nPATH=" + systemPath + "\n"

// blkdiscardShim: the real blkdiscard refuses regular files. A discard
// punches a hole over the whole file, which reads back zeros and frees the
// space, as a discard does on Hetzner's disks as far as anyone has seen;
// %[1]s replaces it when the discard keeps the data (Options.DiscardKeepsData).
// --zeroout (util-linux blkdiscard(8): "zero-fill rather than discard";
// BLKZEROOUT guarantees zeros) always zeroes.
const blkdiscardShim = shimHeader + `opts=$(getopt -o fvz -l force,verbose,zeroout -n blkdiscard -- "$@") || exit 1
eval set -- "$opts"
verbose= zeroout=
while true; do
	case $1 in
	-f|--force) shift ;;
	-v|--verbose) verbose=1; shift ;;
	-z|--zeroout) zeroout=1; shift ;;
	--) shift; break ;;
	esac
done
if [ $# -ne 1 ]; then
	echo "blkdiscard: expected one device" >&2
	exit 1
fi
if ! [ "$1" -ef /dev/sda ]; then
	echo "blkdiscard: $1: only /dev/sda can be discarded on this rescue host" >&2
	exit 1
fi
size=$(stat -L -c %%s /dev/sda)
if [ -n "$zeroout" ]; then
	fallocate --punch-hole --keep-size --offset 0 --length "$size" /dev/sda
	[ -z "$verbose" ] || echo "$1: Zero-filled $size bytes from the offset 0"
	exit 0
fi
%[1]s
[ -z "$verbose" ] || echo "$1: Discarded $size bytes from the offset 0"
`

// The discard step of blkdiscardShim: zeroing, or keeping the data while
// succeeding, which Linux allows (Documentation/ABI/stable/sysfs-block,
// discard_zeroes_data: "Will always return 0. Don't rely on any specific
// behavior for discards").
const (
	discardZeroes    = `fallocate --punch-hole --keep-size --offset 0 --length "$size" /dev/sda`
	discardKeepsData = `: the device acknowledges the discard and keeps the data`
)

// blockdevShim: the real blockdev's ioctls fail on a regular file. It
// answers the size queries for /dev/sda (util-linux blockdev(8)).
const blockdevShim = shimHeader + `if [ $# -ne 2 ] || ! [ "$2" -ef /dev/sda ]; then
	echo "blockdev: only size queries of /dev/sda are emulated on this rescue host" >&2
	exit 1
fi
size=$(stat -L -c %s /dev/sda)
case $1 in
--getsize64) echo "$size" ;;
--getsz) echo $((size / 512)) ;;
--getss) echo 512 ;;
*) echo "blockdev: $1 is not emulated on this rescue host" >&2; exit 1 ;;
esac
`

// ddShim: dd truncates a regular output file unless told not to; a block
// device keeps its size and whatever lies past the written data.
const ddShim = shimHeader + `for arg; do
	if [ "${arg#of=}" != "$arg" ] && [ "${arg#of=}" -ef /dev/sda ]; then
		exec %[1]s "$@" conv=notrunc
	fi
done
exec %[1]s "$@"
`

// powerShim serves poweroff, halt, reboot and shutdown: it asks the pool to
// take the machine down, which then kills this command and drops the
// session, as a real power-off does. %[2]s is the host's curl.
const powerShim = shimHeader + `name=${0##*/}
case $name in
reboot) op=reboot ;;
shutdown)
	op=poweroff
	for arg; do
		case $arg in
		-r|--reboot) op=reboot ;;
		-h|-H|-P|--halt|--poweroff|now|+0) ;;
		*) echo "shutdown: unsupported argument $arg on this rescue host" >&2; exit 1 ;;
		esac
	done
	;;
*) op=poweroff ;;
esac
if ! %[2]s -fsS -o /dev/null --max-time 10 -X POST %[1]s"$op"; then
	echo "$name: the machine did not answer" >&2
	exit 1
fi
exec sleep 60
`

// binMarker marks a machine's bin directory; the namespace setup checks
// that it is mounted.
const binMarker = ".rescue-bin"

// binConfig is what a machine's bin directory holds.
type binConfig struct {
	powerURL string // ends in "/"; the operation is appended
	dd, curl string // the host's
	// keepData makes a discard keep the data (Options.DiscardKeepsData).
	keepData bool
	// missing tools are left out (Options.MissingTools); if there are any,
	// the directory also links every other tool on systemPath and is the
	// sessions' whole PATH.
	missing []string
}

// writeBin writes the shims of one machine into dir and, with tools
// missing, links the others.
func writeBin(dir string, c binConfig) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("shims: %w", err)
	}
	discard := discardZeroes
	if c.keepData {
		discard = discardKeepsData
	}
	power := fmt.Sprintf(powerShim, shellQuote(c.powerURL), shellQuote(c.curl))
	files := map[string]string{
		binMarker:    "",
		"blkdiscard": fmt.Sprintf(blkdiscardShim, discard),
		"blockdev":   blockdevShim,
		"dd":         fmt.Sprintf(ddShim, shellQuote(c.dd)),
		"poweroff":   power,
		"halt":       power,
		"reboot":     power,
		"shutdown":   power,
	}
	for name, content := range files {
		if slices.Contains(c.missing, name) {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o755); err != nil {
			return fmt.Errorf("shims: %w", err)
		}
	}
	if len(c.missing) == 0 {
		return nil
	}
	// The first of a name on systemPath wins, as in a PATH search.
	for _, d := range filepath.SplitList(systemPath) {
		entries, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range entries {
			name := e.Name()
			if _, shim := files[name]; shim || slices.Contains(c.missing, name) {
				continue
			}
			target := filepath.Join(d, name)
			if st, err := os.Stat(target); err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
				continue
			}
			err := os.Symlink(target, filepath.Join(dir, name))
			if err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("link tools: %w", err)
			}
		}
	}
	return nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
