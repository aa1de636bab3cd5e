package talos

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// Compression of a factory disk image.
type Compression string

const (
	Zstd Compression = "zst" // Talos' hcloud output since v1.8.0; decodes 4-6x faster than xz
	XZ   Compression = "xz"
)

// Image is a disk image the factory serves.
type Image struct {
	URL         string
	Compression Compression
	Size        int64 // compressed bytes, -1 when unknown
}

// NotAvailableError means the factory does not serve the image (yet: new
// releases can 404 for minutes after they are published).
type NotAvailableError struct {
	Version, Arch, Schematic string
}

func (e *NotAvailableError) Error() string {
	return fmt.Sprintf("talos %s is not available from the image factory (hcloud-%s, schematic %s)",
		e.Version, e.Arch, e.Schematic)
}

// BuildingError means the factory is building the image: it took the
// request but did not answer within the timeout. The real factory builds an
// image on the first request for it and answers when it is built, which
// takes minutes; the build goes on when the client leaves, so the request
// has started it (siderolabs/image-factory internal/asset/asset.go
// Builder.Build). Ask again later.
type BuildingError struct {
	Version, Arch, Schematic string
	Compression              Compression
	Waited                   time.Duration
}

func (e *BuildingError) Error() string {
	return fmt.Sprintf("the image factory is building talos %s (hcloud-%s.raw.%s, schematic %s): "+
		"no answer within %s; try again later", e.Version, e.Arch, e.Compression, e.Schematic, e.Waited)
}

// IsBuilding tells whether err says the factory is building an image.
func IsBuilding(err error) bool {
	var b *BuildingError
	return errors.As(err, &b)
}

// Default timeouts of factory requests.
const (
	// DefaultHeadTimeout bounds a HEAD of an image: a built image is
	// answered at once, one that is not built yet only when it is.
	DefaultHeadTimeout = 20 * time.Second
	// DefaultSchematicTimeout bounds registering a schematic.
	DefaultSchematicTimeout = time.Minute
)

// Factory is a client of the Talos Image Factory.
type Factory struct {
	BaseURL string       // e.g. https://factory.talos.dev
	HTTP    *http.Client // nil means http.DefaultClient
	// HeadTimeout bounds each HEAD of an image; default DefaultHeadTimeout.
	// A HEAD the factory took but did not answer in time is a
	// *BuildingError.
	HeadTimeout time.Duration
	// SchematicTimeout bounds POST /schematics; default
	// DefaultSchematicTimeout.
	SchematicTimeout time.Duration
}

func (f *Factory) client() *http.Client {
	if f.HTTP != nil {
		return f.HTTP
	}
	return http.DefaultClient
}

// ImageURL returns the URL of the hcloud disk image of a target. The inputs
// are validated because the URL ends up in a shell command on the rescue
// system.
func (f *Factory) ImageURL(schematic, version, arch string, c Compression) (string, error) {
	if !ValidSchematic(schematic) {
		return "", fmt.Errorf("%q is not a schematic ID (64 lowercase hex digits)", schematic)
	}
	if _, err := ParseVersion(version); err != nil {
		return "", err
	}
	if !ValidArch(arch) {
		return "", fmt.Errorf("%q is not amd64 or arm64", arch)
	}
	if c != Zstd && c != XZ {
		return "", fmt.Errorf("%q is not a compression the factory serves", c)
	}
	base, err := url.Parse(strings.TrimRight(f.BaseURL, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") {
		return "", fmt.Errorf("factory URL %q is not an http(s) URL", f.BaseURL)
	}
	return base.JoinPath("image", schematic, version, "hcloud-"+arch+".raw."+string(c)).String(), nil
}

// Find returns the image of a target, preferring zstd and falling back to
// xz. It returns *NotAvailableError when the factory serves neither, and
// *BuildingError when it is building the image: the factory builds on the
// first request for an image and answers a HEAD only when it is built.
func (f *Factory) Find(ctx context.Context, schematic, version, arch string) (Image, error) {
	for _, c := range []Compression{Zstd, XZ} {
		u, err := f.ImageURL(schematic, version, arch, c)
		if err != nil {
			return Image{}, err
		}
		resp, err := f.head(ctx, u)
		if errors.Is(err, errNoAnswer) {
			return Image{}, &BuildingError{Version: version, Arch: arch, Schematic: schematic, Compression: c,
				Waited: f.headTimeout()}
		}
		if err != nil {
			return Image{}, fmt.Errorf("ask the image factory for %s: %w", u, err)
		}
		switch {
		case resp.StatusCode == http.StatusOK:
			return Image{URL: u, Compression: c, Size: resp.ContentLength}, nil
		case resp.StatusCode == http.StatusNotFound:
			continue
		default:
			return Image{}, fmt.Errorf("ask the image factory for %s: %s", u, resp.Status)
		}
	}
	return Image{}, &NotAvailableError{Version: version, Arch: arch, Schematic: schematic}
}

func (f *Factory) headTimeout() time.Duration { return cmp.Or(f.HeadTimeout, DefaultHeadTimeout) }

// errNoAnswer: the factory took a request but did not answer in time.
var errNoAnswer = errors.New("the factory took the request but did not answer in time")

// head sends a HEAD of u within the HEAD timeout (the real factory answers
// a HEAD itself, but a redirect would be followed) and returns the response
// with its body closed. It returns errNoAnswer when the timeout struck after
// the request was sent: the factory got it and is busy, as opposed to being
// unreachable.
func (f *Factory) head(ctx context.Context, u string) (*http.Response, error) {
	rctx, cancel := context.WithTimeoutCause(ctx, f.headTimeout(), errNoAnswer)
	defer cancel()
	var sent atomic.Bool
	rctx = httptrace.WithClientTrace(rctx, &httptrace.ClientTrace{
		WroteRequest: func(i httptrace.WroteRequestInfo) { sent.Store(i.Err == nil) },
	})
	req, err := http.NewRequestWithContext(rctx, http.MethodHead, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := f.client().Do(req)
	if err != nil {
		if ctx.Err() == nil && errors.Is(context.Cause(rctx), errNoAnswer) && sent.Load() {
			return nil, errNoAnswer
		}
		return nil, err
	}
	resp.Body.Close()
	return resp, nil
}

// IsNotAvailable tells whether err says the factory does not serve an image.
func IsNotAvailable(err error) bool {
	var na *NotAvailableError
	return errors.As(err, &na)
}

// SchematicID registers a schematic customization (YAML) with the factory
// and returns its ID. The factory derives the ID from the content, so the
// same customization always gets the same ID.
func (f *Factory) SchematicID(ctx context.Context, customization string) (string, error) {
	timeout := cmp.Or(f.SchematicTimeout, DefaultSchematicTimeout)
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	failed := func(err error) error {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("register schematic: no answer within %s: %w", timeout, err)
		}
		return fmt.Errorf("register schematic: %w", err)
	}
	u := strings.TrimRight(f.BaseURL, "/") + "/schematics"
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, u, bytes.NewBufferString(customization))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/yaml")
	resp, err := f.client().Do(req)
	if err != nil {
		return "", failed(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", failed(err)
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("register schematic: factory answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var out struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return "", fmt.Errorf("register schematic: %w", err)
	}
	if !ValidSchematic(out.ID) {
		return "", fmt.Errorf("register schematic: factory returned %q, not a schematic ID", out.ID)
	}
	return out.ID, nil
}
