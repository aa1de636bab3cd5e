package fakehcloud

import (
	"net/http"
	"testing"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
	"golang.org/x/crypto/ssh"
)

func TestSSHKeys(t *testing.T) {
	e := newEnv(t, Options{})
	pub := newPublicKey(t)
	parsed, _, _, _, err := ssh.ParseAuthorizedKey([]byte(pub))
	if err != nil {
		t.Fatal(err)
	}
	key, _, err := e.client.SSHKey.Create(ctx(t), hcloud.SSHKeyCreateOpts{
		Name: "builder-1", PublicKey: pub, Labels: map[string]string{"managed-by": "hcloud-k8s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := ssh.FingerprintLegacyMD5(parsed); key.Fingerprint != want || len(want) != 47 {
		t.Fatalf("fingerprint = %q, want %q", key.Fingerprint, want)
	}

	tests := []struct {
		name string
		opts hcloud.SSHKeyCreateOpts
		code hcloud.ErrorCode
	}{
		{"same name", hcloud.SSHKeyCreateOpts{Name: "builder-1", PublicKey: newPublicKey(t)}, hcloud.ErrorCodeUniquenessError},
		{"same key", hcloud.SSHKeyCreateOpts{Name: "builder-2", PublicKey: pub}, hcloud.ErrorCodeUniquenessError},
		{"not a key", hcloud.SSHKeyCreateOpts{Name: "builder-3", PublicKey: "ssh-ed25519 AAAAnope"}, hcloud.ErrorCodeInvalidInput},
		{"bad label", hcloud.SSHKeyCreateOpts{Name: "builder-4", PublicKey: newPublicKey(t), Labels: map[string]string{"a": "-b"}}, hcloud.ErrorCodeInvalidInput},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := e.client.SSHKey.Create(ctx(t), tt.opts)
			status := http.StatusBadRequest
			if tt.code == hcloud.ErrorCodeUniquenessError {
				status = http.StatusConflict
			}
			wantAPIError(t, err, tt.code, status)
		})
	}

	other, _, err := e.client.SSHKey.Create(ctx(t), hcloud.SSHKeyCreateOpts{Name: "other", PublicKey: newPublicKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	byFingerprint, _, err := e.client.SSHKey.GetByFingerprint(ctx(t), key.Fingerprint)
	if err != nil || byFingerprint == nil || byFingerprint.ID != key.ID {
		t.Fatalf("by fingerprint: %v, %v", byFingerprint, err)
	}
	byName, _, err := e.client.SSHKey.Get(ctx(t), "other")
	if err != nil || byName == nil || byName.ID != other.ID {
		t.Fatalf("by name: %v, %v", byName, err)
	}
	managed, err := e.client.SSHKey.AllWithOpts(ctx(t), hcloud.SSHKeyListOpts{ListOpts: hcloud.ListOpts{LabelSelector: "managed-by=hcloud-k8s"}})
	if err != nil || len(managed) != 1 || managed[0].ID != key.ID {
		t.Fatalf("managed keys: %v, %v", managed, err)
	}

	updated, _, err := e.client.SSHKey.Update(ctx(t), key, hcloud.SSHKeyUpdateOpts{Name: "builder-renamed", Labels: map[string]string{"x": "y"}})
	if err != nil || updated.Name != "builder-renamed" || len(updated.Labels) != 1 || updated.Labels["x"] != "y" {
		t.Fatalf("update: %+v, %v", updated, err)
	}
	_, _, err = e.client.SSHKey.Update(ctx(t), key, hcloud.SSHKeyUpdateOpts{Name: "other"})
	wantAPIError(t, err, hcloud.ErrorCodeUniquenessError, http.StatusConflict)

	if _, err := e.client.SSHKey.Delete(ctx(t), key); err != nil {
		t.Fatal(err)
	}
	if got, _, err := e.client.SSHKey.GetByName(ctx(t), updated.Name); got != nil || err != nil {
		t.Fatalf("deleted key: %v, %v", got, err)
	}
	if keys := e.cloud.SSHKeys(); len(keys) != 1 || keys[0].Name != "other" {
		t.Fatalf("keys left = %+v", keys)
	}
}
