package secret

import (
	"context"
	"strings"
	"testing"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakesecrets"
)

// TestRead reads through the real aws-sdk-go-v2 clients from the local
// stand-in of Secrets Manager and SSM Parameter Store.
func TestRead(t *testing.T) {
	store := fakesecrets.New()
	url, err := store.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	store.PutSecret("hcloud-k8s/hcloud-token", "tok-sm\n")
	store.PutParameter("/hcloud-k8s/github-token", "tok-ssm")
	store.PutSecret("empty", " ")
	t.Setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", url)
	t.Setenv("AWS_ENDPOINT_URL_SSM", url)
	t.Setenv("AWS_REGION", "eu-central-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "local")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "local")
	r, err := NewReader(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ ref, want, err string }{
		{ref: "hcloud-k8s/hcloud-token", want: "tok-sm"},
		{ref: "ssm:/hcloud-k8s/github-token", want: "tok-ssm"},
		{ref: "missing", err: "read secret missing: "},
		{ref: "ssm:/missing", err: "read SSM parameter /missing: "},
		{ref: "empty", err: "secret empty is empty"},
	}
	for _, tt := range tests {
		got, err := r.Read(context.Background(), tt.ref)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Read(%s) err = %v, want %q", tt.ref, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Read(%s) = %q, %v", tt.ref, got, err)
		}
	}
}
