package fakerescue_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/hcloud-k8s/hcloud-k8s/infra/disk"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakerescue"
)

// emptyDigest is the digest of a disk of zeros.
const emptyDigest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

func diskPath(t *testing.T, p *fakerescue.Pool, id int64) string {
	t.Helper()
	path, err := p.DiskPath(id)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func diskDigest(t *testing.T, p *fakerescue.Pool, id int64) string {
	t.Helper()
	d, err := p.DiskDigest(id)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// readDisk returns n bytes of the disk file at off, and its size.
func readDisk(t *testing.T, path string, off int64, n int) ([]byte, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return buf, st.Size()
}

func allocatedBlocks(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks
}

func TestNamespaceIsolation(t *testing.T) {
	t.Parallel()
	hostMounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	hostName, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	p := newPool(t, fakerescue.Options{})
	m := bootRescue(t, p, 1)

	checks := []struct{ cmd, want string }{
		{"ls -A /dev", "fd\nfull\nnull\nrandom\nsda\nshm\nstderr\nstdin\nstdout\ntty\nurandom\nzero"},
		{"[ -e /dev/vda ] && echo present || echo absent", "absent"},
		{"stat -f -c %T /dev /tmp /root /dev/shm", "tmpfs\ntmpfs\ntmpfs\ntmpfs"},
		{"[ -f /dev/sda ] && stat -L -c %s /dev/sda", fmt.Sprint(testDiskSize)},
		{"hostname", "rescue"},
		{"echo $HOME $USER; pwd", "/root root\n/root"},
		{"cat /proc/1/comm", "sleep"},
		{"command -v blkdiscard dd poweroff sfdisk", "/usr/local/sbin/blkdiscard\n/usr/local/sbin/dd\n/usr/local/sbin/poweroff\n/usr/sbin/sfdisk"},
		{"head -c 4 /dev/zero | od -An -tx1 | tr -d ' '", "00000000"},
		{"echo hi >/dev/null && echo ok", "ok"},
	}
	for _, c := range checks {
		if got := mustRun(t, m.client, c.cmd, nil); got != c.want {
			t.Errorf("%s: got %q, want %q", c.cmd, got, c.want)
		}
	}

	// /tmp lives as long as the boot, across sessions, like on a real machine.
	mustRun(t, m.client, "echo kept > /tmp/mark", nil)
	if got := mustRun(t, m.client, "cat /tmp/mark", nil); got != "kept" {
		t.Errorf("/tmp/mark in the next session: %q", got)
	}
	_, authorized := newKey(t)
	if err := p.Boot(1, &fakerescue.Rescue{AuthorizedKeys: []string{authorized}}); err != nil {
		t.Fatal(err)
	}

	after, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(hostMounts, after) {
		t.Errorf("host mounts changed:\nbefore:\n%s\nafter:\n%s", hostMounts, after)
	}
	if name, _ := os.Hostname(); name != hostName {
		t.Errorf("host name changed to %q", name)
	}
}

func TestRebootWipesTmpAndChangesHostKey(t *testing.T) {
	t.Parallel()
	p := newPool(t, fakerescue.Options{})
	signer, authorized := newKey(t)
	ip, err := p.Create(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	boot := func() (*ssh.Client, ssh.PublicKey) {
		if err := p.Boot(1, &fakerescue.Rescue{AuthorizedKeys: []string{authorized}}); err != nil {
			t.Fatal(err)
		}
		return dial(t, ip, "root", signer, 5*time.Second)
	}
	c1, key1 := boot()
	mustRun(t, c1, "echo x > /tmp/mark", nil)
	c2, key2 := boot()
	if bytes.Equal(key1.Marshal(), key2.Marshal()) {
		t.Error("a new rescue boot kept the host key")
	}
	if key2.Type() != ssh.KeyAlgoED25519 {
		t.Errorf("host key type %s", key2.Type())
	}
	_, _, err = run(c2, "test -e /tmp/mark", nil)
	if exitStatus(t, err) != 1 {
		t.Error("/tmp survived the reboot")
	}
}

func TestDiskWrites(t *testing.T) {
	t.Parallel()
	p := newPool(t, fakerescue.Options{})
	a, b := bootRescue(t, p, 1), bootRescue(t, p, 2)
	pathA, pathB := diskPath(t, p, 1), diskPath(t, p, 2)
	if pathA == pathB {
		t.Fatalf("both disks are %s", pathA)
	}

	mustRun(t, a.client, "dd of=/dev/sda status=none", []byte("disk-A"))
	mustRun(t, b.client, "dd of=/dev/sda status=none", []byte("disk-B"))
	for _, d := range []struct{ path, want string }{{pathA, "disk-A"}, {pathB, "disk-B"}} {
		got, size := readDisk(t, d.path, 0, 6)
		if string(got) != d.want {
			t.Errorf("%s starts with %q, want %q", d.path, got, d.want)
		}
		if size != testDiskSize {
			t.Errorf("%s has %d bytes, want %d: dd truncated the disk", d.path, size, testDiskSize)
		}
	}
	img := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(img, []byte("disk-A"), 0o600); err != nil {
		t.Fatal(err)
	}
	want, err := disk.FileDigest(img)
	if err != nil {
		t.Fatal(err)
	}
	if got := diskDigest(t, p, 1); got != want {
		t.Errorf("DiskDigest = %s, want %s", got, want)
	}

	// Like a block device, the disk keeps what lies past a write.
	mustRun(t, a.client, "dd of=/dev/sda bs=1M seek=1 status=none", []byte("middle"))
	mustRun(t, a.client, "printf xy | dd of=/dev/sda status=none", nil)
	if got, _ := readDisk(t, pathA, 1<<20, 6); string(got) != "middle" {
		t.Errorf("data at 1 MiB after a later dd: %q", got)
	}
	if got, _ := readDisk(t, pathA, 0, 6); string(got) != "xysk-A" {
		t.Errorf("disk starts with %q after overwriting 2 bytes", got)
	}

	// A shell redirection truncates the file; the pool restores its size.
	mustRun(t, a.client, "echo redirected > /dev/sda", nil)
	if got, size := readDisk(t, pathA, 0, 11); string(got) != "redirected\n" || size != testDiskSize {
		t.Errorf("after a redirection: %q, %d bytes", got, size)
	}
}

func TestBlkdiscard(t *testing.T) {
	t.Parallel()
	p := newPool(t, fakerescue.Options{})
	m := bootRescue(t, p, 1)
	path := diskPath(t, p, 1)
	tests := []struct {
		cmd     string
		ok      bool
		wantOut string
	}{
		{cmd: "blkdiscard /dev/sda", ok: true},
		{cmd: "blkdiscard -f /dev/sda", ok: true},
		{cmd: "blkdiscard --force --verbose /dev/sda", ok: true,
			wantOut: fmt.Sprintf("/dev/sda: Discarded %d bytes from the offset 0", testDiskSize)},
		{cmd: "blkdiscard -fv /dev/sda", ok: true,
			wantOut: fmt.Sprintf("/dev/sda: Discarded %d bytes from the offset 0", testDiskSize)},
		{cmd: "blkdiscard -z /dev/sda", ok: true},
		{cmd: "blkdiscard --zeroout --force -v /dev/sda", ok: true,
			wantOut: fmt.Sprintf("/dev/sda: Zero-filled %d bytes from the offset 0", testDiskSize)},
		{cmd: "blkdiscard /dev/zero"},
		{cmd: "touch /tmp/f && blkdiscard -f /tmp/f"},
		{cmd: "blkdiscard"},
		{cmd: "blkdiscard -s /dev/sda"},
		{cmd: "blkdiscard /dev/sda /dev/sda"},
	}
	for _, tt := range tests {
		t.Run(tt.cmd, func(t *testing.T) {
			mustRun(t, m.client, "head -c 8M /dev/urandom | dd of=/dev/sda bs=1M iflag=fullblock status=none && sync", nil)
			before := allocatedBlocks(t, path)
			if before < 8<<20/512 {
				t.Fatalf("%d blocks allocated after writing 8 MiB", before)
			}
			out, errOut, err := run(m.client, tt.cmd, nil)
			if !tt.ok {
				if err == nil {
					t.Fatalf("succeeded, want a refusal")
				}
				if exitStatus(t, err) == 0 || errOut == "" {
					t.Errorf("refusal without status or message: %q", errOut)
				}
				if got := allocatedBlocks(t, path); got != before {
					t.Errorf("blocks %d → %d after a refused discard", before, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v (stderr %q)", err, errOut)
			}
			if got := strings.TrimSpace(out); got != tt.wantOut {
				t.Errorf("output %q, want %q", got, tt.wantOut)
			}
			if got := allocatedBlocks(t, path); got != 0 {
				t.Errorf("%d blocks allocated after discard", got)
			}
			if got := diskDigest(t, p, 1); got != emptyDigest {
				t.Errorf("disk after discard has digest %s, want zeros", got)
			}
			if _, size := readDisk(t, path, 0, 1); size != testDiskSize {
				t.Errorf("disk size %d after discard", size)
			}
		})
	}
}

// A discard that keeps the data succeeds and changes nothing; zero-filling
// still zeroes.
func TestDiscardKeepsData(t *testing.T) {
	t.Parallel()
	p := newPool(t, fakerescue.Options{DiscardKeepsData: true})
	m := bootRescue(t, p, 1)
	mustRun(t, m.client, "head -c 8M /dev/urandom | dd of=/dev/sda bs=1M iflag=fullblock status=none && sync", nil)
	written := diskDigest(t, p, 1)
	if got := mustRun(t, m.client, "blkdiscard -fv /dev/sda", nil); got != fmt.Sprintf("/dev/sda: Discarded %d bytes from the offset 0", testDiskSize) {
		t.Errorf("blkdiscard said %q", got)
	}
	if got := diskDigest(t, p, 1); got != written {
		t.Errorf("digest %s after the discard, want the data's %s", got, written)
	}
	mustRun(t, m.client, "blkdiscard --zeroout /dev/sda", nil)
	if got := diskDigest(t, p, 1); got != emptyDigest {
		t.Errorf("digest %s after zero-filling, want zeros", got)
	}
}

func TestBlockdev(t *testing.T) {
	t.Parallel()
	p := newPool(t, fakerescue.Options{})
	m := bootRescue(t, p, 1)
	tests := []struct {
		cmd, want string
	}{
		{"blockdev --getsize64 /dev/sda", fmt.Sprint(testDiskSize)},
		{"blockdev --getsz /dev/sda", fmt.Sprint(testDiskSize / 512)},
		{"blockdev --getss /dev/sda", "512"},
		{"blockdev --getsize64 /dev/null", ""},
		{"blockdev --rereadpt /dev/sda", ""},
		{"blockdev --getsize64", ""},
	}
	for _, tt := range tests {
		out, _, err := run(m.client, tt.cmd, nil)
		if tt.want == "" {
			if err == nil || exitStatus(t, err) == 0 {
				t.Errorf("%s: succeeded with %q, want a refusal", tt.cmd, out)
			}
			continue
		}
		if err != nil || strings.TrimSpace(out) != tt.want {
			t.Errorf("%s: %q, %v; want %q", tt.cmd, out, err, tt.want)
		}
	}
}

// Root's login shell runs exec requests; Debian's /bin/sh is dash, which
// has no pipefail, so a script needs bash by name.
func TestLoginShell(t *testing.T) {
	t.Parallel()
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(sh) != "dash" {
		t.Skipf("/bin/sh is %s here, not dash as on Debian", sh)
	}
	p := newPool(t, fakerescue.Options{Shell: "/bin/sh"})
	m := bootRescue(t, p, 1)
	if got := mustRun(t, m.client, "echo $SHELL; readlink -f /proc/$$/exe", nil); got != "/bin/sh\n"+sh {
		t.Errorf("shell: %q", got)
	}
	if _, errOut, err := run(m.client, "set -o pipefail", nil); err == nil || !strings.Contains(errOut, "pipefail") {
		t.Errorf("pipefail under dash: %v, %q; want an illegal option", err, errOut)
	}
	_, _, err = run(m.client, "bash -s", []byte("set -euo pipefail\nfalse | cat\necho not reached\n"))
	if exitStatus(t, err) != 1 {
		t.Errorf("bash -s with a failing pipeline: %v", err)
	}
	for _, bad := range []string{"sh", "/nonexistent/shell", "/etc"} {
		p := newPool(t, fakerescue.Options{Shell: bad})
		if _, err := p.Create(1, 0); err == nil {
			t.Errorf("login shell %q accepted", bad)
		}
	}
}

// Missing tools are on no directory of PATH; everything else, the shims
// among it, works as before, poweroff too.
func TestMissingTools(t *testing.T) {
	t.Parallel()
	powered := make(chan int64, 1)
	p := newPool(t, fakerescue.Options{MissingTools: []string{"curl", "sfdisk", "zstd"},
		PowerFunc: func(id int64, _ string) { powered <- id }})
	m := bootRescue(t, p, 1)
	for _, tool := range []string{"curl", "sfdisk", "zstd"} {
		if out, _, err := run(m.client, "command -v "+tool, nil); err == nil {
			t.Errorf("%s is on PATH: %q", tool, out)
		}
	}
	if got := mustRun(t, m.client, "command -v wget xz dd blkdiscard blockdev cmp", nil); got !=
		"/usr/local/sbin/wget\n/usr/local/sbin/xz\n/usr/local/sbin/dd\n/usr/local/sbin/blkdiscard\n/usr/local/sbin/blockdev\n/usr/local/sbin/cmp" {
		t.Errorf("tools: %q", got)
	}
	if got := mustRun(t, m.client, "echo $PATH; printf abc | xz | xz -d", nil); got != "/usr/local/sbin\nabc" {
		t.Errorf("PATH and xz: %q", got)
	}
	if _, _, err := run(m.client, "poweroff", nil); err == nil {
		t.Error("poweroff returned normally")
	}
	select {
	case id := <-powered:
		if id != 1 {
			t.Errorf("machine %d powered off", id)
		}
	case <-time.After(5 * time.Second):
		t.Error("poweroff without curl on PATH did not power off")
	}
	for _, bad := range []string{"", "/usr/bin/curl", "../curl", "cu rl"} {
		p := newPool(t, fakerescue.Options{MissingTools: []string{bad}})
		if _, err := p.Create(1, 0); err == nil {
			t.Errorf("missing tool %q accepted", bad)
		}
	}
}

func TestSfdiskGPT(t *testing.T) {
	t.Parallel()
	p := newPool(t, fakerescue.Options{})
	m := bootRescue(t, p, 1)
	layout := "label: gpt\nsize=16MiB, type=L, name=one\ntype=L, name=two\n"
	mustRun(t, m.client, "sfdisk --quiet /dev/sda", []byte(layout))

	dump := mustRun(t, m.client, "sfdisk --dump /dev/sda", nil)
	for _, want := range []string{"label: gpt", "/dev/sda1 : start=", "/dev/sda2 : start=", `name="two"`} {
		if !strings.Contains(dump, want) {
			t.Errorf("sfdisk --dump lacks %q:\n%s", want, dump)
		}
	}
	if got := mustRun(t, m.client, "blkid -p -o value -s PTTYPE /dev/sda", nil); got != "gpt" {
		t.Errorf("blkid PTTYPE = %q", got)
	}
	if got, _ := readDisk(t, diskPath(t, p, 1), 512, 8); string(got) != "EFI PART" {
		t.Errorf("LBA 1 of the disk file holds %q, want the GPT header", got)
	}
}

// testImage writes a small raw disk image with data, zeros and data, and
// its xz and zstd compressions, and returns the directory.
func testImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	img := make([]byte, 3<<20)
	rand.Read(img[:512<<10])
	rand.Read(img[len(img)-64<<10:])
	if err := os.WriteFile(filepath.Join(dir, "image.raw"), img, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{{"xz", "-0", "-k", "image.raw"}, {"zstd", "-q", "-k", "image.raw"}} {
		cmd := exec.Command(c[0], c[1:]...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	return dir
}

func TestWritePipelines(t *testing.T) {
	t.Parallel()
	dir := testImage(t)
	want, err := disk.FileDigest(filepath.Join(dir, "image.raw"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	t.Cleanup(srv.Close)
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	// Dirty disks: a pipeline that leaves old data behind fails the digest.
	p := newPool(t, fakerescue.Options{Dirty: true})
	tests := []struct {
		name  string
		cmd   string
		stdin []byte
		same  bool
	}{
		{"talos docs xz, bs 512", "blkdiscard /dev/sda && xz -d -c | dd of=/dev/sda status=none", read("image.raw.xz"), true},
		{"zstd stdin sparse", "blkdiscard -f /dev/sda && zstd -dc | dd of=/dev/sda bs=4M iflag=fullblock conv=sparse,fsync status=none", read("image.raw.zst"), true},
		{"wget xz sparse", "set -euo pipefail; blkdiscard --force /dev/sda; wget -q -O - " + srv.URL + "/image.raw.xz | xz -cd | dd of=/dev/sda bs=4M conv=sparse status=none && sync", nil, true},
		{"curl zstd fullblock direct", "set -euo pipefail; blkdiscard /dev/sda; curl -fsS " + srv.URL + "/image.raw.zst | zstd -dc | dd of=/dev/sda bs=1M iflag=fullblock oflag=direct conv=fsync status=none", nil, true},
		{"curl zstd redirect", "set -euo pipefail; blkdiscard /dev/sda; curl -fsS " + srv.URL + "/image.raw.zst | zstd -dc --sparse > /dev/sda", nil, true},
		{"no discard leaves traces", "xz -d -c | dd of=/dev/sda bs=1M status=none", read("image.raw.xz"), false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := int64(i + 1)
			m := bootRescue(t, p, id)
			if got := diskDigest(t, p, id); got == want || got == emptyDigest {
				t.Fatalf("fresh dirty disk has digest %s", got)
			}
			mustRun(t, m.client, tt.cmd, tt.stdin)
			if got := diskDigest(t, p, id); (got == want) != tt.same {
				t.Errorf("disk digest %s, image %s, want equal: %v", got, want, tt.same)
			}
			if _, size := readDisk(t, diskPath(t, p, id), 0, 1); size != testDiskSize {
				t.Errorf("disk size %d", size)
			}
		})
	}
}

func TestPowerCommands(t *testing.T) {
	t.Parallel()
	type call struct {
		id int64
		op string
	}
	calls := make(chan call, 10)
	p := newPool(t, fakerescue.Options{PowerFunc: func(id int64, op string) { calls <- call{id, op} }})
	tests := []struct{ cmd, op string }{
		{"poweroff", "poweroff"},
		{"halt", "poweroff"},
		{"shutdown -h now", "poweroff"},
		{"shutdown -P +0", "poweroff"},
		{"shutdown -r now", "reboot"},
		{"reboot", "reboot"},
		{"sync; poweroff -f", "poweroff"},
	}
	for i, tt := range tests {
		t.Run(tt.cmd, func(t *testing.T) {
			id := int64(i + 1)
			m := bootRescue(t, p, id)
			_, _, err := run(m.client, tt.cmd, nil)
			var ee *ssh.ExitError
			if err == nil || errors.As(err, &ee) {
				t.Fatalf("session ended with %v, want it dropped", err)
			}
			select {
			case c := <-calls:
				if c != (call{id, tt.op}) {
					t.Errorf("PowerFunc(%d, %q), want (%d, %q)", c.id, c.op, id, tt.op)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("PowerFunc not called")
			}
			if listening(m.ip) {
				t.Error("SSH still listens after the guest powered off")
			}
		})
	}
	t.Run("unsupported shutdown time", func(t *testing.T) {
		m := bootRescue(t, p, 100)
		_, _, err := run(m.client, "shutdown -h 22:00", nil)
		if exitStatus(t, err) == 0 {
			t.Error("scheduled shutdown accepted")
		}
		select {
		case c := <-calls:
			t.Errorf("PowerFunc(%d, %q) called", c.id, c.op)
		case <-time.After(100 * time.Millisecond):
		}
	})
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	p := newPool(t, fakerescue.Options{})
	good, authorized := newKey(t)
	other, _ := newKey(t)
	ip, err := p.Create(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Boot(1, &fakerescue.Rescue{AuthorizedKeys: []string{"ssh-ed25519 garbage"}}); err == nil {
		t.Error("Boot accepted a malformed authorized key")
	}
	if err := p.Boot(1, &fakerescue.Rescue{AuthorizedKeys: []string{authorized}}); err != nil {
		t.Fatal(err)
	}
	dial(t, ip, "root", good, 5*time.Second) // waits for the boot

	tests := []struct {
		name string
		user string
		auth ssh.AuthMethod
		ok   bool
	}{
		{"authorized key", "root", ssh.PublicKeys(good), true},
		{"other key", "root", ssh.PublicKeys(other), false},
		{"other user", "admin", ssh.PublicKeys(good), false},
		{"password", "root", ssh.Password("hunter2"), false},
		{"keyboard-interactive", "root", ssh.KeyboardInteractive(func(string, string, []string, []bool) ([]string, error) { return nil, nil }), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ssh.Dial("tcp", ip+":22", &ssh.ClientConfig{
				User: tt.user, Auth: []ssh.AuthMethod{tt.auth},
				HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: time.Second,
			})
			if err == nil {
				c.Close()
			}
			if (err == nil) != tt.ok {
				t.Errorf("login error %v, want success: %v", err, tt.ok)
			}
		})
	}
	var failed int
	for _, e := range p.Events() {
		if e.Kind == fakerescue.EventAuthFailed {
			failed++
		}
	}
	if failed < 2 {
		t.Errorf("%d auth-failed events, want at least 2", failed)
	}
}

func TestBootDelayAndHalt(t *testing.T) {
	t.Parallel()
	const delay = 300 * time.Millisecond
	p := newPool(t, fakerescue.Options{BootDelay: delay})
	signer, authorized := newKey(t)
	ip, err := p.Create(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.Boot(1, &fakerescue.Rescue{AuthorizedKeys: []string{authorized}}); err != nil {
		t.Fatal(err)
	}
	if listening(ip) {
		t.Error("SSH listens right after Boot")
	}
	c, _ := dial(t, ip, "root", signer, 5*time.Second)
	if took := time.Since(start); took < delay {
		t.Errorf("logged in after %s, before the boot delay %s", took, delay)
	}

	// A detached writer must not outlive the machine.
	mustRun(t, c, `setsid bash -c 'i=0; while :; do i=$((i+1)); printf %08d $i | dd of=/dev/sda conv=notrunc status=none; sleep 0.01; done' </dev/null >/dev/null 2>&1 &`, nil)
	running := make(chan error, 1)
	go func() {
		_, _, err := run(c, "sleep 30", nil)
		running <- err
	}()
	path := diskPath(t, p, 1)
	for deadline := time.Now().Add(5 * time.Second); ; {
		if b, _ := readDisk(t, path, 0, 8); b[0] != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the background writer never wrote")
		}
		time.Sleep(10 * time.Millisecond)
	}

	halted := time.Now()
	if err := p.Halt(1); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(halted); took > 2*time.Second {
		t.Errorf("Halt took %s", took)
	}
	select {
	case err := <-running:
		if err == nil {
			t.Error("a running command finished normally across Halt")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a running command survived Halt")
	}
	if listening(ip) {
		t.Error("SSH listens after Halt")
	}
	first, _ := readDisk(t, path, 0, 8)
	time.Sleep(100 * time.Millisecond)
	if again, _ := readDisk(t, path, 0, 8); !bytes.Equal(first, again) {
		t.Errorf("disk still written after Halt: %q → %q", first, again)
	}

	// Booting from disk starts nothing that listens.
	if err := p.Boot(1, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(delay + 100*time.Millisecond)
	if listening(ip) {
		t.Error("SSH listens after a boot from disk")
	}
}

func TestSessions(t *testing.T) {
	t.Parallel()
	p := newPool(t, fakerescue.Options{})
	m := bootRescue(t, p, 1)

	out, errOut, err := run(m.client, "cat; echo oops >&2; exit 3", []byte("hello stdin"))
	if out != "hello stdin" || errOut != "oops\n" || exitStatus(t, err) != 3 {
		t.Errorf("got stdout %q, stderr %q, err %v", out, errOut, err)
	}

	_, _, err = run(m.client, "kill -TERM $$", nil)
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.Signal() != "TERM" {
		t.Errorf("killed command: %v, want signal TERM", err)
	}

	if got := mustRun(t, m.client, "echo $PATH", nil); !strings.HasPrefix(got, "/usr/local/sbin:") {
		t.Errorf("PATH %q does not start with the shims", got)
	}

	s, err := m.client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RequestPty("xterm", 24, 80, ssh.TerminalModes{}); err == nil {
		t.Error("pty-req granted")
	}
	var shellOut bytes.Buffer
	s.Stdout = &shellOut
	s.Stdin = strings.NewReader("echo from-shell\nexit 0\n")
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	if err := s.Wait(); err != nil || shellOut.String() != "from-shell\n" {
		t.Errorf("shell: %v, output %q", err, shellOut.String())
	}

	// Global and channel keepalives get OpenSSH's failure reply.
	if ok, _, err := m.client.SendRequest("keepalive@openssh.com", true, nil); err != nil || ok {
		t.Errorf("keepalive: ok %v, err %v", ok, err)
	}

	// A background job outlives its session.
	mustRun(t, m.client, "(sleep 0.2; echo done > /tmp/bg) >/dev/null 2>&1 &", nil)
	for deadline := time.Now().Add(5 * time.Second); ; {
		out, _, _ := run(m.client, "cat /tmp/bg", nil)
		if out == "done\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("background job did not finish")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Many sessions at once, over two connections.
	second, _ := dial(t, m.ip, "root", m.signer, time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		c := m.client
		if i%2 == 1 {
			c = second
		}
		wg.Go(func() {
			out, _, err := run(c, fmt.Sprintf("sleep 0.1; echo $((%d * %d))", i, i), nil)
			if err != nil || out != fmt.Sprintf("%d\n", i*i) {
				errs <- fmt.Errorf("session %d: %q, %v", i, out, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	var execs, exits int
	for _, e := range p.Events() {
		switch {
		case e.Kind == fakerescue.EventExec && e.Detail == "cat; echo oops >&2; exit 3":
			execs++
		case e.Kind == fakerescue.EventExit && e.Detail == "cat; echo oops >&2; exit 3" && e.Status == 3:
			exits++
		}
	}
	if execs != 1 || exits != 1 {
		t.Errorf("log has %d exec and %d exit events of the first command, want 1 and 1", execs, exits)
	}
}

func TestDropConnections(t *testing.T) {
	t.Parallel()
	p := newPool(t, fakerescue.Options{})
	m := bootRescue(t, p, 1)
	ended := make(chan error, 1)
	go func() {
		_, _, err := run(m.client, "sleep 0.3; echo finished > /tmp/after", nil)
		ended <- err
	}()
	// Wait until the command runs, then cut the connection under it.
	for deadline := time.Now().Add(5 * time.Second); ; {
		if slices.ContainsFunc(p.Events(), func(e fakerescue.Event) bool {
			return e.Kind == fakerescue.EventExec && strings.Contains(e.Detail, "/tmp/after")
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("command never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	n, err := p.DropConnections(1)
	if err != nil || n != 1 {
		t.Fatalf("DropConnections = %d, %v; want 1 connection", n, err)
	}
	select {
	case err := <-ended:
		if err == nil {
			t.Error("session survived a dropped connection")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("session hangs after a dropped connection")
	}
	// The command goes on without its client, as under sshd.
	c, _ := dial(t, m.ip, "root", m.signer, time.Second)
	for deadline := time.Now().Add(5 * time.Second); ; {
		if out, _, _ := run(c, "cat /tmp/after", nil); out == "finished\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the command did not finish after its connection dropped")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMachineLifecycle(t *testing.T) {
	t.Parallel()
	p := newPool(t, fakerescue.Options{})
	ip, err := p.Create(7, 40e9)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ip, "127.") || strings.HasPrefix(ip, "127.0.") {
		t.Errorf("address %s, want 127.0.0.0/8 outside 127.0.0.0/16", ip)
	}
	if _, err := p.Create(7, 0); err == nil {
		t.Error("second Create of the same id succeeded")
	}
	ip2, err := p.Create(8, 0)
	if err != nil {
		t.Fatal(err)
	}
	if ip2 == ip {
		t.Errorf("two machines share %s", ip)
	}
	path := diskPath(t, p, 7)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != testDiskSize || allocatedBlocks(t, path) != 0 {
		t.Errorf("fresh disk: %d bytes, %d blocks; want %d bytes, sparse", st.Size(), allocatedBlocks(t, path), testDiskSize)
	}
	if got := diskDigest(t, p, 7); got != emptyDigest {
		t.Errorf("fresh disk digest %s", got)
	}
	if err := p.Halt(7); err != nil {
		t.Errorf("Halt of a machine that is off: %v", err)
	}
	if err := p.Delete(7); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("disk file after Delete: %v", err)
	}
	for name, err := range map[string]error{
		"Boot":   p.Boot(7, nil),
		"Halt":   p.Halt(7),
		"Delete": p.Delete(7),
	} {
		if err == nil {
			t.Errorf("%s of a deleted machine succeeded", name)
		}
	}
	if _, err := p.DiskDigest(7); err == nil {
		t.Error("DiskDigest of a deleted machine succeeded")
	}
	if _, err := p.Create(7, 0); err != nil {
		t.Errorf("Create after Delete: %v", err)
	}
	kinds := make(map[fakerescue.EventKind]int)
	for _, e := range p.Events() {
		kinds[e.Kind]++
	}
	if kinds[fakerescue.EventCreate] != 3 || kinds[fakerescue.EventDelete] != 1 {
		t.Errorf("event counts %v", kinds)
	}
}

func TestSetBootDelay(t *testing.T) {
	t.Parallel()
	p := newPool(t, fakerescue.Options{BootDelay: time.Hour})
	p.SetBootDelay(10 * time.Millisecond)
	bootRescue(t, p, 1) // would time out with the hour
}
