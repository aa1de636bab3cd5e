package talos

// RequiredPartitions are in the hcloud disk image of every Talos version
// and architecture: the boot loader's EFI system partition and META.
// STATE and EPHEMERAL are not: since v1.8 Talos creates them on first boot.
func RequiredPartitions() []string { return []string{"EFI", "META"} }

// ExpectedPartitions returns the partitions, in table order, of the Image
// Factory's hcloud disk image of Talos version v for arch. Prereleases
// count as their minor release.
//
// Source: siderolabs/talos cmd/installer/pkg/install/install.go
// (getPartitionOptions), pkg/machinery/imager/quirks (boot loader per
// version: GRUB up to v1.9, sd-boot on arm64 and dual-boot on amd64 from
// v1.10) and pkg/imager/profile/testdata/hcloud-*.yaml; summarised in
// infra/README.md, the row "Talos hcloud image layouts".
func ExpectedPartitions(v Version, arch string) []string {
	switch {
	case v.Major < 1 || v.Major == 1 && v.Minor < 8:
		return []string{"EFI", "BIOS", "BOOT", "META", "STATE", "EPHEMERAL"}
	case v.Major == 1 && v.Minor < 10, arch != "arm64":
		return []string{"EFI", "BIOS", "BOOT", "META"}
	default:
		return []string{"EFI", "META"}
	}
}
