// Package label names the labels our snapshots and build servers carry and
// checks labels against Hetzner's rules before the API has to.
package label

import (
	"fmt"
	"strings"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
)

// Keys that consumers select snapshots by (see DESIGN.md, "Contract").
const (
	OS              = "os"                 // "talos"
	TalosVersion    = "talos_version"      // hcloud-k8s
	TalosSchematic  = "talos_schematic_id" // hcloud-k8s: first 32 hex of the schematic
	Version         = "version"            // Talos docs' Packer template
	Arch            = "arch"               // Talos docs' Packer template
	Cluster         = "cluster"            // hcloud-k8s selects on it when set
	OwnPrefix       = "hcloud-k8s.io/"     // our management labels
	Managed         = OwnPrefix + "managed-by"
	ManagedValue    = "image-builder"
	reservedHetzner = "hetzner.cloud/"
)

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
