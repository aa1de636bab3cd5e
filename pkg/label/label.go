// Package label names the labels our snapshots and build servers carry and
// checks labels against Hetzner's rules before the API has to.
package label

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
	"github.com/hetznercloud/hcloud-go/v2/hcloud/exp/labelutil"
)

// Keys that consumers select snapshots by: the contract of the Terraform
// modules and the Talos docs' Packer template that use our snapshots.
const (
	OS             = "os"                 // "talos"
	TalosVersion   = "talos_version"      // hcloud-k8s
	TalosSchematic = "talos_schematic_id" // hcloud-k8s: first 32 hex of the schematic
	Version        = "version"            // Talos docs' Packer template
	Arch           = "arch"               // Talos docs' Packer template
	Cluster        = "cluster"            // hcloud-k8s selects on it when set
)

// Keys of our own, under OwnPrefix. Every resource we make carries
// Managed=ManagedValue and a Role (snapshots have none).
const (
	OwnPrefix       = "hcloud-k8s.io/"
	Managed         = OwnPrefix + "managed-by"
	ManagedValue    = "image-builder"
	reservedHetzner = "hetzner.cloud/"

	Role          = OwnPrefix + "role"
	SchematicRest = OwnPrefix + "schematic-rest" // last 32 hex: a label value holds 63 chars

	// On a build server: its checkpoint and what it must remember.
	Step             = OwnPrefix + "step"              // the step that runs next
	SnapshotAttempts = OwnPrefix + "snapshot-attempts" // snapshots retaken after one vanished
	Force            = OwnPrefix + "force"             // the build replaces an existing snapshot
	Replaces         = OwnPrefix + "replaces"          // ids a forced build replaces, "_"-joined

	// On a snapshot.
	Build   = OwnPrefix + "build"   // id of the server it was taken of
	Request = OwnPrefix + "request" // the request it was built for (also on failure records)
	Failed  = OwnPrefix + "failed"  // why it failed, while it cannot be deleted yet
	Pending = OwnPrefix + "pending" // "verify": not published until it booted

	// On a lease key.
	LeaseOwner = OwnPrefix + "owner" // the invocation holding it
	LeaseUntil = OwnPrefix + "until" // unix seconds

	// On a failure record (Step holds the step that failed).
	Failures     = OwnPrefix + "failures"  // failures so far
	LastError    = OwnPrefix + "error"     // code of the last one
	FailedAt     = OwnPrefix + "failed-at" // unix seconds of the last one
	NextAttempt  = OwnPrefix + "next"      // unix seconds: no attempt before
	ConfigDigest = OwnPrefix + "config"    // the configuration the failures were met under

	// On the deployment marker.
	Deployment = OwnPrefix + "deployment" // the owner's deployment id
	Seen       = OwnPrefix + "seen"       // unix seconds of the owner's last poll
)

// Values of Role.
const (
	RoleBuildServer = "build-server"
	RoleLease       = "lease"
	RoleFailure     = "failure"
	RoleDeployment  = "deployment"
	RoleBootCheck   = "boot-check" // a server booted from a new snapshot to verify it
)

// IsManaged tells whether labels mark a resource the builder made.
func IsManaged(labels map[string]string) bool {
	return labels[Managed] == ManagedValue
}

// Selector selects the resources that carry every label of match and none
// of the keys in absent.
func Selector(match map[string]string, absent ...string) string {
	sel := labelutil.Selector(match)
	for _, k := range absent {
		if sel != "" {
			sel += ","
		}
		sel += "!" + k
	}
	return sel
}

// RoleSelector selects every resource of a role the builder made, in every
// deployment of the project.
func RoleSelector(role string) string {
	return Selector(map[string]string{Managed: ManagedValue, Role: role})
}

// ServerSelector selects every server the builder made: build servers and
// the boot servers that check their snapshots.
func ServerSelector() string {
	return Selector(map[string]string{Managed: ManagedValue}) + "," + Role + " in (" + RoleBuildServer + "," + RoleBootCheck + ")"
}

// SnapshotsOf selects the managed snapshots of a cluster's deployment (of
// no cluster, when cluster is empty).
func SnapshotsOf(cluster string) string {
	if cluster == "" {
		return Selector(map[string]string{Managed: ManagedValue}, Cluster)
	}
	return Selector(map[string]string{Managed: ManagedValue, Cluster: cluster})
}

// SnapshotsOfServer selects the managed snapshots taken of a build server.
func SnapshotsOfServer(serverID int64) string {
	return Selector(map[string]string{Managed: ManagedValue, Build: strconv.FormatInt(serverID, 10)})
}

// Reserved are the keys the builder sets itself; users cannot override them.
var Reserved = []string{OS, TalosVersion, TalosSchematic, Version, Arch, Cluster}

// IsReserved tells whether key is set by the builder itself.
func IsReserved(key string) bool {
	for _, r := range Reserved {
		if key == r {
			return true
		}
	}
	return strings.HasPrefix(key, OwnPrefix)
}

// Check returns a description of what is wrong with the label, or nil.
func Check(key, value string) error {
	if strings.HasPrefix(key, reservedHetzner) {
		return fmt.Errorf("label key %q: the prefix %s is reserved by Hetzner", key, reservedHetzner)
	}
	if _, err := hcloud.ValidateResourceLabels(map[string]any{key: value}); err != nil {
		return fmt.Errorf("label %s=%s: %w; keys are [prefix/]name with name ≤ 63 characters, values ≤ 63 characters, "+
			"alphanumeric with -_. inside", key, value, err)
	}
	return nil
}
