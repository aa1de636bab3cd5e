package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
)

// rieDir is the directory holding aws-lambda-rie: PATH, then GOPATH/bin
// (where `make tools` installs it), as scripts/invoke looks for it.
func rieDir(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("aws-lambda-rie"); err == nil {
		return filepath.Dir(p)
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "bin")
	if _, err := os.Stat(filepath.Join(dir, "aws-lambda-rie")); err != nil {
		t.Fatalf("aws-lambda-rie is not installed (make tools): %v", err)
	}
	return dir
}

// TestInvokeScript runs scripts/invoke end to end on the local cloud, set up
// as the template sets up the deployed Builder: its token comes from the SSM
// parameter HCLOUD_TOKEN_SECRET names. The bootstrap is built once here
// (BOOTSTRAP) rather than by the script's `make build-Builder`, which would
// compile everything again with -trimpath.
func TestInvokeScript(t *testing.T) {
	root := repoRoot(t)
	rie := rieDir(t)
	st, err := stack.Start(stack.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	const tokenParam = "/hcloud-k8s/hcloud-token"
	st.Secrets.PutParameter(tokenParam, st.Token)
	bootstrap, err := stack.BuildBootstrap("./functions/builder", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	badEvent := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(badEvent, []byte(`{"version":"bogus"}`), 0o644); err != nil {
		t.Fatal(err)
	}

	env := map[string]string{
		"PATH":                      rie + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOME":                      os.Getenv("HOME"),
		"BOOTSTRAP":                 bootstrap,
		"HCLOUD_TOKEN_SECRET":       "ssm:" + tokenParam,
		"AWS_ACCESS_KEY_ID":         "local",
		"AWS_SECRET_ACCESS_KEY":     "local",
		"AWS_EC2_METADATA_DISABLED": "true",
		// A continuation, which the template's 900 s make unneeded here,
		// must not reach out of loopback.
		"AWS_ENDPOINT_URL_LAMBDA": "http://127.0.0.1:1",
	}
	for k, v := range st.Env() {
		if k != "HCLOUD_TOKEN" {
			env[k] = v
		}
	}

	tests := []struct {
		name, event string
		unset       string // a variable to leave out
		wantExit    int
		wantOut     string // in stdout
		wantErr     string // in stderr
	}{
		{name: "build", event: "events/build.json", wantOut: `"state":"done"`},
		{name: "invalid payload", event: badEvent, wantExit: 1, wantOut: `{"errorMessage":`},
		{name: "no token", event: "events/build.json", unset: "HCLOUD_TOKEN_SECRET", wantExit: 1,
			wantErr: "Builder failed (HTTP 502)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "invoke"), "Builder", tt.event)
			cmd.Dir = root
			for k, v := range env {
				if k != tt.unset {
					cmd.Env = append(cmd.Env, k+"="+v)
				}
			}
			// SIGTERM lets the script stop the emulator it started.
			cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
			cmd.WaitDelay = 10 * time.Second
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			exit := 0
			if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
				exit = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if exit != tt.wantExit || !strings.Contains(stdout.String(), tt.wantOut) ||
				!strings.Contains(stderr.String(), tt.wantErr) {
				t.Fatalf("exit %d, stdout:\n%s\nwant exit %d, %q on stdout and %q on stderr; stderr:\n%s",
					exit, stdout.String(), tt.wantExit, tt.wantOut, tt.wantErr, stderr.String())
			}
			if tt.name == "build" {
				checkSnapshot(t, st, stdout.Bytes())
			}
		})
	}
}

// checkSnapshot checks that the snapshot a build reports exists, labelled
// for the consumers, and that the token came from the parameter store.
func checkSnapshot(t *testing.T, st *stack.Stack, out []byte) {
	t.Helper()
	var resp struct {
		Results []struct {
			State      string `json:"state"`
			SnapshotID int64  `json:"snapshot_id"`
		} `json:"results"`
	}
	if err := json.Unmarshal(out, &resp); err != nil || len(resp.Results) != 1 {
		t.Fatalf("response %s: %v, want one result", out, err)
	}
	c := hcloud.NewClient(hcloud.WithEndpoint(st.HCloudURL), hcloud.WithToken(st.Token))
	img, _, err := c.Image.GetByID(context.Background(), resp.Results[0].SnapshotID)
	if err != nil || img == nil {
		t.Fatalf("snapshot %d: %v, %v", resp.Results[0].SnapshotID, img, err)
	}
	if img.Type != hcloud.ImageTypeSnapshot || img.Labels["os"] != "talos" || img.Labels["talos_version"] != "v1.13.9" {
		t.Errorf("snapshot %d is a %s labelled %v", img.ID, img.Type, img.Labels)
	}
	if st.Secrets.Reads() == 0 {
		t.Error("the Builder did not read its token from the parameter store")
	}
}
