package deploy

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// makeEnv is this process's environment with GOOS and GOARCH replaced by
// the given ones ("" leaves them out): what SAM passes to make. The
// variables of a make running these tests (make test) are left out: they
// would pass its command line on to this make.
func makeEnv(goos, goarch string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "GOOS", "GOARCH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES":
			continue
		}
		env = append(env, kv)
	}
	if goos != "" {
		env = append(env, "GOOS="+goos)
	}
	if goarch != "" {
		env = append(env, "GOARCH="+goarch)
	}
	return env
}

// TestMakeBuildPlatform: `sam build` runs `make build-<Function>` with the
// caller's environment (aws-lambda-builders' custom_make workflow), so a
// GOARCH or GOOS exported in the caller's shell must not change the
// bootstrap: it is a linux/arm64 ELF, as template.yaml's Architectures
// says. GOARCH on the make command line still chooses (README.md, Deploy:
// `make build-Builder GOARCH=amd64`; the infra/README.md row on `sam
// build`'s makefile method). One real build; the command line case is
// checked on the commands make would run, which is where the two cases
// differ.
func TestMakeBuildPlatform(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("GNU make is not installed (Debian make)")
	}
	root := repoRoot(t)
	dir := t.TempDir()
	cmd := exec.Command("make", "-s", "build-Poller", "ARTIFACTS_DIR="+dir)
	cmd.Dir = root
	cmd.Env = makeEnv("darwin", "amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make build-Poller with GOOS=darwin GOARCH=amd64 in the environment: %v\n%s", err, out)
	}
	f, err := elf.Open(filepath.Join(dir, "bootstrap"))
	if err != nil {
		t.Fatalf("the bootstrap is not an ELF file (Lambda runs Linux): %v", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_AARCH64 || f.Class != elf.ELFCLASS64 {
		t.Errorf("bootstrap is %v %v, want EM_AARCH64 ELFCLASS64 (arm64)", f.Machine, f.Class)
	}

	for _, tt := range []struct {
		name     string
		env      []string
		args     []string
		platform string
	}{
		{"environment", makeEnv("windows", "amd64"), nil, "GOOS=linux GOARCH=arm64"},
		{"command line", makeEnv("", "arm64"), []string{"GOARCH=amd64"}, "GOOS=linux GOARCH=amd64"},
		{"both on the command line", makeEnv("", ""), []string{"GOOS=linux", "GOARCH=amd64"}, "GOOS=linux GOARCH=amd64"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, target := range []string{"build-Builder", "build-Poller"} {
				cmd := exec.Command("make", append([]string{"-n", target, "ARTIFACTS_DIR=" + dir}, tt.args...)...)
				cmd.Dir = root
				cmd.Env = tt.env
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("make -n %s: %v\n%s", target, err, out)
				}
				if !strings.HasPrefix(string(out), tt.platform+" CGO_ENABLED=0 ") || !strings.Contains(string(out), "-tags lambda.norpc") {
					t.Errorf("make %s runs\n%s\nwant %s CGO_ENABLED=0 ... -tags lambda.norpc", target, out, tt.platform)
				}
			}
		})
	}
}
