package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/disk"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakefactory"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakerescue"
	"github.com/hcloud-k8s/hcloud-k8s/infra/testenv"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/gpt"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/gpt/gpttest"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/ssh"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// rescuePort is where the emulated rescue systems listen, as on Hetzner.
const rescuePort = 22

// newRescue creates machine id in pool, lets prepare (if not nil) work on
// its disk file, boots its rescue system with a fresh key and logs in as the
// Builder does. It returns the client and the disk file; the caller closes
// the client and deletes the machine. On error the machine is deleted.
func newRescue(ctx context.Context, pool *fakerescue.Pool, id int64, prepare func(diskPath string) error) (*ssh.Client, string, error) {
	return newRescueLogged(ctx, pool, id, slog.New(slog.DiscardHandler), prepare)
}

// newRescueLogged is newRescue with the client logging to log: every line
// of the commands' output.
func newRescueLogged(ctx context.Context, pool *fakerescue.Pool, id int64, log *slog.Logger, prepare func(diskPath string) error) (_ *ssh.Client, diskPath string, err error) {
	ip, err := pool.Create(id, 0)
	if err != nil {
		return nil, "", err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, pool.Delete(id))
		}
	}()
	if diskPath, err = pool.DiskPath(id); err != nil {
		return nil, "", err
	}
	if prepare != nil {
		if err := prepare(diskPath); err != nil {
			return nil, "", fmt.Errorf("prepare disk of machine %d: %w", id, err)
		}
	}
	key, err := ssh.NewKey()
	if err != nil {
		return nil, "", err
	}
	if err := pool.Boot(id, &fakerescue.Rescue{AuthorizedKeys: []string{key.AuthorizedKey()}}); err != nil {
		return nil, "", err
	}
	d := &ssh.Dialer{Key: key, Addr: net.JoinHostPort(ip, strconv.Itoa(rescuePort)), Logger: log}
	client, err := d.Dial(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("log in to machine %d: %w", id, err)
	}
	return client, diskPath, nil
}

// TestInstallOnRescueHost writes and verifies images where the Builder does,
// in an emulated rescue system over SSH, against the emulated factory, on
// rescue systems as they may really be: another login shell, tools missing,
// a discard that keeps the data. Good images must land on the disk byte for
// byte and pass the verification; a cut-short download must fail the script
// after its attempts.
func TestInstallOnRescueHost(t *testing.T) {
	testenv.NeedRoot(t) // the rescue pool
	tgt := Target{Version: "v1.13.9", Arch: "amd64", Schematic: talos.VanillaSchematic}
	f, base, want := startFactory(t, tgt)
	fc := &talos.Factory{BaseURL: base}
	const attempts = 2

	clean := func(o fakerescue.Options) fakerescue.Options { o.Dirty = false; return o }
	tests := []struct {
		name     string
		opts     fakerescue.Options // Dirty unless cleared
		c        talos.Compression
		truncate fakefactory.Truncation
		wantOK   bool
		// wantStderr is part of what the script said; wantFile the end of the
		// downloaded file's name.
		wantStderr, wantFile string
	}{
		{name: "zstd", c: talos.Zstd, wantOK: true, wantFile: ".zst"},
		{name: "xz", c: talos.XZ, wantOK: true, wantFile: ".xz"},
		{name: "login shell dash", opts: fakerescue.Options{Shell: "/bin/sh"}, c: talos.Zstd, wantOK: true},
		{name: "no curl: wget", opts: fakerescue.Options{MissingTools: []string{"curl"}}, c: talos.Zstd, wantOK: true,
			wantStderr: `-> "-" [1]`}, // wget --no-verbose's summary line
		{name: "no sfdisk", opts: fakerescue.Options{MissingTools: []string{"sfdisk"}}, c: talos.Zstd, wantOK: true},
		{name: "no zstd: xz", opts: fakerescue.Options{MissingTools: []string{"zstd"}}, c: talos.Zstd, wantOK: true, wantFile: ".xz"},
		{name: "discard keeps data", opts: fakerescue.Options{DiscardKeepsData: true}, c: talos.Zstd, wantOK: true,
			wantStderr: "zero-filling it"},
		{name: "discard keeps data, xz", opts: fakerescue.Options{DiscardKeepsData: true}, c: talos.XZ, wantOK: true,
			wantStderr: "zero-filling it"},
		{name: "no blkdiscard: every block", opts: clean(fakerescue.Options{MissingTools: []string{"blkdiscard"}}), c: talos.Zstd, wantOK: true,
			wantStderr: "writing every block of the image"},
		{name: "dash, no curl, sfdisk or zstd, discard keeps data",
			opts: fakerescue.Options{Shell: "/bin/sh", MissingTools: []string{"curl", "sfdisk", "zstd"}, DiscardKeepsData: true},
			c:    talos.Zstd, wantOK: true, wantStderr: "zero-filling it", wantFile: ".xz"},
		{name: "zstd short object", c: talos.Zstd, truncate: fakefactory.TruncateShort},
		{name: "zstd cut connection", c: talos.Zstd, truncate: fakefactory.TruncateCut},
		{name: "xz short object", c: talos.XZ, truncate: fakefactory.TruncateShort},
		{name: "xz cut connection", c: talos.XZ, truncate: fakefactory.TruncateCut},
		{name: "wget cut connection", opts: fakerescue.Options{MissingTools: []string{"curl"}}, c: talos.Zstd, truncate: fakefactory.TruncateCut},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.SetTruncate(tt.truncate) // the factory is shared: subtests run one by one
			before := len(f.Requests())
			opts := tt.opts
			if !slices.Contains(opts.MissingTools, "blkdiscard") {
				opts.Dirty = true // old data inside the image's span and behind it
			}
			opts.Dir, opts.DiskSize, opts.BootDelay, opts.Port = t.TempDir(), quickDiskSize(t), 10*time.Millisecond, rescuePort
			pool := fakerescue.New(opts)
			t.Cleanup(func() {
				if err := pool.Close(); err != nil {
					t.Errorf("close rescue pool: %v", err)
				}
			})
			url, err := fc.ImageURL(tgt.Schematic, tgt.Version, tgt.Arch, tt.c)
			if err != nil {
				t.Fatal(err)
			}
			script, err := installScript(talos.Image{URL: url, Compression: tt.c}, attempts, 0)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			logs := &lineLog{}
			log := slog.New(logs)
			client, diskPath, err := newRescueLogged(ctx, pool, 1, log, nil)
			if err != nil {
				t.Fatalf("rescue host: %v", err)
			}
			t.Cleanup(func() { client.Close() })
			if got, err := disk.FileDigest(diskPath); err != nil || got == want {
				t.Fatalf("disk before the write: %s, %v", got, err)
			}

			err = client.RunStdin(ctx, scriptCommand, strings.NewReader(script), nil)
			downloads := f.Requests()[before:]
			if !tt.wantOK {
				var exit *ssh.ExitError
				if !errors.As(err, &exit) || exit.Status == 0 || !strings.Contains(exit.Tail, fmt.Sprintf("failed %d times", attempts)) {
					t.Fatalf("script on a truncated download: err = %v, want a non-zero exit status after %d attempts", err, attempts)
				}
				if n := countGets(downloads); n != attempts {
					t.Errorf("%d downloads, want %d", n, attempts)
				}
				return
			}
			if err != nil {
				t.Fatalf("script: %v", err)
			}
			if got, err := disk.FileDigest(diskPath); err != nil || got != want {
				t.Errorf("disk digest %s (%v), want the image's %s", got, err, want)
			}
			if n := countGets(downloads); n != 1 {
				t.Errorf("%d downloads, want 1", n)
			}
			if tt.wantFile != "" && !strings.HasSuffix(downloads[len(downloads)-1].Path, tt.wantFile) {
				t.Errorf("downloaded %s, want a %s file", downloads[len(downloads)-1].Path, tt.wantFile)
			}
			if tt.wantStderr != "" && !logs.contains(tt.wantStderr) {
				t.Errorf("the script did not say %q:\n%s", tt.wantStderr, logs)
			}
			if tt.wantStderr == "" && logs.contains("rescue:") {
				t.Errorf("the script took a detour:\n%s", logs)
			}

			names, err := verifyDisk(ctx, client, tgt, log)
			if err != nil {
				t.Fatalf("verify: %v", err)
			}
			for _, p := range talos.RequiredPartitions() {
				if !slices.Contains(names, p) {
					t.Errorf("verified partitions %q lack %s", names, p)
				}
			}
		})
	}
}

// A failed attempt is retried from an emptied disk: a connection cut in
// the middle of the first download leaves no trace once the second succeeds.
func TestInstallRetriesOnRescueHost(t *testing.T) {
	testenv.NeedRoot(t) // the rescue pool
	tgt := Target{Version: "v1.13.9", Arch: "amd64", Schematic: talos.VanillaSchematic}
	f, base, want := startFactory(t, tgt)
	url, err := (&talos.Factory{BaseURL: base}).ImageURL(tgt.Schematic, tgt.Version, tgt.Arch, talos.Zstd)
	if err != nil {
		t.Fatal(err)
	}
	pool := fakerescue.New(fakerescue.Options{Dir: t.TempDir(), DiskSize: quickDiskSize(t), Dirty: true,
		BootDelay: 10 * time.Millisecond, Port: rescuePort})
	t.Cleanup(func() {
		if err := pool.Close(); err != nil {
			t.Errorf("close rescue pool: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	logs := &lineLog{}
	client, diskPath, err := newRescueLogged(ctx, pool, 1, slog.New(logs), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	f.SetTruncate(fakefactory.TruncateCut)
	go func() { // serve the second attempt in full
		for ctx.Err() == nil && countGets(f.Requests()) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		f.SetTruncate(fakefactory.TruncateNone)
	}()
	script, err := installScript(talos.Image{URL: url, Compression: talos.Zstd}, 3, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.RunStdin(ctx, scriptCommand, strings.NewReader(script), nil); err != nil {
		t.Fatalf("script: %v", err)
	}
	if got, err := disk.FileDigest(diskPath); err != nil || got != want {
		t.Errorf("disk digest %s (%v), want the image's %s", got, err, want)
	}
	if n := countGets(f.Requests()); n != 2 {
		t.Errorf("%d downloads, want 2", n)
	}
	if !logs.contains("attempt 1 of 3") {
		t.Errorf("the script did not report the retry:\n%s", logs)
	}
}

// countGets counts the image downloads in reqs: GETs of the CDN.
func countGets(reqs []fakefactory.Request) int {
	n := 0
	for _, r := range reqs {
		if r.Method == "GET" && strings.HasPrefix(r.Path, "/cdn/") {
			n++
		}
	}
	return n
}

// lineLog is a slog.Handler that keeps the messages: the rescue system's
// output as pkg/ssh logs it, one line each.
type lineLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *lineLog) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, r.Message)
	return nil
}
func (l *lineLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *lineLog) WithGroup(string) slog.Handler      { return l }

func (l *lineLog) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.lines, func(line string) bool { return strings.Contains(line, s) })
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func TestInstallScript(t *testing.T) {
	img := talos.Image{URL: "http://127.0.0.1:8080/image/" + talos.VanillaSchematic + "/v1.13.9/hcloud-amd64.raw.zst", Compression: talos.Zstd}
	s, err := installScript(img, 3, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"set -euo pipefail\n",
		"zst='" + img.URL + "'\n",
		"xz='http://127.0.0.1:8080/image/" + talos.VanillaSchematic + "/v1.13.9/hcloud-amd64.raw.xz'\n",
		"attempts=3\ndelay=5\n",
		"blkdiscard --force /dev/sda",
		"blkdiscard --zeroout --force /dev/sda",
		`zstd -dcq "$z" 1<>/dev/sda`,
		`conv="$conv"`,
		"\nmain </dev/null\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	if strings.HasSuffix(s, "main </dev/null") {
		t.Error("the script's last line lacks its newline: bash -s would not run it")
	}
	xzOnly, err := installScript(talos.Image{URL: "https://factory.talos.dev/x.raw.xz", Compression: talos.XZ}, 0, 0)
	if err != nil || !strings.Contains(xzOnly, "zst=''\nxz='https://factory.talos.dev/x.raw.xz'\nattempts=1\n") {
		t.Errorf("xz script: %v\n%s", err, xzOnly)
	}
	for _, bad := range []talos.Image{
		{URL: "file:///etc/passwd", Compression: talos.XZ},
		{URL: "http://127.0.0.1/x.raw.gz", Compression: "gz"},
	} {
		if _, err := installScript(bad, 1, 0); err == nil {
			t.Errorf("installScript(%+v) accepted", bad)
		}
	}
	if got := shellQuote(`it's $(x)`); got != `'it'\''s $(x)'` {
		t.Errorf("shellQuote = %s", got)
	}
}

// TestCheckDisk: the partition tables the Builder accepts as a written
// Talos disk, and how it reports differences from the expected layout.
func TestCheckDisk(t *testing.T) {
	const size = 8 << 20
	image := func(names ...string) []byte { return gpttest.Image(size, gpttest.Layout(names...)) }
	last := uint64(size/gpt.SectorSize - 1)
	tests := []struct {
		name, version, arch string
		disk                []byte
		wantMissing         []string
		wantExtra           []string
		wantErr             string
	}{
		{name: "v1.13 amd64", version: "v1.13.9", arch: "amd64", disk: image("EFI", "BIOS", "BOOT", "META")},
		{name: "v1.13 arm64", version: "v1.13.9", arch: "arm64", disk: image("EFI", "META")},
		{name: "v1.7 with STATE", version: "v1.7.7", arch: "amd64", disk: image("EFI", "BIOS", "BOOT", "META", "STATE", "EPHEMERAL")},
		{name: "STATE left in a v1.13 image", version: "v1.13.9", arch: "amd64", disk: image("EFI", "BIOS", "BOOT", "META", "STATE"),
			wantExtra: []string{"STATE"}},
		{name: "arm64 layout for amd64", version: "v1.12.0", arch: "amd64", disk: image("EFI", "META"),
			wantMissing: []string{"BIOS", "BOOT"}},
		{name: "no META", version: "v1.13.9", arch: "amd64", disk: image("EFI", "BIOS", "BOOT"),
			wantErr: "lacks the Talos partition META"},
		{name: "no EFI", version: "v1.13.9", arch: "arm64", disk: image("META"), wantErr: "lacks the Talos partition EFI"},
		{name: "bad entries CRC", version: "v1.13.9", arch: "amd64", disk: func() []byte {
			d := image("EFI", "BIOS", "BOOT", "META")
			d[2*gpt.SectorSize+56] = 'X' // the first name
			return d
		}(), wantErr: "primary GPT entries: CRC32 mismatch"},
		{name: "MBR partition table", version: "v1.13.9", arch: "amd64", disk: mbrDisk(), wantErr: "not a GPT"},
		{name: "empty disk", version: "v1.13.9", arch: "amd64", disk: make([]byte, size), wantErr: "no partition table"},
		{name: "backup header mismatch", version: "v1.13.9", arch: "amd64", disk: func() []byte {
			d := image("EFI", "BIOS", "BOOT", "META")
			d[last*gpt.SectorSize+40]++ // first usable LBA
			gpttest.SetHeaderCRC(d, last)
			return d
		}(), wantErr: "backup GPT header at LBA 16383: usable range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := talos.ParseVersion(tt.version)
			if err != nil {
				t.Fatal(err)
			}
			lc, err := checkDisk(bytes.NewReader(tt.disk), int64(len(tt.disk)), v, tt.arch)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("checkDisk = %+v, %v; want an error with %q", lc, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(lc.Missing, tt.wantMissing) || !slices.Equal(lc.Extra, tt.wantExtra) {
				t.Errorf("missing %q, extra %q; want %q, %q", lc.Missing, lc.Extra, tt.wantMissing, tt.wantExtra)
			}
		})
	}
}

// verifyDisk reads what it checks with a size query and two dd reads, and
// fails on answers it cannot use.
func TestVerifyDisk(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	r := &fakeRemote{table: talosTable}
	names, err := verifyDisk(t.Context(), r, target, log)
	if err != nil || !slices.Equal(names, []string{"EFI", "BIOS", "BOOT", "META"}) {
		t.Fatalf("verifyDisk = %q, %v", names, err)
	}
	last := len(talosTable)/gpt.SectorSize - 1
	wantCmds := []string{diskSizeCommand, fmt.Sprintf(readCommand, 0, 34), fmt.Sprintf(readCommand, last-32, 33)}
	if !slices.Equal(r.commands, wantCmds) {
		t.Errorf("commands %q, want %q", r.commands, wantCmds)
	}

	tests := []struct {
		name   string
		remote Remote
		want   string
	}{
		{"size not a number", scripted{diskSizeCommand: "40 GB\n"}, `"40 GB\n" is not a number`},
		{"size fails", scripted{}, "read the disk size"},
		{"read fails", scripted{diskSizeCommand: "8388608\n"}, "dd if=/dev/sda bs=512 skip=0 count=34 status=none"},
		{"short read", scripted{diskSizeCommand: "8388608\n", fmt.Sprintf(readCommand, 0, 34): "short"}, "unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := verifyDisk(t.Context(), tt.remote, target, log); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("verifyDisk: %v, want an error with %q", err, tt.want)
			}
		})
	}
}

// scripted answers the commands it knows and fails the others.
type scripted map[string]string

func (s scripted) RunStdin(_ context.Context, cmd string, _ io.Reader, stdout io.Writer) error {
	out, ok := s[cmd]
	if !ok {
		return &ssh.ExitError{Status: 1, Tail: "no such command here"}
	}
	_, err := io.WriteString(stdout, out)
	return err
}

func (scripted) Close() error { return nil }

// quickDiskSize is a disk twice the size of the biggest quick image, so
// that old data lies inside the image's span and behind it.
func quickDiskSize(t *testing.T) int64 {
	t.Helper()
	_, size, err := fakefactory.LayoutOf("v1.13.9", "amd64", fakefactory.QuickScale)
	if err != nil {
		t.Fatal(err)
	}
	return 2 * size
}

// startFactory serves quick images and returns the factory, its URL and the
// digest of tgt's raw image.
func startFactory(t *testing.T, tgt Target) (*fakefactory.Factory, string, string) {
	t.Helper()
	f := fakefactory.New(fakefactory.Options{Scale: fakefactory.QuickScale, Redirect: true})
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("close factory: %v", err)
		}
	})
	base, err := f.Start()
	if err != nil {
		t.Fatal(err)
	}
	_, want, err := f.Image(tgt.Schematic, tgt.Version, tgt.Arch)
	if err != nil {
		t.Fatal(err)
	}
	return f, base, want
}
