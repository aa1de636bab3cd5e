package function

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakeevents"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/announce"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/config"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// TestAnnouncer: EVENT_BUS_NAME empty announces nothing; a bus gets the
// events through the client the environment configures, here the
// stand-in AWS_ENDPOINT_URL_EVENTBRIDGE names, as in the local world.
func TestAnnouncer(t *testing.T) {
	bus := fakeevents.New()
	url, err := bus.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bus.Close() })
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_ENDPOINT_URL_EVENTBRIDGE": url, "AWS_REGION": "eu-central-1",
		"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_SESSION_TOKEN": "",
		// Nothing of this machine's AWS configuration, no instance metadata.
		"AWS_CONFIG_FILE": filepath.Join(dir, "config"), "AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "credentials"),
		"AWS_PROFILE": "", "AWS_EC2_METADATA_DISABLED": "true",
	} {
		t.Setenv(k, v)
	}
	ctx := context.Background()
	for _, tt := range []struct {
		bus    string
		events int
	}{{"", 0}, {"default", 1}} {
		a, err := Announcer(ctx, config.Config{EventBusName: tt.bus})
		if err != nil {
			t.Fatal(err)
		}
		if (a != nil) != (tt.events > 0) {
			t.Fatalf("EVENT_BUS_NAME=%q: announcer %#v", tt.bus, a)
		}
		if a == nil {
			continue
		}
		if e, ok := a.(announce.EventBridge); !ok || e.Bus != tt.bus {
			t.Errorf("EVENT_BUS_NAME=%q: announcer %#v", tt.bus, a)
		}
		p := build.Publication{Target: build.Target{Version: "v1.13.9", Arch: "amd64", Schematic: talos.QemuGuestAgentSchematic}, SnapshotID: 7}
		if err := a.Published(ctx, p); err != nil {
			t.Errorf("EVENT_BUS_NAME=%q: %v", tt.bus, err)
		}
	}
	if n := len(bus.Events()); n != 1 {
		t.Errorf("%d events on the bus, want 1", n)
	}
}
