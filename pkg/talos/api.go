package talos

import (
	"context"
	"crypto/tls"
	"fmt"
)

// APIPort is the Talos API's port: apid on a configured node, the
// maintenance service on one booted without configuration (infra/README.md,
// Talos images).
const APIPort = 50000

// ProbeAPI tells whether the Talos API answers at addr (host:port): it
// completes a TLS handshake. A node booted from an hcloud image without
// user data waits in maintenance mode, serving the API with a self-signed
// certificate that nothing can verify (talosctl's --insecure skips the
// check likewise), so the certificate is not checked: the handshake shows
// that Talos booted from the disk and serves its API. It reports no
// version: that needs Talos' gRPC API, whose Go client is not at hand.
func ProbeAPI(ctx context.Context, addr string) (version string, err error) {
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("talos API at %s: %w", addr, err)
	}
	conn.Close()
	return "", nil
}
