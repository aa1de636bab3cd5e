package factory_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hcloud-k8s/hcloud-k8s/infra/factory"
)

// sfdiskTable is the part of `sfdisk --json` output the tests look at.
type sfdiskTable struct {
	PartitionTable struct {
		Label      string `json:"label"`
		FirstLBA   int64  `json:"firstlba"`
		LastLBA    int64  `json:"lastlba"`
		SectorSize int64  `json:"sectorsize"`
		Partitions []struct {
			Start int64  `json:"start"`
			Size  int64  `json:"size"`
			Type  string `json:"type"`
			Name  string `json:"name"`
			Attrs string `json:"attrs"`
		} `json:"partitions"`
	} `json:"partitiontable"`
}

func sfdisk(t *testing.T, path string) (sfdiskTable, string) {
	t.Helper()
	cmd := exec.Command("sfdisk", "--json", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sfdisk --json %s: %v: %s", path, err, stderr.String())
	}
	var tab sfdiskTable
	if err := json.Unmarshal(out, &tab); err != nil {
		t.Fatalf("parse sfdisk output: %v\n%s", err, out)
	}
	return tab, stderr.String()
}

func TestWriteImageGPT(t *testing.T) {
	for _, tc := range []struct {
		name       string
		size, data int64
	}{
		{"minimum", factory.MinImageSize, 1 << 20},
		{"test default", factory.DefaultImageSize, factory.DefaultDataBytes},
		{"talos size", 1280 << 20, 2 << 20}, // nominal layout, mostly holes
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "disk.raw")
			if err := factory.WriteImage(path, []byte(tc.name), tc.size, tc.data); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() != tc.size {
				t.Errorf("size %d, want %d", st.Size(), tc.size)
			}
			layout, err := factory.Layout(tc.size)
			if err != nil {
				t.Fatal(err)
			}
			{
				tab, stderr := sfdisk(t, path)
				pt := tab.PartitionTable
				if pt.Label != "gpt" || pt.SectorSize != 512 {
					t.Errorf("label %q sector size %d, want gpt 512", pt.Label, pt.SectorSize)
				}
				if pt.FirstLBA != 34 || pt.LastLBA != tc.size/512-34 {
					t.Errorf("usable LBAs %d..%d, want 34..%d", pt.FirstLBA, pt.LastLBA, tc.size/512-34)
				}
				if len(pt.Partitions) != len(layout) {
					t.Fatalf("%d partitions, want %d", len(pt.Partitions), len(layout))
				}
				for i, p := range pt.Partitions {
					want := layout[i]
					if p.Name != want.Name || p.Type != want.Type || p.Start != want.FirstLBA || p.Size != want.LastLBA-want.FirstLBA+1 {
						t.Errorf("partition %d: %+v, want %+v", i, p, want)
					}
					if p.Start%2048 != 0 {
						t.Errorf("partition %s starts at %d, not 1 MiB aligned", p.Name, p.Start)
					}
				}
				if pt.Partitions[1].Attrs != "LegacyBIOSBootable" {
					t.Errorf("BIOS attrs %q, want LegacyBIOSBootable", pt.Partitions[1].Attrs)
				}
				if stderr != "" {
					t.Errorf("sfdisk complained: %s", stderr)
				}
			}
			if out, err := exec.Command("sfdisk", "--verify", path).CombinedOutput(); err != nil || !strings.Contains(string(out), "No errors detected") {
				t.Errorf("sfdisk --verify: %v\n%s", err, out)
			}

			names := make([]string, len(layout))
			for i, p := range layout {
				names[i] = p.Name
			}
			if got := strings.Join(names, ","); got != "EFI,BIOS,BOOT,META,STATE" {
				t.Errorf("layout %s", got)
			}
			wantTypes := []string{factory.TypeEFISystem, factory.TypeBIOSBoot, factory.TypeLinuxFS, factory.TypeLinuxFS, factory.TypeLinuxFS}
			for i, p := range layout {
				if p.Type != wantTypes[i] {
					t.Errorf("%s type %s, want %s", p.Name, p.Type, wantTypes[i])
				}
			}

			out, err := exec.Command("blkid", "-p", "-o", "value", "-s", "PTTYPE", path).Output()
			if err != nil || strings.TrimSpace(string(out)) != "gpt" {
				t.Errorf("blkid PTTYPE %q, %v; want gpt", out, err)
			}

			// the backup GPT alone must be valid: destroy the primary header
			if err := corrupt(path, 512); err != nil {
				t.Fatal(err)
			}
			tab, stderr := sfdisk(t, path)
			if !strings.Contains(stderr, "backup appears OK") {
				t.Errorf("sfdisk did not fall back to the backup GPT: %q", stderr)
			}
			if n := len(tab.PartitionTable.Partitions); n != len(layout) {
				t.Errorf("from the backup GPT: %d partitions, want %d", n, len(layout))
			}
		})
	}
}

func corrupt(path string, off int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteAt([]byte("garbage!"), off)
	return err
}

func TestWriteImageContent(t *testing.T) {
	dir := t.TempDir()
	const size, data = 16 << 20, 3<<20 + 12345
	write := func(name string, seed string) []byte {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := factory.WriteImage(path, []byte(seed), size, data); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, again, other := write("a", "seed-a"), write("a2", "seed-a"), write("b", "seed-b")
	if !bytes.Equal(a, again) {
		t.Error("same seed gave different images")
	}
	if bytes.Equal(a, other) {
		t.Error("different seeds gave equal images")
	}

	layout, _ := factory.Layout(size)
	var nonzero int64
	for _, p := range layout {
		for _, b := range a[p.FirstLBA*512 : (p.LastLBA+1)*512] {
			if b != 0 {
				nonzero++
			}
		}
		if bytes.Count(a[p.FirstLBA*512:(p.LastLBA+1)*512], []byte{0}) == int(p.Size()) {
			t.Errorf("partition %s holds no data", p.Name)
		}
	}
	// random bytes are zero 1/256 of the time
	if lo, hi := int64(data)*254/256, int64(data); nonzero < lo || nonzero > hi {
		t.Errorf("%d non-zero bytes in partitions, want about %d", nonzero, data)
	}
}

func TestWriteImageRejects(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name       string
		size, data int64
	}{
		{"too small", factory.MinImageSize - 512, 0},
		{"not sectors", factory.DefaultImageSize + 1, 0},
		{"too much data", factory.MinImageSize, factory.MinImageSize},
		{"negative data", factory.MinImageSize, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := factory.WriteImage(filepath.Join(dir, "x"), nil, tc.size, tc.data); err == nil {
				t.Error("no error")
			}
		})
	}
}
