package talos

import "regexp"

// Architectures Talos publishes hcloud images for, in the order builds run.
var Architectures = []string{"amd64", "arm64"}

// ValidArch reports whether arch is one Talos builds hcloud images for.
func ValidArch(arch string) bool { return arch == "amd64" || arch == "arm64" }

var schematicRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ValidSchematic reports whether id looks like an Image Factory schematic ID:
// 64 lowercase hex digits (a SHA-256).
func ValidSchematic(id string) bool { return schematicRE.MatchString(id) }

// Well-known schematics.
const (
	// VanillaSchematic is the factory's schematic without customization.
	VanillaSchematic = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
	// QemuGuestAgentSchematic adds siderolabs/qemu-guest-agent; the default of
	// hcloud-k8s/terraform-hcloud-kubernetes.
	QemuGuestAgentSchematic = "ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515"
)
