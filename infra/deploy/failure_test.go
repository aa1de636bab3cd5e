package deploy

import (
	"context"
	"fmt"
	"strconv"
	"testing"

	"github.com/sethvargo/go-envconfig"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/config"
)

// TestFailurePatterns: the template's patterns for FailureBackoff and
// FailureLimit accept exactly what pkg/config accepts (every other setting
// at its default): durations in seconds, minutes, hours, and hours with
// minutes, from 1s to 25h; limits from 0 to 200.
func TestFailurePatterns(t *testing.T) {
	params := obj(loadTemplate(t)["Parameters"])
	agree := func(param, env, v string) {
		t.Helper()
		_, cerr := config.LoadFrom(context.Background(), envconfig.MapLookuper(map[string]string{"HCLOUD_TOKEN": "t", env: v}), nil)
		perr := allowed(obj(params[param]), v)
		if (cerr == nil) != (perr == nil) {
			t.Errorf("%s=%s: configuration error %v, pattern error %v", param, v, cerr, perr)
		}
	}
	for secs := 1; secs <= 25*3600; secs++ {
		if secs <= 2*3600 || secs%7 == 0 || (secs >= 86000 && secs <= 86800) {
			agree("FailureBackoff", "FAILURE_BACKOFF", strconv.Itoa(secs)+"s")
		}
	}
	for m := 0; m <= 25*60; m++ {
		agree("FailureBackoff", "FAILURE_BACKOFF", fmt.Sprintf("%dm", m))
		if h, rest := m/60, m%60; h > 0 && rest > 0 {
			agree("FailureBackoff", "FAILURE_BACKOFF", fmt.Sprintf("%dh%dm", h, rest))
		}
	}
	for h := 0; h <= 30; h++ {
		agree("FailureBackoff", "FAILURE_BACKOFF", fmt.Sprintf("%dh", h))
	}
	for n := 0; n <= 200; n++ {
		agree("FailureLimit", "FAILURE_LIMIT", strconv.Itoa(n))
	}
}
