package poll

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
)

// Deleter is what the executor changes the project with; *cloud.Client.
// Besides deleting, it discards failed snapshots and writes failure
// records (failures.go).
type Deleter interface {
	DeleteServer(ctx context.Context, s *hcloud.Server) error
	DeleteImage(ctx context.Context, img *hcloud.Image) error
	DeleteSSHKey(ctx context.Context, k *hcloud.SSHKey) error
	build.SnapshotCloud
	build.RecordCloud
}

// Invoker starts a Builder invocation for a request without waiting for it.
type Invoker interface {
	Invoke(ctx context.Context, r build.Request) error
}

// InvokerFunc adapts a function, e.g. invoke.Function.Async, to Invoker.
type InvokerFunc func(ctx context.Context, r build.Request) error

// Invoke calls f.
func (f InvokerFunc) Invoke(ctx context.Context, r build.Request) error { return f(ctx, r) }

// Executor carries out plans.
type Executor struct {
	Cloud   Deleter
	Builder Invoker // nil refuses builds and re-drives
	Logger  *slog.Logger
}

var errNoBuilder = errors.New("no Builder function is configured (BUILDER_FUNCTION_NAME)")

func (e Executor) logger() *slog.Logger {
	if e.Logger == nil {
		return slog.Default()
	}
	return e.Logger
}

// Cleanup carries out what needs only the Hetzner listings: first it
// collects expired servers and keys (which frees their names), then prunes,
// then discards failed snapshots and keeps the failure records
// (failures.go), then re-drives. It goes on past a failed action, records
// the error in the action's item and returns all failures joined.
func (e Executor) Cleanup(ctx context.Context, p *Plan) error {
	log := e.logger()
	var errs []error
	del := func(kind string, items []Resource, do func(Resource) error) {
		for i := range items {
			it := &items[i]
			if err := do(*it); err != nil {
				it.Error = err.Error()
				errs = append(errs, err)
				log.Error("delete failed", "kind", kind, "id", it.ID, "name", it.Name, "error", err)
				continue
			}
			log.Info("deleted", "kind", kind, "id", it.ID, "name", it.Name, "reason", it.Reason)
		}
	}
	del("server", p.CollectServers, func(r Resource) error {
		return e.Cloud.DeleteServer(ctx, &hcloud.Server{ID: r.ID, Name: r.Name})
	})
	del("ssh_key", p.CollectKeys, func(r Resource) error {
		return e.Cloud.DeleteSSHKey(ctx, &hcloud.SSHKey{ID: r.ID, Name: r.Name})
	})
	del("snapshot", p.Prune, func(r Resource) error {
		return e.Cloud.DeleteImage(ctx, &hcloud.Image{ID: r.ID, Description: r.Name})
	})
	errs = append(errs, e.applyFailures(ctx, &p.FailurePlan, log)...)
	for i := range p.Redrives {
		it := &p.Redrives[i]
		if err := e.invoke(ctx, "re-drive", build.Request{Version: it.Version, Arch: it.Arch, Schematic: it.Schematic,
			Force: it.Force}, it.Reason); err != nil {
			it.Error = err.Error()
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Start starts the planned builds: per architecture and schematic one
// Builder invocation for the first, with the others as its queue, in the
// order planned. A failed invocation fails the whole group's items.
func (e Executor) Start(ctx context.Context, p *Plan) error {
	var errs []error
	var order []group
	members := map[group][]int{}
	for i, it := range p.Builds {
		g := group{it.Arch, it.Schematic}
		if members[g] == nil {
			order = append(order, g)
		}
		members[g] = append(members[g], i)
	}
	for _, g := range order {
		head := p.Builds[members[g][0]]
		req := build.Request{Version: head.Version, Arch: head.Arch, Schematic: head.Schematic, Force: head.Force}
		for _, i := range members[g][1:] {
			req.Queue = append(req.Queue, build.Next{Version: p.Builds[i].Version, Force: p.Builds[i].Force})
		}
		if err := e.invoke(ctx, "build", req, head.Reason); err != nil {
			errs = append(errs, err)
			for _, i := range members[g] {
				p.Builds[i].Error = err.Error()
			}
		}
	}
	return errors.Join(errs...)
}

// invoke starts a Builder invocation of r.
func (e Executor) invoke(ctx context.Context, kind string, r build.Request, reason string) error {
	t := build.Target{Version: r.Version, Arch: r.Arch, Schematic: r.Schematic}
	err := errNoBuilder
	if e.Builder != nil {
		err = e.Builder.Invoke(ctx, r)
	}
	if err != nil {
		err = fmt.Errorf("%s %s: %w", kind, t, err)
		e.logger().Error("invoking the Builder failed", "kind", kind, "target", t.String(), "error", err)
		return err
	}
	queue := make([]string, 0, len(r.Queue))
	for _, q := range r.Queue {
		queue = append(queue, q.Version)
	}
	e.logger().Info("Builder invoked", "kind", kind, "target", t.String(), "queue", queue, "reason", reason)
	return nil
}
