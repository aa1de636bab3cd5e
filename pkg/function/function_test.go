package function

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// TestLoadWithTheFactoryDown: with SCHEMATIC_CUSTOMIZATION set, a function
// starts whether the image factory answers or not. The customization is
// registered when first needed, within the factory client's timeout, and
// once registered it is kept: the factory is asked once per warm function.
func TestLoadWithTheFactoryDown(t *testing.T) {
	var posts atomic.Int32
	var down atomic.Bool
	down.Store(true)
	factory := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			time.Sleep(time.Second) // longer than the client waits
			return
		}
		posts.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{"id":"` + strings.Repeat("c", 64) + `"}`))
	}))
	t.Cleanup(factory.Close)
	t.Setenv("HCLOUD_TOKEN", "token")
	t.Setenv("HCLOUD_ENDPOINT", "http://"+unusedAddr(t)+"/v1")
	t.Setenv("TALOS_FACTORY_URL", factory.URL)
	t.Setenv("SCHEMATIC_IDS", talos.QemuGuestAgentSchematic)
	t.Setenv("SCHEMATIC_CUSTOMIZATION", "customization:\n  extraKernelArgs:\n    - net.ifnames=0\n")

	ctx := context.Background()
	start := time.Now()
	s, err := Load(ctx, "test")
	if err != nil {
		t.Fatalf("Load with the factory down: %v", err)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("Load took %s: it waited for the factory", took)
	}
	s.Factory.SchematicTimeout = 200 * time.Millisecond
	ids, err := s.Schematics.Resolve(ctx)
	if err == nil || !strings.Contains(err.Error(), "SCHEMATIC_CUSTOMIZATION: register schematic: no answer within 200ms") ||
		len(ids) != 1 || ids[0] != talos.QemuGuestAgentSchematic {
		t.Errorf("resolve with the factory down: %v, %v", ids, err)
	}

	down.Store(false)
	for range 2 {
		ids, err = s.Schematics.Resolve(ctx)
		if err != nil || len(ids) != 2 || ids[1] != strings.Repeat("c", 64) {
			t.Errorf("resolve with the factory up: %v, %v", ids, err)
		}
	}
	if n := posts.Load(); n != 1 {
		t.Errorf("the customization was registered %d times, want once", n)
	}
}

// unusedAddr returns a loopback address nothing listens on.
func unusedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
