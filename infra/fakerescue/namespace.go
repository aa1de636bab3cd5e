package fakerescue

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// systemPath is the PATH of the setup script and, behind the shims, of the
// rescue sessions.
const systemPath = "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// shimDir is where the shims appear inside the namespace: first on PATH, as
// on a Debian system, and an empty directory on the host to mount over.
const shimDir = "/usr/local/sbin"

// devEntries is what /dev of a rescue namespace holds, as `ls -A` lists it.
const devEntries = "fd full null random sda shm stderr stdin stdout tty urandom zero"

// guardScript refuses to go on unless the shell runs in mount and UTS
// namespaces of its own and no mount propagates to the host: every mount of
// setupScript would otherwise land on the host. $1 and $2 are the host's
// mount and UTS namespaces. The assignments make a failing readlink fatal.
const guardScript = `set -euo pipefail
fail() { echo "rescue setup: $*" >&2; exit 1; }
mnt=$(readlink /proc/self/ns/mnt)
uts=$(readlink /proc/self/ns/uts)
[ "$mnt" != "$1" ] || fail "not in a mount namespace of its own"
[ "$uts" != "$2" ] || fail "not in a UTS namespace of its own"
! grep -q ' shared:' /proc/self/mountinfo || fail "mounts would propagate to the host"
`

// setupScript builds the rescue namespace and verifies it, then stays as
// its init: the PID namespace lives as long as it does. $3 is the disk file,
// $4 its "dev:inode", $5 the shim directory. The shims are bound before /tmp
// is covered, as the pool's directory may live below /tmp.
const setupScript = guardScript + `disk=$3 disk_id=$4 bin=$5
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -o bind,ro "$bin" ` + shimDir + `
mount -t tmpfs -o mode=0755,nosuid rescue-dev /dev
mknod -m 0666 /dev/null c 1 3
mknod -m 0666 /dev/zero c 1 5
mknod -m 0666 /dev/full c 1 7
mknod -m 0666 /dev/random c 1 8
mknod -m 0666 /dev/urandom c 1 9
mknod -m 0666 /dev/tty c 5 0
touch /dev/sda
mount --bind "$disk" /dev/sda
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
mkdir /dev/shm
mount -t tmpfs -o mode=1777,nosuid,nodev rescue-shm /dev/shm
mount -t tmpfs -o mode=1777,nosuid,nodev rescue-tmp /tmp
mount -t tmpfs -o mode=0700 rescue-root /root
echo rescue > /proc/sys/kernel/hostname

dev=$(ls -A /dev | tr '\n' ' ')
[ "$dev" = "` + devEntries + ` " ] || fail "unexpected /dev: $dev"
sda=$(stat -L -c %d:%i /dev/sda)
[ "$sda" = "$disk_id" ] || fail "/dev/sda is not the disk file"
for d in /dev /dev/shm /tmp /root; do
	fs=$(stat -f -c %T "$d")
	[ "$fs" = tmpfs ] || fail "$d is not a tmpfs"
done
[ -f ` + shimDir + `/` + binMarker + ` ] || fail "shims missing"
echo ready
exec sleep infinity
`

// sessionScript runs a session's command inside the namespace, after
// checking that it really is inside: not the host's mount namespace, no
// /dev/vda, the disk file as /dev/sda. $1 is the host's mount namespace, $2
// the disk's "dev:inode", $3 root's login shell, the rest are the shell's
// arguments.
const sessionScript = `exec 3<&- 4<&- 5<&-
mnt=$(readlink /proc/self/ns/mnt) || mnt=
devfs=$(stat -f -c %T /dev) || devfs=
sda=$(stat -L -c %d:%i /dev/sda 2>/dev/null) || sda=
if [ -z "$mnt" ] || [ "$mnt" = "$1" ] || [ "$devfs" != tmpfs ] || [ -e /dev/vda ] || [ "$sda" != "$2" ]; then
	echo "rescue: not inside the machine's namespace; command not run" >&2
	exit 1
fi
shell=$3
shift 3
cd /root
exec "$shell" "$@"
`

// hostEnv is what the pool found out about the host.
type hostEnv struct {
	bash, nsenter, dd, curl string
	// ns holds the links of the host's namespaces ("mnt:[4026531841]").
	ns map[string]string
}

// nsNames are the namespaces of a rescue boot, in the order they are passed
// to sessions (fds 3, 4, 5).
var nsNames = []string{"mnt", "uts", "pid"}

// tools are needed on the host, with the Debian package that has them. The
// rescue sessions use the host's binaries.
var tools = []struct{ name, pkg string }{
	{"bash", "bash"}, {"nsenter", "util-linux"}, {"getopt", "util-linux"},
	{"fallocate", "util-linux"}, {"blkid", "util-linux"}, {"mount", "mount"},
	{"sfdisk", "fdisk"}, {"dd", "coreutils"}, {"sync", "coreutils"},
	{"mknod", "coreutils"}, {"stat", "coreutils"}, {"grep", "grep"},
	{"curl", "curl"}, {"wget", "wget"}, {"xz", "xz-utils"}, {"zstd", "zstd"},
}

// probeHost checks that the host can run rescue systems.
func probeHost() (hostEnv, error) {
	if os.Geteuid() != 0 {
		return hostEnv{}, errors.New("rescue hosts need root (mount namespaces)")
	}
	if st, err := os.Stat(shimDir); err != nil || !st.IsDir() {
		return hostEnv{}, fmt.Errorf("rescue hosts need the directory %s to mount the shims over", shimDir)
	}
	paths := make(map[string]string)
	for _, t := range tools {
		p, err := lookPath(t.name)
		if err != nil {
			return hostEnv{}, fmt.Errorf("%s not found in %s (Debian package %s)", t.name, systemPath, t.pkg)
		}
		paths[t.name] = p
	}
	env := hostEnv{bash: paths["bash"], nsenter: paths["nsenter"], dd: paths["dd"], curl: paths["curl"], ns: make(map[string]string)}
	for _, name := range nsNames {
		link, err := os.Readlink("/proc/self/ns/" + name)
		if err != nil {
			return hostEnv{}, fmt.Errorf("host namespace: %w", err)
		}
		env.ns[name] = link
	}
	return env, nil
}

func lookPath(name string) (string, error) {
	for _, dir := range filepath.SplitList(systemPath) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}

// namespace is the set of namespaces of one rescue boot.
type namespace struct {
	init   *exec.Cmd
	done   chan struct{} // closed when init has exited
	files  []*os.File    // open namespace files, in nsNames order
	diskID string
}

// setupTimeout bounds the setup script, which normally takes milliseconds.
const setupTimeout = 30 * time.Second

// newNamespace builds the namespaces of a rescue boot around the disk file
// and the shim directory.
func newNamespace(env hostEnv, diskPath, binDir string) (*namespace, error) {
	st, err := os.Stat(diskPath)
	if err != nil {
		return nil, fmt.Errorf("namespace: %w", err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	n := &namespace{done: make(chan struct{}), diskID: fmt.Sprintf("%d:%d", sys.Dev, sys.Ino)}

	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("namespace: %w", err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(env.bash, "-c", setupScript, "rescue-setup",
		env.ns["mnt"], env.ns["uts"], diskPath, n.diskID, binDir)
	cmd.Env = []string{"PATH=" + systemPath, "LC_ALL=C"}
	cmd.Dir = "/"
	cmd.Stdout = w
	cmd.Stderr = &stderr
	// CLONE_NEWNS in Unshareflags (not Cloneflags) makes Go remount /
	// recursively private in the child before the script runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:   syscall.CLONE_NEWPID,
		Unshareflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS,
	}
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("start namespace: %w", err)
	}
	n.init = cmd
	go func() {
		cmd.Wait()
		close(n.done)
	}()

	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		r.Close()
		ready <- line
	}()
	select {
	case line := <-ready:
		if line != "ready\n" {
			n.close()
			return nil, fmt.Errorf("set up namespace: %s", strings.TrimSpace(stderr.String()))
		}
	case <-time.After(setupTimeout):
		n.close()
		return nil, fmt.Errorf("set up namespace: no answer after %s", setupTimeout)
	}

	for _, name := range nsNames {
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/%s", cmd.Process.Pid, name))
		if err != nil {
			n.close()
			return nil, fmt.Errorf("open namespace: %w", err)
		}
		n.files = append(n.files, f)
		// The script checked this already; check again what the sessions
		// will actually enter.
		link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
		if err != nil || link == env.ns[name] {
			n.close()
			return nil, fmt.Errorf("namespace %s of the rescue system is the host's (%s)", name, link)
		}
	}
	return n, nil
}

// command returns a command that runs shell with args inside the namespace.
func (n *namespace) command(env hostEnv, shell string, args ...string) *exec.Cmd {
	cmd := exec.Command(env.nsenter,
		"--mount=/proc/self/fd/3", "--uts=/proc/self/fd/4", "--pid=/proc/self/fd/5", "--",
		env.bash, "-c", sessionScript, "rescue-session", env.ns["mnt"], n.diskID, shell)
	cmd.Args = append(cmd.Args, args...)
	cmd.ExtraFiles = n.files
	cmd.Dir = "/"
	return cmd
}

// close kills the namespace's init, and with it every process inside, and
// releases the namespaces.
func (n *namespace) close() {
	n.init.Process.Kill()
	<-n.done
	for _, f := range n.files {
		f.Close()
	}
}
