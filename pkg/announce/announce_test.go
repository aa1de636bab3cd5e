package announce

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakeevents"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

var target = build.Target{Version: "v1.13.9", Arch: "arm64", Schematic: talos.QemuGuestAgentSchematic}

// bus starts the EventBridge stand-in and returns it with the real client
// pointed at it, as AWS_ENDPOINT_URL_EVENTBRIDGE points the Builder's.
func bus(t *testing.T) (*fakeevents.Bus, *eventbridge.Client) {
	t.Helper()
	b := fakeevents.New()
	url, err := b.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, eventbridge.New(eventbridge.Options{
		Region: "eu-central-1", BaseEndpoint: aws.String(url),
		Credentials: credentials.NewStaticCredentialsProvider("local", "local", ""),
	})
}

// TestEvents: each announcement is one event on the bus, of our source, its
// detail type and the detail a rule and its target read.
func TestEvents(t *testing.T) {
	labels := map[string]string{"os": "talos", "talos_version": "v1.13.9", "arch": "arm64", "cluster": "prod"}
	for _, tt := range []struct {
		name       string
		announce   func(ctx context.Context, e EventBridge) error
		detailType string
		detail     string // JSON
	}{
		{"published", func(ctx context.Context, e EventBridge) error {
			return e.Published(ctx, build.Publication{Target: target, Cluster: "prod", SnapshotID: 4711, Location: "nbg1",
				Labels: labels, Duration: 312*time.Second + 600*time.Millisecond})
		}, SnapshotAvailable, `{"version":"v1.13.9","architecture":"arm64","schematic":"` + target.Schematic + `",` +
			`"cluster":"prod","image_id":4711,"location":"nbg1",` +
			`"labels":{"arch":"arm64","cluster":"prod","os":"talos","talos_version":"v1.13.9"},"build_seconds":312}`},
		{"published without a cluster", func(ctx context.Context, e EventBridge) error {
			return e.Published(ctx, build.Publication{Target: target, SnapshotID: 4711, Location: "fsn1", Labels: map[string]string{"os": "talos"}})
		}, SnapshotAvailable, `{"version":"v1.13.9","architecture":"arm64","schematic":"` + target.Schematic + `",` +
			`"image_id":4711,"location":"fsn1","labels":{"os":"talos"},"build_seconds":0}`},
		{"failed", func(ctx context.Context, e EventBridge) error {
			return e.Failed(ctx, build.Failure{Target: target, Cluster: "prod", Step: build.StepInstall, Code: "download",
				Error: `install: rescue: "writing the image failed 3 times"`})
		}, BuildFailed, `{"version":"v1.13.9","architecture":"arm64","schematic":"` + target.Schematic + `",` +
			`"cluster":"prod","step":"install","code":"download","error":"install: rescue: \"writing the image failed 3 times\""}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, c := bus(t)
			if err := tt.announce(context.Background(), EventBridge{API: c, Bus: "default"}); err != nil {
				t.Fatal(err)
			}
			events := b.Events()
			if len(events) != 1 {
				t.Fatalf("%d events, want 1", len(events))
			}
			ev := events[0]
			if ev.Source != "hcloud-k8s" || ev.DetailType != tt.detailType || ev.Bus != "default" {
				t.Errorf("event from %q, %q on %q; want hcloud-k8s, %q on default", ev.Source, ev.DetailType, ev.Bus, tt.detailType)
			}
			var got, want any
			if err := json.Unmarshal(ev.Detail, &got); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(tt.detail), &want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("detail\n got %s\nwant %s", ev.Detail, tt.detail)
			}
		})
	}
}

// TestRefusedEvent: PutEvents answers 200 when it refuses an entry; the
// refusal (FailedEntryCount, the entry's code) is an error, as is a bus
// that does not exist.
func TestRefusedEvent(t *testing.T) {
	for _, tt := range []struct {
		name  string
		bus   string
		setup func(b *fakeevents.Bus)
		want  string
	}{
		{"throttled", "default", func(b *fakeevents.Bus) { b.Refuse("ThrottlingException", "Rate exceeded") },
			`put "Talos Snapshot Available" event on bus default: the entry failed: ThrottlingException: Rate exceeded`},
		{"no such bus", "builds", func(*fakeevents.Bus) {}, "ResourceNotFoundException"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, c := bus(t)
			tt.setup(b)
			err := EventBridge{API: c, Bus: tt.bus}.Published(context.Background(), build.Publication{Target: target, SnapshotID: 1})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want %q", err, tt.want)
			}
			if n := len(b.Events()); n != 0 {
				t.Errorf("%d events recorded", n)
			}
		})
	}
}

// TestUnreachable: a bus that cannot be reached is an error, within the
// caller's time.
func TestUnreachable(t *testing.T) {
	b, c := bus(t)
	b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := EventBridge{API: c, Bus: "default"}.Failed(ctx, build.Failure{Target: target, Step: build.StepCheck, Code: "not-served", Error: "x"})
	if err == nil || !strings.Contains(err.Error(), `put "Talos Snapshot Build Failed" event on bus default`) {
		t.Errorf("error %v", err)
	}
}
