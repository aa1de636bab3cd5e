package build

import (
	"fmt"
	"os"
	"testing"
)

// TestMain releases the benchmarks' image and disks (install_bench_test.go),
// which outlive any one benchmark so that -count>1 does not generate them
// again.
func TestMain(m *testing.M) {
	code := m.Run()
	if bench.env != nil {
		if err := bench.env.close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	os.Exit(code)
}
