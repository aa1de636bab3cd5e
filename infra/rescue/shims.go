package rescue

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The shims stand in for commands that behave differently on a regular file
// than on a real machine's block device, or that would act on the host.

// blkdiscardShim: the real blkdiscard refuses regular files. Punching a hole
// over the whole file reads back zeros and frees the space, as a discard
// does on Hetzner's disks.
const blkdiscardShim = `#!/bin/bash
set -euo pipefail
opts=$(getopt -o fv -l force,verbose -n blkdiscard -- "$@") || exit 1
eval set -- "$opts"
verbose=
while true; do
	case $1 in
	-f|--force) shift ;;
	-v|--verbose) verbose=1; shift ;;
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
size=$(stat -L -c %s /dev/sda)
fallocate --punch-hole --keep-size --offset 0 --length "$size" /dev/sda
if [ -n "$verbose" ]; then
	echo "$1: Discarded $size bytes from the offset 0"
fi
`

// ddShim: dd truncates a regular output file unless told not to; a block
// device keeps its size and whatever lies past the written data.
const ddShim = `#!/bin/bash
for arg; do
	if [ "${arg#of=}" != "$arg" ] && [ "${arg#of=}" -ef /dev/sda ]; then
		exec %[1]s "$@" conv=notrunc
	fi
done
exec %[1]s "$@"
`

// powerShim serves poweroff, halt, reboot and shutdown: it asks the pool to
// take the machine down, which then kills this command and drops the
// session, as a real power-off does.
const powerShim = `#!/bin/bash
name=${0##*/}
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
if ! curl -fsS -o /dev/null --max-time 10 -X POST %[1]s"$op"; then
	echo "$name: the machine did not answer" >&2
	exit 1
fi
exec sleep 60
`

// writeShims writes the shims of one machine into dir. powerURL ends in "/"
// and gets the operation appended; dd is the host's dd.
func writeShims(dir, powerURL, dd string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("shims: %w", err)
	}
	power := fmt.Sprintf(powerShim, shellQuote(powerURL))
	files := map[string]string{
		"blkdiscard": blkdiscardShim,
		"dd":         fmt.Sprintf(ddShim, shellQuote(dd)),
		"poweroff":   power,
		"halt":       power,
		"reboot":     power,
		"shutdown":   power,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o755); err != nil {
			return fmt.Errorf("shims: %w", err)
		}
	}
	return nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
