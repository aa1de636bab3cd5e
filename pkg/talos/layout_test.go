package talos

import (
	"slices"
	"strings"
	"testing"
)

func TestExpectedPartitions(t *testing.T) {
	const (
		old    = "EFI BIOS BOOT META STATE EPHEMERAL"
		grub   = "EFI BIOS BOOT META"
		sdboot = "EFI META"
	)
	tests := []struct {
		version, arch, want string
	}{
		{"v1.7.7", "amd64", old},
		{"v1.7.7", "arm64", old},
		{"v0.14.3", "amd64", old},
		{"v1.8.0-alpha.1", "amd64", grub},
		{"v1.8.4", "arm64", grub},
		{"v1.9.5", "arm64", grub},
		{"v1.10.0", "amd64", grub},
		{"v1.10.0", "arm64", sdboot},
		{"v1.13.9", "amd64", grub},
		{"v1.13.9", "arm64", sdboot},
		{"v1.14.0-beta.1", "arm64", sdboot},
		{"v2.0.0", "amd64", grub},
	}
	for _, tt := range tests {
		v, err := ParseVersion(tt.version)
		if err != nil {
			t.Fatal(err)
		}
		got := ExpectedPartitions(v, tt.arch)
		if !slices.Equal(got, strings.Fields(tt.want)) {
			t.Errorf("ExpectedPartitions(%s, %s) = %v, want %s", tt.version, tt.arch, got, tt.want)
		}
		for _, r := range RequiredPartitions() {
			if !slices.Contains(got, r) {
				t.Errorf("layout of %s %s lacks the required %s", tt.version, tt.arch, r)
			}
		}
	}
}
