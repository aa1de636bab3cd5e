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

// Apply carries out the plan: first it collects expired servers and keys
// (which frees their names), then prunes, then discards failed snapshots
// and keeps the failure records, then re-drives and starts builds.
// It goes on past a failed action, records the error in the action's item
// and returns all failures joined.
func (e Executor) Apply(ctx context.Context, p *Plan) error {
	log := e.Logger
	if log == nil {
		log = slog.Default()
	}
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
	invoke := func(kind string, items []Item) {
		for i := range items {
			it := &items[i]
			err := errNoBuilder
			if e.Builder != nil {
				err = e.Builder.Invoke(ctx, build.Request{Version: it.Version, Arch: it.Arch, Schematic: it.Schematic, Force: it.Force})
			}
			if err != nil {
				err = fmt.Errorf("%s %s: %w", kind, it.Target, err)
				it.Error = err.Error()
				errs = append(errs, err)
				log.Error("invoking the Builder failed", "kind", kind, "target", it.Target.String(), "error", err)
				continue
			}
			log.Info("Builder invoked", "kind", kind, "target", it.Target.String(), "reason", it.Reason)
		}
	}
	invoke("re-drive", p.Redrives)
	invoke("build", p.Builds)
	return errors.Join(errs...)
}
