package main

import (
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
)

// BenchmarkBuild builds one snapshot through the Lambda emulator with fixed
// emulated delays and reports what is ours: wall time minus the emulated
// delays on the build's path, Hetzner API requests, Lambda invocations and
// billed milliseconds per build, and the requests of a no-op request; with
// the boot check and without, whose difference is the check's cost.
func BenchmarkBuild(b *testing.B) {
	const (
		action   = 100 * time.Millisecond // every Hetzner action
		boot     = time.Second            // rescue system until SSH answers
		snapshot = time.Second            // create_image
		talos    = time.Second            // boot from disk until the Talos API answers
	)
	// On the path: create_server, enable_rescue, start_server + boot,
	// stop_server, create_image, delete_server.
	buildPath := 5*action + boot + snapshot
	for _, bench := range []struct {
		name       string
		verifyBoot string
		// the boot check's: create_server, start_server + Talos boot,
		// delete_server
		emulated time.Duration
	}{
		{"verify-boot", "true", buildPath + 3*action + talos},
		{"no-verify-boot", "false", buildPath},
	} {
		b.Run(bench.name, func(b *testing.B) {
			var overhead, requests, invocations, billed, noop float64
			for range b.N {
				b.StopTimer()
				// The default lease TTL: its heartbeat does not fire in a short build.
				w := newWorld(b, setup{env: map[string]string{"LEASE_TTL": "90s", "VERIFY_BOOT": bench.verifyBoot},
					stack: stack.Options{BootDelay: boot, ActionDuration: action,
						ActionDurations: map[string]time.Duration{"create_image": snapshot}}})
				w.Stack.Machines.SetTalosBootDelay(talos)
				b.StartTimer()
				start := time.Now()
				resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`)
				wall := time.Since(start)
				b.StopTimer()
				if ferr != "" || resp.Results[0].State != build.Done {
					b.Fatalf("build: %+v %s", resp, ferr)
				}
				overhead += (wall - bench.emulated).Seconds()
				requests += float64(len(w.Stack.Cloud.Requests()))
				for _, inv := range w.Lambda.Invocations("builder") {
					invocations++
					billed += float64(inv.BilledMS)
				}
				before := len(w.Stack.Cloud.Requests())
				if resp, ferr := w.invoke(`{"version":"v1.13.9","arch":"amd64"}`); ferr != "" || resp.Results[0].State != build.Done {
					b.Fatalf("no-op: %+v %s", resp, ferr)
				}
				noop += float64(len(w.Stack.Cloud.Requests()) - before)
			}
			n := float64(b.N)
			b.ReportMetric(overhead/n, "overhead-s/build")
			b.ReportMetric(requests/n, "api-requests/build")
			b.ReportMetric(invocations/n, "invocations/build")
			b.ReportMetric(billed/n, "billed-ms/build")
			b.ReportMetric(noop/n, "api-requests/noop")
		})
	}
}
