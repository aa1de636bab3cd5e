package cloud

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
)

// A counter counts every request sent under its context, retries and
// action polls included: exactly the requests the API received. Contexts
// using one client concurrently count apart; a context without a counter
// counts nowhere.
func TestCountRequests(t *testing.T) {
	tests := []struct {
		name    string
		faults  fakehcloud.Faults
		retries bool // the API answered some requests 503 or 423
	}{
		{"no faults", fakehcloud.Faults{}, false},
		{"retried 503 and locked", fakehcloud.Faults{Transient: 0.3, TransientErrors: []fakehcloud.Fault{fakehcloud.FaultUnavailable}, Locked: 0.3}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, emu := start(t, tt.faults)
			ctx := context.Background()
			uncounted, err := c.ServerTypes(ctx)
			if err != nil || len(uncounted) == 0 {
				t.Fatalf("server types = %v, %v", uncounted, err)
			}
			before := len(emu.Requests())
			counters := make([]RequestCounter, 2)
			var wg sync.WaitGroup
			for i := range counters {
				wg.Go(func() {
					cctx := CountRequests(ctx, &counters[i])
					// i+1 servers each, so that the counts differ.
					for j := range i + 1 {
						srv, err := c.CreateServer(cctx, CreateServerOpts{Name: fmt.Sprintf("s%d-%d", i, j), ServerType: "cx23",
							Location: "fsn1", Image: "debian-12"})
						if err == nil {
							err = c.DeleteServer(cctx, srv)
						}
						if err != nil {
							t.Error(err)
						}
					}
				})
			}
			wg.Wait()
			received := emu.Requests()[before:]
			sent := len(received)
			retried := slices.ContainsFunc(received, func(r fakehcloud.Request) bool { return r.Status == 503 || r.Status == 423 })
			if retried != tt.retries {
				t.Errorf("requests answered 503 or 423: %v, want %v", retried, tt.retries)
			}
			if total := counters[0].Count() + counters[1].Count(); total != int64(sent) {
				t.Errorf("counted %d + %d requests, the API received %d", counters[0].Count(), counters[1].Count(), sent)
			}
			// A create and a delete, each waited for: at least 4 requests a server.
			if counters[0].Count() < 4 || counters[1].Count() < 2*4 {
				t.Errorf("counted %d and %d requests for 1 and 2 servers", counters[0].Count(), counters[1].Count())
			}
		})
	}
}
