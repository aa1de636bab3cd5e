// Package testenv tells a test whether this machine can run it, so that
// the test tiers stay honest: make test-unit runs the unit tests in seconds
// (-short), without root; make test runs everything, as root. A test that
// cannot run here is skipped with the reason; with CI set (CI=1, as .ci/run
// exports it) it fails instead, so that CI never passes by skipping.
package testenv

import (
	"os"
	"strconv"
	"testing"
)

// RootMessage is why a test needs root, in the words of the rescue hosts'
// own error (infra/fakerescue), which the README's troubleshooting quotes.
const RootMessage = "rescue hosts need root (mount namespaces)"

// Need skips t with why unless ok; in CI it fails t.
func Need(t testing.TB, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatalf("%s (CI is set: a test that cannot run fails)", why)
	}
	t.Skip(why)
}

// NeedRoot is for tests that run rescue hosts (infra/fakerescue): their
// mount namespaces need root.
func NeedRoot(t testing.TB) {
	t.Helper()
	Need(t, os.Geteuid() == 0, RootMessage)
}

// NeedLocalWorld is for tests that start the local world (infra/stack):
// the end-to-end tier, which -short (make test-unit) leaves to make test.
// They run rescue hosts, so they need root too.
func NeedLocalWorld(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts the local world: not in -short mode (make test-unit); make test runs it")
	}
	NeedRoot(t)
}
