package build

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
)

// createServer creates the build server, off, on a type with the
// architecture's smallest disk (place).
func (r *run) createServer(ctx context.Context, log *slog.Logger) (Step, error) {
	labels := r.t.targetLabels(r.b.opts.Cluster)
	labels[label.Role] = label.RoleBuildServer
	labels[label.Step] = string(StepInstall)
	if r.force {
		labels[label.Force] = "true"
	}
	if len(r.replaces) > 0 {
		labels[label.Replaces] = formatIDs(r.replaces)
	}
	srv, adopted, err := r.place(ctx, log, cloud.CreateServerOpts{Name: r.name(), Image: r.b.opts.ServerImage, Labels: labels}, r.lookup)
	if err != nil {
		return "", err
	}
	r.setServer(srv)
	if adopted {
		return stepOf(srv), nil
	}
	return StepInstall, nil
}

// place creates a server, off, with the lease key (with a key Hetzner
// mails no root password), on a type with the architecture's smallest
// disk: in the first location that has one, trying the configured types of
// that disk in order, never a bigger disk. o names the server, its image
// and labels. A name already taken is a retried create whose first try
// went through: the server lookup finds is adopted, if it is ours.
func (r *run) place(ctx context.Context, log *slog.Logger, o cloud.CreateServerOpts,
	lookup func(context.Context) (*hcloud.Server, error)) (srv *hcloud.Server, adopted bool, err error) {
	b := r.b
	// Read for every server: what is sold changes, and in a warm Lambda a
	// Builder outlives its invocations.
	catalog, err := b.cloud.ServerTypes(ctx)
	if err != nil {
		return nil, false, err
	}
	plan, err := planServers(catalog, r.t.Arch, b.opts.ServerTypes[r.t.Arch])
	for _, s := range plan.skipped {
		log.WarnContext(ctx, "configured server type not used", "server_type", s.name, "reason", s.reason)
	}
	if err != nil {
		return nil, false, deterministic("server-type", err)
	}
	o.SSHKeys = []*hcloud.SSHKey{r.lease.hkey}
	now := b.now()
	tried := false
	for _, st := range plan.types {
		for _, loc := range b.opts.Locations {
			if !sold(st, loc, now) {
				log.InfoContext(ctx, "server type not sold in location", "server_type", st.Name, "location", loc)
				continue
			}
			tried = true
			o.ServerType, o.Location = st.Name, loc
			srv, err := b.cloud.CreateServer(ctx, o)
			switch {
			case err == nil:
				log.InfoContext(ctx, "server created", "server", o.Name, "server_type", st.Name, "location", loc,
					"disk_gb", st.Disk, "server_id", srv.ID)
				return srv, false, nil
			case cloud.IsConflict(err):
				if srv, err = lookup(ctx); err != nil {
					return nil, false, fmt.Errorf("adopt server %s: %w", o.Name, err)
				}
				if srv == nil {
					// The server that took the name is gone by now: nothing
					// to adopt, and a retry creates it afresh.
					return nil, false, transient("server-gone", fmt.Errorf("adopt server %s: its name was taken, but the server is gone", o.Name))
				}
				log.InfoContext(ctx, "server exists, adopting it", "server", o.Name, "server_id", srv.ID)
				return srv, true, nil
			case cloud.IsLimitExceeded(err):
				// Another location or type would meet the same quota.
				return nil, false, deterministic("server-limit", fmt.Errorf("the project's server limit is reached (Hetzner's quota per account, "+
					"small for new ones): delete servers or have the limit raised in the Cloud Console under Limits: %w", err))
			case cloud.IsNoCapacity(err):
				log.WarnContext(ctx, "no capacity, trying the next option", "server_type", st.Name, "location", loc, "error", err)
			default:
				return nil, false, err
			}
		}
	}
	types, locs := strings.Join(typeNames(plan.types), ", "), strings.Join(b.opts.Locations, ", ")
	if !tried {
		return nil, false, deterministic("not-sold", fmt.Errorf("none of %s (%d GB disk) is sold in %s; add a location that sells one",
			types, plan.disk, locs))
	}
	return nil, false, deterministic("no-capacity", fmt.Errorf("no capacity for %s (%d GB disk) in %s; a bigger disk would make a "+
		"snapshot that cannot create %d GB servers", types, plan.disk, locs, plan.disk))
}
