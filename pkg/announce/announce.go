// Package announce tells subscribers how builds end: it puts an event on
// an Amazon EventBridge bus when a build publishes a snapshot and when a
// build fails for good (build.Announcer). Automation downstream, a cluster
// upgrade or a notification, subscribes with a rule on the source and
// detail type (README, Events).
package announce

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge/types"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
)

// The events' source and detail types: what a rule matches on.
const (
	Source            = "hcloud-k8s"
	SnapshotAvailable = "Talos Snapshot Available"
	BuildFailed       = "Talos Snapshot Build Failed"
)

// Available is the detail of a SnapshotAvailable event.
type Available struct {
	Version      string `json:"version"`
	Architecture string `json:"architecture"`
	Schematic    string `json:"schematic"`
	Cluster      string `json:"cluster,omitempty"`
	// ImageID is the snapshot's Hetzner image ID: what a server is created
	// from.
	ImageID  int64             `json:"image_id"`
	Location string            `json:"location"`
	Labels   map[string]string `json:"labels"`
	// BuildSeconds runs from the build server's creation to the
	// publication; 0 when unknown.
	BuildSeconds int64 `json:"build_seconds"`
}

// Failed is the detail of a BuildFailed event.
type Failed struct {
	Version      string `json:"version"`
	Architecture string `json:"architecture"`
	Schematic    string `json:"schematic"`
	Cluster      string `json:"cluster,omitempty"`
	// Step is where the build failed, Code the short reason
	// (build.Classify), Error the whole message.
	Step  string `json:"step"`
	Code  string `json:"code"`
	Error string `json:"error"`
}

// API is the part of the EventBridge client used here.
type API interface {
	PutEvents(ctx context.Context, in *eventbridge.PutEventsInput, opts ...func(*eventbridge.Options)) (*eventbridge.PutEventsOutput, error)
}

// NewAPI returns an EventBridge client configured from the environment
// (region, credentials, and AWS_ENDPOINT_URL_EVENTBRIDGE for a local
// stand-in).
func NewAPI(ctx context.Context) (API, error) {
	cfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	return eventbridge.NewFromConfig(cfg), nil
}

// EventBridge puts the events on an event bus; it is a build.Announcer.
type EventBridge struct {
	API API
	Bus string // name or ARN; "default" is the account's default bus
}

// Published puts a SnapshotAvailable event.
func (e EventBridge) Published(ctx context.Context, p build.Publication) error {
	return e.put(ctx, SnapshotAvailable, Available{
		Version: p.Version, Architecture: p.Arch, Schematic: p.Schematic, Cluster: p.Cluster,
		ImageID: p.SnapshotID, Location: p.Location, Labels: p.Labels, BuildSeconds: int64(p.Duration.Seconds()),
	})
}

// Failed puts a BuildFailed event.
func (e EventBridge) Failed(ctx context.Context, f build.Failure) error {
	return e.put(ctx, BuildFailed, Failed{
		Version: f.Version, Architecture: f.Arch, Schematic: f.Schematic, Cluster: f.Cluster,
		Step: string(f.Step), Code: f.Code, Error: f.Error,
	})
}

// put sends one event. PutEvents answers 200 even when it refuses an
// entry: the refusal is in the entry's ErrorCode, counted by
// FailedEntryCount (EventBridge API Reference, PutEvents).
func (e EventBridge) put(ctx context.Context, detailType string, detail any) error {
	b, err := json.Marshal(detail)
	if err != nil {
		return fmt.Errorf("put %q event: %w", detailType, err)
	}
	out, err := e.API.PutEvents(ctx, &eventbridge.PutEventsInput{Entries: []types.PutEventsRequestEntry{{
		Source: aws.String(Source), DetailType: aws.String(detailType), Detail: aws.String(string(b)),
		EventBusName: aws.String(e.Bus),
	}}})
	if err != nil {
		return fmt.Errorf("put %q event on bus %s: %w", detailType, e.Bus, err)
	}
	if out.FailedEntryCount > 0 {
		var code, msg string
		if len(out.Entries) > 0 {
			code, msg = aws.ToString(out.Entries[0].ErrorCode), aws.ToString(out.Entries[0].ErrorMessage)
		}
		return fmt.Errorf("put %q event on bus %s: the entry failed: %s: %s", detailType, e.Bus, code, msg)
	}
	return nil
}
