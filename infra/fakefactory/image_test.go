package fakefactory_test

import (
	"bytes"
	"compress/flate"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakefactory"
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

// TestLayoutOf checks the layouts at real sizes against the Talos sources
// (see talosLayout and the infra/README.md rows on image layouts and raw
// sizes): names, types, sizes in MiB and the raw image size, which
// siderolabs/talos pkg/imager/profile/testdata/hcloud-*.yaml records.
func TestLayoutOf(t *testing.T) {
	const (
		efi  = fakefactory.TypeEFISystem
		bios = fakefactory.TypeBIOSBoot
		lin  = fakefactory.TypeLinuxFS
	)
	grub := []string{"EFI 100", "BIOS 1", "BOOT 1000", "META 1"}
	for _, tc := range []struct {
		version, arch string
		parts         []string // name and MiB
		types         []string
		rawMiB        int64
		dataMiB       int64
	}{
		{"v1.7.6", "amd64", append(grub[:4:4], "STATE 100", "EPHEMERAL 42"), []string{efi, bios, lin, lin, lin, lin}, 1246, 115},
		{"v1.7.6", "arm64", append(grub[:4:4], "STATE 100", "EPHEMERAL 42"), []string{efi, bios, lin, lin, lin, lin}, 1246, 115},
		{"1.8.0", "amd64", grub, []string{efi, bios, lin, lin}, 1246, 115},
		{"v1.9.5", "arm64", grub, []string{efi, bios, lin, lin}, 1246, 115},
		{"v1.10.7", "amd64", []string{"EFI 1101", "BIOS 1", "BOOT 1000", "META 1"}, []string{efi, bios, lin, lin}, 2247, 230},
		{"v1.10.0-beta.0", "arm64", []string{"EFI 1101", "META 1"}, []string{efi, lin}, 1246, 115},
		{"v1.11.0-alpha.0", "amd64", []string{"EFI 2101", "BIOS 1", "BOOT 2000", "META 1"}, []string{efi, bios, lin, lin}, 4247, 230},
		{"v1.13.9", "amd64", []string{"EFI 2101", "BIOS 1", "BOOT 2000", "META 1"}, []string{efi, bios, lin, lin}, 4247, 230},
		{"v1.13.9", "arm64", []string{"EFI 2101", "META 1"}, []string{efi, lin}, 2246, 115},
		{"v1.14.0-rc.1", "arm64", []string{"EFI 2101", "META 1"}, []string{efi, lin}, 2246, 115},
	} {
		t.Run(tc.version+"/"+tc.arch, func(t *testing.T) {
			parts, size, err := fakefactory.LayoutOf(tc.version, tc.arch, 1)
			if err != nil {
				t.Fatal(err)
			}
			var got, types []string
			next := int64(2048) // partitions start at 1 MiB and follow each other
			for _, p := range parts {
				got = append(got, fmt.Sprintf("%s %d", p.Name, p.Size()>>20))
				types = append(types, p.Type)
				if p.FirstLBA != next || p.Size()%(1<<20) != 0 {
					t.Errorf("%s at LBA %d size %d, want LBA %d and whole MiBs", p.Name, p.FirstLBA, p.Size(), next)
				}
				next = p.LastLBA + 1
				wantAttrs := uint64(0)
				if p.Name == "BIOS" {
					wantAttrs = fakefactory.AttrLegacyBIOSBootable
				}
				if p.Attrs != wantAttrs {
					t.Errorf("%s attributes %#x, want %#x", p.Name, p.Attrs, wantAttrs)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.parts) || fmt.Sprint(types) != fmt.Sprint(tc.types) {
				t.Errorf("layout %v %v, want %v %v", got, types, tc.parts, tc.types)
			}
			if size != tc.rawMiB<<20 {
				t.Errorf("raw size %d MiB, want %d", size>>20, tc.rawMiB)
			}
			if data, err := fakefactory.DataBytesOf(tc.version, tc.arch, 1); err != nil || data != tc.dataMiB<<20 {
				t.Errorf("data %d MiB, %v; want %d", data>>20, err, tc.dataMiB)
			}

			// scaled: the same partitions, smaller, still aligned
			for _, scale := range []int64{fakefactory.QuickScale, 1 << 20} {
				small, ssize, err := fakefactory.LayoutOf(tc.version, tc.arch, scale)
				if err != nil {
					t.Fatal(err)
				}
				if len(small) != len(parts) {
					t.Fatalf("scale %d: %d partitions, want %d", scale, len(small), len(parts))
				}
				next := int64(2048)
				for i, p := range small {
					if p.Name != parts[i].Name || p.Type != parts[i].Type || p.Attrs != parts[i].Attrs ||
						p.FirstLBA != next || p.Size() < 1<<20 || p.Size()%(1<<20) != 0 {
						t.Errorf("scale %d: partition %+v", scale, p)
					}
					next = p.LastLBA + 1
				}
				if ssize%(1<<20) != 0 || ssize < (next+2048)*512 || ssize > size {
					t.Errorf("scale %d: raw size %d for partitions up to LBA %d", scale, ssize, next)
				}
				data, err := fakefactory.DataBytesOf(tc.version, tc.arch, scale)
				if err != nil || data < 64<<10 || data > tc.dataMiB<<20/scale+64<<10 {
					t.Errorf("scale %d: data %d, %v", scale, data, err)
				}
			}
		})
	}
	// the sizes the tests see
	if _, size, _ := fakefactory.LayoutOf("v1.13.9", "amd64", fakefactory.QuickScale); size != 35<<20 {
		t.Errorf("quick v1.13.9 amd64: %d MiB, want 35", size>>20)
	}
	for _, tc := range []struct {
		version, arch string
		scale         int64
	}{
		{"v1.13", "amd64", 1}, {"latest", "amd64", 1}, {"v1.13.9", "riscv64", 1}, {"v1.13.9", "amd64", 0},
	} {
		if _, _, err := fakefactory.LayoutOf(tc.version, tc.arch, tc.scale); err == nil {
			t.Errorf("LayoutOf(%v): no error", tc)
		}
		if _, err := fakefactory.DataBytesOf(tc.version, tc.arch, tc.scale); err == nil {
			t.Errorf("DataBytesOf(%v): no error", tc)
		}
	}
}

func TestWriteImageGPT(t *testing.T) {
	for _, tc := range []struct {
		version, arch string
		scale, data   int64
	}{
		{"v1.13.9", "amd64", fakefactory.QuickScale, 2 << 20},
		{"v1.13.9", "arm64", fakefactory.QuickScale, 1 << 20},
		{"v1.7.6", "amd64", fakefactory.QuickScale, 1 << 20},
		{"v1.13.9", "amd64", 1, 2 << 20}, // real size, mostly holes
		{"v1.7.6", "arm64", 1, 2 << 20},
	} {
		t.Run(fmt.Sprintf("%s/%s/scale %d", tc.version, tc.arch, tc.scale), func(t *testing.T) {
			layout, size, err := fakefactory.LayoutOf(tc.version, tc.arch, tc.scale)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "disk.raw")
			if err := fakefactory.WriteImage(path, []byte(tc.version), layout, size, tc.data, fakefactory.Incompressible); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() != size {
				t.Errorf("size %d, want %d", st.Size(), size)
			}
			{
				tab, stderr := sfdisk(t, path)
				pt := tab.PartitionTable
				if pt.Label != "gpt" || pt.SectorSize != 512 {
					t.Errorf("label %q sector size %d, want gpt 512", pt.Label, pt.SectorSize)
				}
				if pt.FirstLBA != 34 || pt.LastLBA != size/512-34 {
					t.Errorf("usable LBAs %d..%d, want 34..%d", pt.FirstLBA, pt.LastLBA, size/512-34)
				}
				if len(pt.Partitions) != len(layout) {
					t.Fatalf("%d partitions, want %d", len(pt.Partitions), len(layout))
				}
				for i, p := range pt.Partitions {
					want := layout[i]
					if p.Name != want.Name || p.Type != want.Type || p.Start != want.FirstLBA || p.Size != want.LastLBA-want.FirstLBA+1 {
						t.Errorf("partition %d: %+v, want %+v", i, p, want)
					}
					if wantAttrs := map[bool]string{true: "LegacyBIOSBootable"}[p.Name == "BIOS"]; p.Attrs != wantAttrs {
						t.Errorf("%s attrs %q, want %q", p.Name, p.Attrs, wantAttrs)
					}
				}
				if stderr != "" {
					t.Errorf("sfdisk complained: %s", stderr)
				}
			}
			if out, err := exec.Command("sfdisk", "--verify", path).CombinedOutput(); err != nil || !strings.Contains(string(out), "No errors detected") {
				t.Errorf("sfdisk --verify: %v\n%s", err, out)
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

// TestWriteImageContent checks where the data goes and what it is made of:
// deterministic per seed, in every partition, as much as asked for, and
// (in)compressible as its kind says.
func TestWriteImageContent(t *testing.T) {
	dir := t.TempDir()
	layout, size, err := fakefactory.LayoutOf("v1.13.9", "amd64", fakefactory.QuickScale)
	if err != nil {
		t.Fatal(err)
	}
	const data = 10<<20 + 12345
	write := func(name, seed string, kind fakefactory.DataKind) []byte {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := fakefactory.WriteImage(path, []byte(seed), layout, size, data, kind); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		kind fakefactory.DataKind
		// deflated size of the data, as a share of it
		minRatio, maxRatio float64
	}{
		{fakefactory.Incompressible, 0.99, 1.01},
		{fakefactory.Compressible, 0.2, 0.6},
	} {
		t.Run(tc.kind.String(), func(t *testing.T) {
			a, again, other := write("a", "seed-a", tc.kind), write("a2", "seed-a", tc.kind), write("b", "seed-b", tc.kind)
			if !bytes.Equal(a, again) {
				t.Error("same seed gave different images")
			}
			if bytes.Equal(a, other) {
				t.Error("different seeds gave equal images")
			}
			var nonzero int64
			for _, p := range layout {
				part := a[p.FirstLBA*512 : (p.LastLBA+1)*512]
				n := int64(len(part) - bytes.Count(part, []byte{0}))
				if n == 0 {
					t.Errorf("partition %s holds no data", p.Name)
				}
				nonzero += n
			}
			// random bytes are zero 1/256 of the time; words never
			if lo := int64(data) * 254 / 256; nonzero < lo || nonzero > data {
				t.Errorf("%d non-zero bytes in partitions, want about %d", nonzero, data)
			}
			if tc.kind == fakefactory.Compressible && nonzero != data {
				t.Errorf("%d non-zero bytes, want exactly %d", nonzero, data)
			}
			var buf bytes.Buffer
			w, _ := flate.NewWriter(&buf, flate.BestSpeed)
			if _, err := w.Write(a); err != nil {
				t.Fatal(err)
			}
			w.Close()
			if r := float64(buf.Len()) / data; r < tc.minRatio || r > tc.maxRatio {
				t.Errorf("deflated to %.2f of the data, want %.2f..%.2f", r, tc.minRatio, tc.maxRatio)
			}
		})
	}
}

func TestWriteImageRejects(t *testing.T) {
	dir := t.TempDir()
	layout, size, err := fakefactory.LayoutOf("v1.13.9", "amd64", fakefactory.QuickScale)
	if err != nil {
		t.Fatal(err)
	}
	overlap := append([]fakefactory.Partition(nil), layout...)
	overlap[1].FirstLBA = overlap[0].LastLBA
	beyond := append([]fakefactory.Partition(nil), layout...)
	beyond[3].LastLBA = size / 512
	for _, tc := range []struct {
		name  string
		parts []fakefactory.Partition
		size  int64
		data  int64
		kind  fakefactory.DataKind
	}{
		{"not sectors", layout, size + 1, 0, fakefactory.Incompressible},
		{"too small", nil, 4096, 0, fakefactory.Incompressible},
		{"overlap", overlap, size, 0, fakefactory.Incompressible},
		{"beyond the usable end", beyond, size, 0, fakefactory.Incompressible},
		{"too much data", layout, size, size, fakefactory.Incompressible},
		{"negative data", layout, size, -1, fakefactory.Incompressible},
		{"unknown kind", layout, size, 1 << 20, fakefactory.DataKind(7)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := fakefactory.WriteImage(filepath.Join(dir, "x"), nil, tc.parts, tc.size, tc.data, tc.kind); err == nil {
				t.Error("no error")
			}
		})
	}
}
