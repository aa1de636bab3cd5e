package build

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
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

// targetLabels identify the target on servers, keys and snapshots.
func (t Target) targetLabels(cluster string) map[string]string {
	l := map[string]string{
		label.Managed:        label.ManagedValue,
		label.TalosVersion:   t.Version,
		label.Arch:           t.Arch,
		label.TalosSchematic: t.Schematic[:32],
		label.SchematicRest:  t.Schematic[32:],
	}
	if cluster != "" {
		l[label.Cluster] = cluster
	}
	return l
}

// snapshotSelector selects the managed snapshots of the target.
func (t Target) snapshotSelector(cluster string) string {
	if cluster == "" {
		return label.Selector(t.targetLabels(cluster), label.Cluster)
	}
	return label.Selector(t.targetLabels(cluster))
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
	l[label.Build] = strconv.FormatInt(serverID, 10)
	return l
}

// TargetFromLabels reads the target back from a managed resource's labels;
// the Poller uses it to re-drive a build whose server it finds.
func TargetFromLabels(l map[string]string) (Target, bool) {
	t := Target{Version: l[label.TalosVersion], Arch: l[label.Arch], Schematic: l[label.TalosSchematic] + l[label.SchematicRest]}
	return t, t.Validate() == nil
}

func (t Target) description() string {
	return fmt.Sprintf("Talos %s hcloud-%s, schematic %s (hcloud-k8s image builder)", t.Version, t.Arch, t.Schematic)
}

// LeaseActive tells whether a lease key (label.RoleSelector(label.RoleLease)) is held by a
// live invocation at now.
func LeaseActive(labels map[string]string, now time.Time) bool {
	until, err := strconv.ParseInt(labels[label.LeaseUntil], 10, 64)
	return err == nil && now.Unix() <= until
}
