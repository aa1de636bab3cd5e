package talos

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

const schem = QemuGuestAgentSchematic

func TestImageURL(t *testing.T) {
	f := &Factory{BaseURL: "https://factory.talos.dev/"}
	got, err := f.ImageURL(schem, "v1.13.9", "arm64", Zstd)
	if err != nil {
		t.Fatal(err)
	}
	if want := "https://factory.talos.dev/image/" + schem + "/v1.13.9/hcloud-arm64.raw.zst"; got != want {
		t.Errorf("ImageURL = %s, want %s", got, want)
	}
	bad := []struct{ schematic, version, arch string }{
		{"ABC", "v1.13.9", "amd64"},
		{schem, "1.13.9", "amd64"},
		{schem, "v1.13.9'; rm -rf /; '", "amd64"},
		{schem, "v1.13.9", "riscv64"},
	}
	for _, b := range bad {
		if u, err := f.ImageURL(b.schematic, b.version, b.arch, XZ); err == nil {
			t.Errorf("ImageURL(%q, %q, %q) = %s, want error", b.schematic, b.version, b.arch, u)
		}
	}
	if _, err := (&Factory{BaseURL: "file:///etc"}).ImageURL(schem, "v1.13.9", "amd64", XZ); err == nil {
		t.Error("file URL accepted")
	}
}

func TestFind(t *testing.T) {
	tests := []struct {
		name     string
		status   map[string]int // by file suffix
		want     Compression
		notAvail bool
		errPart  string
	}{
		{name: "zstd preferred", status: map[string]int{".zst": 200, ".xz": 200}, want: Zstd},
		{name: "xz fallback", status: map[string]int{".zst": 404, ".xz": 200}, want: XZ},
		{name: "not available", status: map[string]int{".zst": 404, ".xz": 404}, notAvail: true},
		{name: "factory broken", status: map[string]int{".zst": 500}, errPart: "500 Internal Server Error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodHead {
					t.Errorf("method %s", r.Method)
				}
				for suffix, code := range tt.status {
					if strings.HasSuffix(r.URL.Path, suffix) {
						if code == 200 {
							// The real factory redirects downloads to its CDN.
							if !strings.HasPrefix(r.URL.Path, "/cdn/") {
								http.Redirect(w, r, "/cdn"+r.URL.Path, http.StatusFound)
								return
							}
							w.Header().Set("Content-Length", "1234")
						}
						w.WriteHeader(code)
						return
					}
				}
				w.WriteHeader(404)
			}))
			defer srv.Close()
			img, err := (&Factory{BaseURL: srv.URL}).Find(context.Background(), schem, "v1.13.9", "amd64")
			switch {
			case tt.notAvail:
				if !IsNotAvailable(err) || err.Error() != "talos v1.13.9 is not available from the image factory (hcloud-amd64, schematic "+schem+")" {
					t.Errorf("err = %v", err)
				}
			case tt.errPart != "":
				if err == nil || !strings.Contains(err.Error(), tt.errPart) || IsNotAvailable(err) {
					t.Errorf("err = %v, want %q", err, tt.errPart)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if img.Compression != tt.want || img.Size != 1234 || !strings.HasSuffix(img.URL, "hcloud-amd64.raw."+string(tt.want)) {
					t.Errorf("image = %+v", img)
				}
			}
		})
	}
}

func TestSchematicID(t *testing.T) {
	const id = "9f14d3ac4dd7ee1ac3a39e6e0c1b5ad3a2e0a3a8ec2d43bb2f1b2ac6a0b1c2d3"
	tests := []struct {
		name   string
		status int
		body   string
		want   string
		errSub string
	}{
		{"created", 201, `{"id":"` + id + `"}`, id, ""},
		{"bad yaml", 400, "invalid customization", "", "400 Bad Request: invalid customization"},
		{"garbage id", 201, `{"id":"../../etc"}`, "", "not a schematic ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				got = r.Method + " " + r.URL.Path + " " + string(b)
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			id, err := (&Factory{BaseURL: srv.URL}).SchematicID(context.Background(), "customization: {}\n")
			if got != "POST /schematics customization: {}\n" {
				t.Errorf("request = %q", got)
			}
			if tt.errSub != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errSub) {
					t.Errorf("err = %v, want %q", err, tt.errSub)
				}
				return
			}
			if err != nil || id != tt.want {
				t.Errorf("id, err = %q, %v", id, err)
			}
		})
	}
}

// slowFactory answers image requests only when release is closed (or the
// client leaves), like the real factory building an image on a cache miss.
func slowFactory(t *testing.T) (url string, release chan struct{}) {
	t.Helper()
	release = make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"id":"`+schem+`"}`)
	}))
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
		srv.Close()
	})
	return srv.URL, release
}

func TestFindWhileBuilding(t *testing.T) {
	url, _ := slowFactory(t)
	f := &Factory{BaseURL: url, HeadTimeout: 100 * time.Millisecond}
	start := time.Now()
	_, err := f.Find(context.Background(), schem, "v1.13.9", "amd64")
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Find took %s with a 100ms timeout", took)
	}
	var b *BuildingError
	if !errors.As(err, &b) || !IsBuilding(err) || IsNotAvailable(err) {
		t.Fatalf("err = %v, want a *BuildingError", err)
	}
	want := "the image factory is building talos v1.13.9 (hcloud-amd64.raw.zst, schematic " + schem +
		"): no answer within 100ms; try again later"
	if err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}

	// the caller's own cancellation is not a build
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := (&Factory{BaseURL: url}).Find(ctx, schem, "v1.13.9", "amd64"); IsBuilding(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled by the caller: err = %v", err)
	}
	// nor is a factory that cannot be reached
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	unreachable := &Factory{BaseURL: "http://" + ln.Addr().String(), HeadTimeout: time.Second}
	if _, err := unreachable.Find(context.Background(), schem, "v1.13.9", "amd64"); err == nil || IsBuilding(err) {
		t.Errorf("unreachable factory: err = %v", err)
	}
	if d := (&Factory{}).headTimeout(); d != DefaultHeadTimeout {
		t.Errorf("default HEAD timeout %s", d)
	}
}

func TestSchematicIDTimeout(t *testing.T) {
	url, release := slowFactory(t)
	f := &Factory{BaseURL: url, SchematicTimeout: 100 * time.Millisecond}
	_, err := f.SchematicID(context.Background(), "customization: {}\n")
	if err == nil || !strings.Contains(err.Error(), "no answer within 100ms") || IsBuilding(err) {
		t.Errorf("err = %v, want a timeout", err)
	}
	close(release)
	if id, err := f.SchematicID(context.Background(), "customization: {}\n"); err != nil || id != schem {
		t.Errorf("answered: %q, %v", id, err)
	}
}
