package poll

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// slowFactory answers each question after a while and says, by the
// target's architecture, that it serves it (amd64), does not (arm64), or is
// building it (the schematics' first digit 'b'). It records how many
// questions it had at once.
type slowFactory struct {
	mu             sync.Mutex
	asked          []build.Target
	inFlight, most int
	delay          time.Duration
}

func (f *slowFactory) Find(_ context.Context, schematic, version, arch string) (talos.Image, error) {
	f.mu.Lock()
	f.asked = append(f.asked, build.Target{Version: version, Arch: arch, Schematic: schematic})
	f.inFlight++
	f.most = max(f.most, f.inFlight)
	f.mu.Unlock()
	time.Sleep(f.delay)
	f.mu.Lock()
	f.inFlight--
	f.mu.Unlock()
	switch {
	case strings.HasPrefix(schematic, "b"):
		return talos.Image{}, &talos.BuildingError{Version: version, Arch: arch, Schematic: schematic,
			Compression: talos.Zstd, Waited: 20 * time.Second}
	case arch == "arm64":
		return talos.Image{}, &talos.NotAvailableError{Version: version, Arch: arch, Schematic: schematic}
	}
	return talos.Image{URL: "http://factory/" + schematic, Compression: talos.Zstd}, nil
}

// TestUnservedAsksInParallel: 24 targets (12 schematics x 2 architectures)
// all startable at once are asked about 8 at a time, each once, and each
// answer becomes the reason of a deferral.
func TestUnservedAsksInParallel(t *testing.T) {
	var schematics []string
	for i := range 12 {
		first := "a"
		if i%3 == 0 {
			first = "b" // being built
		}
		schematics = append(schematics, first+strings.Repeat(fmt.Sprintf("%x", i), 63))
	}
	f := &slowFactory{delay: 50 * time.Millisecond}
	p := New(Deps{Factory: f, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, Options{Rules: Rules{
		Architectures: []string{"amd64", "arm64"}, Schematics: schematics, MaxBuilds: 100, ServerTTL: time.Hour,
	}})
	proj := newProject(t, "v1.13.9")
	unserved, err := p.unserved(context.Background(), proj.state, p.opts.Rules)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.asked) != 24 || f.most != 8 {
		t.Errorf("asked %d times, at most %d at once; want 24, 8", len(f.asked), f.most)
	}
	var building, notServed int
	for tg, why := range unserved {
		switch {
		case strings.HasPrefix(tg.Schematic, "b") &&
			why == "the image factory is building it (no answer within 20s): deferred to the next poll":
			building++
		case !strings.HasPrefix(tg.Schematic, "b") && tg.Arch == "arm64" && why == "the image factory does not serve it yet":
			notServed++
		default:
			t.Errorf("%s: %q", tg, why)
		}
	}
	if building != 8 || notServed != 8 {
		t.Errorf("%d being built, %d not served; want 8 and 8", building, notServed)
	}

	// a poll that runs out of time ends with its context's error
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.unserved(ctx, proj.state, p.opts.Rules); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: err = %v", err)
	}
}
