package talos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
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

// Factory is a client of the Talos Image Factory.
type Factory struct {
	BaseURL string       // e.g. https://factory.talos.dev
	HTTP    *http.Client // nil means http.DefaultClient
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
// xz. It returns *NotAvailableError when the factory serves neither.
func (f *Factory) Find(ctx context.Context, schematic, version, arch string) (Image, error) {
	for _, c := range []Compression{Zstd, XZ} {
		u, err := f.ImageURL(schematic, version, arch, c)
		if err != nil {
			return Image{}, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, u, nil)
		if err != nil {
			return Image{}, err
		}
		resp, err := f.client().Do(req) // follows the redirect to the CDN
		if err != nil {
			return Image{}, fmt.Errorf("ask the image factory for %s: %w", u, err)
		}
		resp.Body.Close()
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

// IsNotAvailable tells whether err says the factory does not serve an image.
func IsNotAvailable(err error) bool {
	var na *NotAvailableError
	return errors.As(err, &na)
}

// SchematicID registers a schematic customization (YAML) with the factory
// and returns its ID. The factory derives the ID from the content, so the
// same customization always gets the same ID.
func (f *Factory) SchematicID(ctx context.Context, customization string) (string, error) {
	u := strings.TrimRight(f.BaseURL, "/") + "/schematics"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewBufferString(customization))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/yaml")
	resp, err := f.client().Do(req)
	if err != nil {
		return "", fmt.Errorf("register schematic: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", fmt.Errorf("register schematic: %w", err)
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
