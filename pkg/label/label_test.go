package label

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		key, value string
		ok         bool
	}{
		{"os", "talos", true},
		{"talos_schematic_id", "ce4c980550dd2ab1b17bbf2b08801c7e", true},
		{"talos_version", "v1.14.0-beta.1", true},
		{"example.com/team", "infra", true},
		{Managed, ManagedValue, true},
		{"pinned", "", true},
		{"a", strings.Repeat("x", 63), true},
		{"a", strings.Repeat("x", 64), false},
		{strings.Repeat("k", 63), "v", true},
		{strings.Repeat("k", 64), "v", false},
		{"team", "in fra", false},
		{"team", "-infra", false},
		{"team", "infra.", false},
		{"-team", "x", false},
		{"", "x", false},
		{"hetzner.cloud/x", "1", false},
		{"a/b/c", "1", false},
		{"team", "ü", false},
	}
	for _, tt := range tests {
		err := Check(tt.key, tt.value)
		if (err == nil) != tt.ok {
			t.Errorf("Check(%q, %q) = %v, want ok=%v", tt.key, tt.value, err, tt.ok)
		}
	}
}

func TestIsReserved(t *testing.T) {
	for key, want := range map[string]bool{
		"os": true, "arch": true, "version": true, "cluster": true, "talos_version": true,
		"talos_schematic_id": true, Managed: true, OwnPrefix + "step": true,
		"team": false, "example.com/os": false, "osx": false,
	} {
		if got := IsReserved(key); got != want {
			t.Errorf("IsReserved(%q) = %v, want %v", key, got, want)
		}
	}
}

func TestSelectors(t *testing.T) {
	tests := []struct {
		name, got, want string
	}{
		{"match and absent", Selector(map[string]string{Arch: "arm64", OS: "talos"}, Cluster), "arch=arm64,os=talos,!cluster"},
		{"absent only", Selector(nil, Cluster, Role), "!cluster,!" + Role},
		{"role", RoleSelector(RoleLease), Managed + "=" + ManagedValue + "," + Role + "=lease"},
		{"servers", ServerSelector(), Managed + "=" + ManagedValue + "," + Role + " in (build-server,boot-check)"},
		{"snapshots of no cluster", SnapshotsOf(""), Managed + "=" + ManagedValue + ",!cluster"},
		{"snapshots of a cluster", SnapshotsOf("prod"), "cluster=prod," + Managed + "=" + ManagedValue},
		{"snapshots of a server", SnapshotsOfServer(42), Build + "=42," + Managed + "=" + ManagedValue},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

func TestIsManaged(t *testing.T) {
	for _, tt := range []struct {
		labels map[string]string
		want   bool
	}{
		{map[string]string{Managed: ManagedValue}, true},
		{map[string]string{Managed: "someone-else"}, false},
		{map[string]string{Role: RoleLease}, false},
		{nil, false},
	} {
		if got := IsManaged(tt.labels); got != tt.want {
			t.Errorf("IsManaged(%v) = %v, want %v", tt.labels, got, tt.want)
		}
	}
}
