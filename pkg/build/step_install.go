package build

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
)

// install writes the image onto the server's disk from the rescue system,
// booted with this invocation's lease key, checks what was written and
// powers the server off. It rewrites the whole disk, so a crash in it is
// resumed by running it again.
func (r *run) install(ctx context.Context, log *slog.Logger) (Step, error) {
	b := r.b
	ctx, cancel := context.WithTimeoutCause(ctx, b.opts.InstallTimeout, errInstallTimeout)
	defer cancel()
	img, err := r.findImage(ctx)
	if err != nil {
		return "", err
	}
	if err := b.cloud.EnableRescue(ctx, r.srv, r.lease.hkey); err != nil {
		return "", err
	}
	log.InfoContext(ctx, "rescue enabled")
	if err := b.cloud.Boot(ctx, r.srv); err != nil {
		return "", err
	}
	addr := net.JoinHostPort(r.srv.PublicNet.IPv4.IP.String(), strconv.Itoa(b.opts.SSHPort))
	log.InfoContext(ctx, "waiting for the rescue system", "addr", addr)
	remote, err := b.dial(ctx, addr, r.lease.key, log)
	if err != nil {
		return "", deterministic("rescue-unreachable", fmt.Errorf("reach rescue system of %s: %w", r.name(), err))
	}
	defer remote.Close()
	log.InfoContext(ctx, "writing image", "url", img.URL, "compression", img.Compression)
	if err := writeImage(ctx, remote, img); err != nil {
		return "", rescueFailure(ctx, "download", err)
	}
	parts, err := verifyDisk(ctx, remote, r.t, log)
	if err != nil {
		return "", deterministic("verify", err)
	}
	log.InfoContext(ctx, "image written and verified", "partitions", parts, r.imageMetric(img))
	if err := b.cloud.PowerOff(ctx, r.srv); err != nil {
		return "", err
	}
	r.installed = true
	return StepSnapshot, r.checkpoint(ctx, StepSnapshot, nil)
}
