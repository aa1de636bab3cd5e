package build

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// Target is one snapshot to build: a Talos version for an architecture and
// an Image Factory schematic.
type Target struct {
	Version   string `json:"version"`
	Arch      string `json:"arch"`
	Schematic string `json:"schematic"`
}

func (t Target) String() string {
	return t.Version + "/" + t.Arch + "/" + t.Schematic[:min(8, len(t.Schematic))]
}

// Validate checks everything that ends up in names, labels, URLs and shell
// commands.
func (t Target) Validate() error {
	if _, err := talos.ParseVersion(t.Version); err != nil {
		return fmt.Errorf("version: %w", err)
	}
	if !talos.ValidArch(t.Arch) {
		return fmt.Errorf("arch: %q is not amd64 or arm64", t.Arch)
	}
	if !talos.ValidSchematic(t.Schematic) {
		return fmt.Errorf("schematic: %q is not a schematic ID (64 lowercase hex digits)", t.Schematic)
	}
	return nil
}

// Name is the name of the target's build server and lease key in the
// deployment of cluster: an RFC 1123 hostname that is the same for every
// invocation building this target, so a second creator meets
// uniqueness_error instead of making another server. The readable part can
// collide (v1.14.0-beta.1 and v1.14.0-beta-1 both read v1-14-0-beta-1); the
// hash of the whole target and the cluster cannot. Deployments of different
// clusters in one project so never meet, let alone adopt, each other's
// servers and leases; without a cluster the name is the one it was before
// the cluster became part of it, so builds under way across an upgrade keep
// their server.
func (t Target) Name(cluster string) string {
	id := t.Version + "\x00" + t.Arch + "\x00" + t.Schematic
	if cluster != "" {
		id += "\x00" + cluster
	}
	sum := sha256.Sum256([]byte(id))
	readable := strings.NewReplacer(".", "-", "_", "-").Replace(strings.ToLower(t.Version))
	// "talos-" + arch + "-" + version + "-" + 10 hex ≤ 63
	if max := 63 - len("talos-") - len(t.Arch) - 2 - 10; len(readable) > max {
		readable = strings.TrimRight(readable[:max], "-")
	}
	return "talos-" + t.Arch + "-" + readable + "-" + hex.EncodeToString(sum[:5])
}

// Labels of managed resources besides the consumer contract in pkg/label.
const (
	labelRole             = label.OwnPrefix + "role"           // build-server | lease
	labelSchematicRest    = label.OwnPrefix + "schematic-rest" // last 32 hex: a label value holds 63 chars
	labelStep             = label.OwnPrefix + "step"
	labelSnapshotAttempts = label.OwnPrefix + "snapshot-attempts" // snapshots of this server retaken after one vanished
	labelFailed           = label.OwnPrefix + "failed"            // on a snapshot that failed but could not be deleted
	labelBuild            = label.OwnPrefix + "build"             // on a snapshot: id of the server it came from
	labelForce            = label.OwnPrefix + "force"             // the build replaces an existing snapshot
	labelReplaces         = label.OwnPrefix + "replaces"          // on a forced build's server: ids it replaces, "_"-joined
	labelRequest          = label.OwnPrefix + "request"           // on a snapshot: the request it was built for
	labelLeaseOwner       = label.OwnPrefix + "owner"             // on the lease key
	labelLeaseUntil       = label.OwnPrefix + "until"             // unix seconds
	roleBuildServer       = "build-server"
	roleLease             = "lease"
)

// targetLabels identify the target on servers, keys and snapshots.
func (t Target) targetLabels(cluster string) map[string]string {
	l := map[string]string{
		label.Managed:        label.ManagedValue,
		label.TalosVersion:   t.Version,
		label.Arch:           t.Arch,
		label.TalosSchematic: t.Schematic[:32],
		labelSchematicRest:   t.Schematic[32:],
	}
	if cluster != "" {
		l[label.Cluster] = cluster
	}
	return l
}

// snapshotSelector selects the managed snapshots of the target.
func (t Target) snapshotSelector(cluster string) string {
	l := t.targetLabels(cluster)
	parts := make([]string, 0, len(l)+1)
	for k, v := range l {
		parts = append(parts, k+"="+v)
	}
	if cluster == "" {
		parts = append(parts, "!"+label.Cluster)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// snapshotLabels are the contract labels consumers select by, ours, and the
// user's extra labels.
func (t Target) snapshotLabels(cluster string, extra map[string]string, serverID int64) map[string]string {
	l := make(map[string]string, len(extra)+10)
	for k, v := range extra {
		l[k] = v
	}
	for k, v := range t.targetLabels(cluster) {
		l[k] = v
	}
	l[label.OS] = "talos"
	l[label.Version] = t.Version
	l[labelBuild] = strconv.FormatInt(serverID, 10)
	return l
}

// TargetFromLabels reads the target back from a managed resource's labels;
// the Poller uses it to re-drive a build whose server it finds.
func TargetFromLabels(l map[string]string) (Target, bool) {
	t := Target{Version: l[label.TalosVersion], Arch: l[label.Arch], Schematic: l[label.TalosSchematic] + l[labelSchematicRest]}
	return t, t.Validate() == nil
}

func (t Target) description() string {
	return fmt.Sprintf("Talos %s hcloud-%s, schematic %s (hcloud-k8s image builder)", t.Version, t.Arch, t.Schematic)
}

// BuildServerSelector selects every build server of the image builder.
func BuildServerSelector() string {
	return label.Managed + "=" + label.ManagedValue + "," + labelRole + "=" + roleBuildServer
}

// LeaseSelector selects every lease key of the image builder.
func LeaseSelector() string {
	return label.Managed + "=" + label.ManagedValue + "," + labelRole + "=" + roleLease
}

// LeaseActive tells whether a lease key (see LeaseSelector) is held by a
// live invocation at now.
func LeaseActive(labels map[string]string, now time.Time) bool {
	until, err := strconv.ParseInt(labels[labelLeaseUntil], 10, 64)
	return err == nil && now.Unix() <= until
}
