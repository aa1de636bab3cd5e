package deploy

import (
	"os"
	"testing"

	"github.com/hcloud-k8s/hcloud-k8s/infra/stack/stacktest"
)

// TestMain removes the functions' bootstraps that the tests built.
func TestMain(m *testing.M) {
	os.Exit(stacktest.Main(m))
}
