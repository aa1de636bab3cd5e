package deploy

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack/stacktest"
)

// TestInvokeScript runs scripts/invoke end to end on the local world, set
// up as the template sets up the deployed Builder: its token comes from the
// SSM parameter HCLOUD_TOKEN_SECRET names. The bootstrap is built once
// (BOOTSTRAP) rather than by the script's `make build-Builder`, which would
// compile everything again with -trimpath.
func TestInvokeScript(t *testing.T) {
	st := stacktest.Start(t, stack.Options{})
	const tokenParam = "/hcloud-k8s/hcloud-token"
	st.Secrets.PutParameter(tokenParam, st.Token)
	badEvent := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(badEvent, []byte(`{"version":"bogus"}`), 0o644); err != nil {
		t.Fatal(err)
	}

	env := stacktest.LocalEnv(st, stacktest.Bootstrap(t, "./functions/builder"))
	delete(env, "HCLOUD_TOKEN")
	env["HCLOUD_TOKEN_SECRET"] = "ssm:" + tokenParam
	// A continuation, which the template's 900 s make unneeded here, must
	// not reach out of loopback.
	env["AWS_ENDPOINT_URL_LAMBDA"] = "http://127.0.0.1:1"

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
			runEnv := maps.Clone(env)
			delete(runEnv, tt.unset)
			stdout, stderr, exit := stacktest.Run(t, runEnv, "scripts/invoke", "Builder", tt.event)
			if exit != tt.wantExit || !strings.Contains(stdout, tt.wantOut) || !strings.Contains(stderr, tt.wantErr) {
				t.Fatalf("exit %d, stdout:\n%s\nwant exit %d, %q on stdout and %q on stderr; stderr:\n%s",
					exit, stdout, tt.wantExit, tt.wantOut, tt.wantErr, stderr)
			}
			if tt.name == "build" {
				checkSnapshot(t, st, []byte(stdout))
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
