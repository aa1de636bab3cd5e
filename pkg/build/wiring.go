package build

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/config"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// OptionsFrom maps the configuration to builder options; schematics are
// the resolved schematic IDs.
func OptionsFrom(c config.Config, schematics []string) Options {
	return Options{
		Architectures: c.Architectures,
		Schematics:    schematics,
		MinVersion:    c.MinVersion,
		Prereleases:   c.Prereleases,
		ServerTypes:   map[string][]string{"amd64": c.ServerTypesAMD64, "arm64": c.ServerTypesARM64},
		Locations:     c.Locations,
		ServerImage:   c.ServerImage,
		Cluster:       c.Cluster,
		Labels:        c.SnapshotLabels,
		StepTimeout:   c.StepTimeout, InstallTimeout: c.InstallTimeout,
		SnapshotWait: c.SnapshotWait, SnapshotTimeout: c.SnapshotTimeout, LeaseTTL: c.LeaseTTL,
		Failures:   FailurePolicyFrom(c),
		SigningKey: SigningKey(c.HCloudToken),
	}
}

// Schematics returns the configured schematic IDs plus the ID the factory
// gives the configured customization, if any.
func Schematics(ctx context.Context, c config.Config, f *talos.Factory) ([]string, error) {
	ids := slices.Clone(c.Schematics())
	if c.SchematicYAML != "" {
		id, err := f.SchematicID(ctx, c.SchematicYAML)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// HandlePayload is the Lambda handler: it decodes the payload strictly and
// handles the request.
func (b *Builder) HandlePayload(ctx context.Context, payload json.RawMessage) (Response, error) {
	r, err := ParseRequest(payload)
	if err != nil {
		return Response{}, err
	}
	resp, err := b.Handle(ctx, r)
	// A build that failed deterministically would fail the same way when
	// Lambda retried it, which it does only for a function error: the
	// response says it failed, and its failure is recorded (failure.go).
	var failed *FailedError
	if errors.As(err, &failed) {
		return resp, nil
	}
	return resp, err
}

// RunUntilDone handles the request in this process and follows its
// continuations until no target is in progress: the builder without AWS.
func (b *Builder) RunUntilDone(ctx context.Context, r Request) (Response, error) {
	if err := b.verify(r); err != nil {
		return Response{}, err
	}
	resp, err := b.each(ctx, r, b.buildUntilDone)
	if err == nil && ctx.Err() != nil {
		return resp, ctx.Err()
	}
	return resp, err
}

func (b *Builder) buildUntilDone(ctx context.Context, t Target, req Request) Result {
	for {
		res := b.Build(withInvocationStart(ctx, b.now()), t, req)
		if res.State != InProgress {
			return res
		}
		if res.next != nil {
			req.Continuation = res.next
		}
		// Another holder of the lease, or a snapshot still being created.
		select {
		case <-ctx.Done():
			return res
		case <-time.After(b.pollWait):
		}
	}
}
