package function

import (
	"fmt"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/config"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/poll"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/release"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// The configuration is mapped to the packages' options here, at the edge,
// so that pkg/build and pkg/poll take their settings as plain values and
// know nothing of environment variables.

// BuildOptions maps the configuration to the Builder's options; schematics
// are the resolved schematic IDs.
func BuildOptions(c config.Config, schematics []string) build.Options {
	o := build.Options{
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
		VerifyBoot: c.VerifyBoot, VerifyTimeout: c.VerifyTimeout,
		SigningKey: build.SigningKey(c.HCloudToken),
	}
	o.Failures = build.FailurePolicy{Backoff: c.FailureBackoff, Limit: c.FailureLimit,
		Config: build.ConfigDigest(o, c.FactoryURL)}
	return o
}

// PollOptions maps the configuration to the Poller's options; schematics
// are the schematic IDs known without the factory
// (build.SchematicSet.Configured).
func PollOptions(c config.Config, schematics []string) (poll.Options, error) {
	p, err := release.NewPolicy(c.TrackMinors, c.TrackAllPatches, c.Prereleases, c.MinVersion)
	if err != nil {
		return poll.Options{}, fmt.Errorf("MIN_VERSION: %w", err)
	}
	return poll.Options{Policy: p, AnonymousGitHub: c.GitHubToken == "", Rules: poll.Rules{
		Architectures: c.Architectures, Schematics: schematics, Cluster: c.Cluster,
		MaxBuilds: c.MaxBuildsPerPoll, ServerTTL: c.BuildServerTTL, KeepOthers: c.KeepOthers,
		// The Builder's policy: the Poller reads the records it writes.
		FailureRules: poll.FailureRules{Failures: BuildOptions(c, schematics).Failures, SnapshotTimeout: c.SnapshotTimeout},
	}}, nil
}

// SchematicSet returns the configuration's schematics, the customization's
// to be resolved with f when first needed.
func SchematicSet(c config.Config, f *talos.Factory) *build.SchematicSet {
	return build.NewSchematicSet(c.Schematics(), c.SchematicYAML, f)
}
