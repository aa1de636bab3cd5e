package fakerescue

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hcloud-k8s/hcloud-k8s/infra/testenv"
)

func hostEnvForTest(t *testing.T) hostEnv {
	t.Helper()
	testenv.NeedRoot(t)
	env, err := probeHost()
	if err != nil {
		t.Fatalf("probe host: %v", err)
	}
	return env
}

// The guard is what keeps the setup script's mounts off the host. It only
// reads, so it is safe to run where it must refuse.
func TestGuardScript(t *testing.T) {
	t.Parallel()
	env := hostEnvForTest(t)
	tests := []struct {
		name    string
		unshare uintptr
		ok      bool
	}{
		{"host namespaces", 0, false},
		{"own mount namespace only", syscall.CLONE_NEWNS, false},
		{"own UTS namespace only", syscall.CLONE_NEWUTS, false},
		{"own mount and UTS namespaces", syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(env.bash, "-c", guardScript, "guard", env.ns["mnt"], env.ns["uts"])
			cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: tt.unshare}
			out, err := cmd.CombinedOutput()
			if (err == nil) != tt.ok {
				t.Errorf("guard: %v (%s), want success: %v", err, out, tt.ok)
			}
			if !tt.ok && !strings.Contains(string(out), "rescue setup:") {
				t.Errorf("refusal without a message: %q", out)
			}
		})
	}
}

// The session script must not run a command anywhere but in its machine's
// namespace.
func TestSessionScriptFailsClosed(t *testing.T) {
	t.Parallel()
	env := hostEnvForTest(t)
	dir := t.TempDir()
	diskPath := filepath.Join(dir, "server-1.disk")
	if err := createDisk(diskPath, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	if err := writeBin(bin, binConfig{powerURL: "http://127.0.0.1:1/", dd: env.dd, curl: env.curl}); err != nil {
		t.Fatal(err)
	}
	ns, err := newNamespace(env, diskPath, bin)
	if err != nil {
		t.Fatalf("namespace: %v", err)
	}
	t.Cleanup(ns.close)

	tests := []struct {
		name string
		cmd  func() *exec.Cmd
		ran  bool
	}{
		{"in the namespace", func() *exec.Cmd { return ns.command(env, env.bash, "-c", "echo RAN") }, true},
		{"on the host", func() *exec.Cmd {
			return exec.Command(env.bash, "-c", sessionScript, "session", env.ns["mnt"], ns.diskID, env.bash, "-c", "echo RAN")
		}, false},
		{"with another disk", func() *exec.Cmd {
			wrong := *ns
			wrong.diskID = "1:1"
			return wrong.command(env, env.bash, "-c", "echo RAN")
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := tt.cmd().CombinedOutput()
			ran := strings.Contains(string(out), "RAN")
			if ran != tt.ran || (err == nil) != tt.ran {
				t.Errorf("output %q, err %v; want the command run: %v", out, err, tt.ran)
			}
		})
	}
}

// A namespace that cannot be verified is not used: a disk that is gone
// makes the setup fail, and nothing is left mounted on the host.
func TestNamespaceSetupFailure(t *testing.T) {
	t.Parallel()
	env := hostEnvForTest(t)
	before, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := newNamespace(env, filepath.Join(dir, "missing.disk"), dir); err == nil {
		t.Error("namespace built around a missing disk")
	}
	// A shim directory without shims fails the final check.
	diskPath := filepath.Join(dir, "d.disk")
	if err := createDisk(diskPath, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = newNamespace(env, diskPath, empty)
	if err == nil || !strings.Contains(err.Error(), "shims missing") {
		t.Errorf("namespace without shims: %v", err)
	}
	after, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Error("host mounts changed")
	}
}
