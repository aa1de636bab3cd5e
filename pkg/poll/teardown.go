package poll

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
)

// TeardownReport is what a teardown deleted (or, in a dry run, would
// delete) and what it leaves in the project.
type TeardownReport struct {
	DryRun bool `json:"dry_run"`
	// Servers and Keys are this deployment's build servers and lease keys;
	// an item whose deletion failed carries the error.
	Servers []Resource `json:"servers"`
	Keys    []Resource `json:"keys"`
	// HeldLeases counts the leases a Builder invocation held when the
	// teardown began: such an invocation may still create or keep a server
	// until it ends (at most the Builder's timeout).
	HeldLeases int `json:"held_leases"`
	// Remaining are this deployment's build servers and lease keys that
	// exist after the deletions (none unless one failed or an invocation
	// made one meanwhile).
	RemainingServers []Resource `json:"remaining_servers"`
	RemainingKeys    []Resource `json:"remaining_keys"`
	// KeptSnapshots are this deployment's snapshots, kept on purpose:
	// clusters boot from them.
	KeptSnapshots []Resource `json:"kept_snapshots"`
}

// ParseTeardown reads whether a Poller payload asks for a teardown,
// {"teardown":true}, and whether as a dry run. Any other payload is a poll
// (ParsePayload).
func ParseTeardown(payload []byte) (teardown, dryRun bool, err error) {
	if len(bytes.TrimSpace(payload)) == 0 {
		return false, false, nil
	}
	var p struct {
		Teardown bool `json:"teardown"`
		DryRun   bool `json:"dry_run"`
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		return false, false, fmt.Errorf(`invalid payload: %w; want a scheduled event, {"dry_run":true} or {"teardown":true}`, err)
	}
	return p.Teardown, p.Teardown && p.DryRun, nil
}

// tearsDown tells whether a teardown deletes a build server or lease key
// (as listed by label.RoleSelector and label.RoleSelector) with
// these labels: it carries the management label and this deployment's
// CLUSTER_NAME scoping, the cluster label equal to it or, without a
// cluster name, no cluster label; the rest of its labels do not matter.
func tearsDown(labels map[string]string, cluster string) bool {
	return label.IsManaged(labels) && labels[label.Cluster] == cluster
}

// Teardown deletes this deployment's build servers and lease keys, the
// resources that a deployment removed with `sam delete` would leave billed
// or locked with no Poller to collect them, and reports what remains. It
// never deletes snapshots: they are listed as kept. With dryRun it only
// reports. A deployment that another one's claim on the cluster refuses
// tears down nothing (the servers and keys are the other's); one that
// holds the claim gives it up last (build.Deployment.Release), so that
// another deployment can take the cluster at once.
func (p *Poller) Teardown(ctx context.Context, dryRun bool) (TeardownReport, error) {
	rep := TeardownReport{DryRun: dryRun, Servers: []Resource{}, Keys: []Resource{},
		RemainingServers: []Resource{}, RemainingKeys: []Resource{}, KeptSnapshots: []Resource{}}
	d := build.Deployment{Cluster: p.opts.Cluster, ID: p.opts.Deployment}
	if err := d.Check(ctx, p.d.Cloud, p.d.Now()); err != nil {
		return rep, fmt.Errorf("teardown: nothing done: %w", err)
	}
	servers, keys, err := p.tornDown(ctx)
	if err != nil {
		return rep, fmt.Errorf("teardown: nothing done: %w", err)
	}
	now := p.d.Now()
	for _, k := range keys {
		if build.LeaseActive(k.Labels, now) {
			rep.HeldLeases++
		}
	}
	var errs []error
	for _, srv := range servers {
		r := Resource{ID: srv.ID, Name: srv.Name, Target: targetOf(srv.Labels), Created: srv.Created, Reason: "teardown"}
		if !dryRun {
			if err := p.d.Cloud.DeleteServer(ctx, srv); err != nil {
				r.Error = err.Error()
				errs = append(errs, fmt.Errorf("delete server %s: %w", srv.Name, err))
			}
		}
		rep.Servers = append(rep.Servers, r)
	}
	for _, k := range keys {
		r := Resource{ID: k.ID, Name: k.Name, Target: targetOf(k.Labels), Created: k.Created, Reason: "teardown"}
		if !dryRun {
			if err := p.d.Cloud.DeleteSSHKey(ctx, k); err != nil {
				r.Error = err.Error()
				errs = append(errs, fmt.Errorf("delete ssh key %s: %w", k.Name, err))
			}
		}
		rep.Keys = append(rep.Keys, r)
	}
	if !dryRun {
		if servers, keys, err = p.tornDown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("list what remains: %w", err))
		}
		for _, srv := range servers {
			rep.RemainingServers = append(rep.RemainingServers, Resource{ID: srv.ID, Name: srv.Name,
				Target: targetOf(srv.Labels), Created: srv.Created, Reason: "still exists after the teardown"})
		}
		for _, k := range keys {
			rep.RemainingKeys = append(rep.RemainingKeys, Resource{ID: k.ID, Name: k.Name,
				Target: targetOf(k.Labels), Created: k.Created, Reason: "still exists after the teardown"})
		}
	}
	if !dryRun && len(rep.RemainingServers)+len(rep.RemainingKeys) == 0 {
		if err := d.Release(ctx, p.d.Cloud); err != nil {
			errs = append(errs, err)
		}
	}
	snaps, err := p.d.Cloud.Snapshots(ctx, label.SnapshotsOf(p.opts.Cluster))
	if err != nil {
		errs = append(errs, fmt.Errorf("list snapshots: %w", err))
	}
	for _, img := range snaps {
		rep.KeptSnapshots = append(rep.KeptSnapshots, Resource{ID: img.ID, Name: img.Description,
			Target: targetOf(img.Labels), Created: img.Created, Reason: "kept: clusters boot from snapshots"})
	}
	p.log.Info("teardown finished", "dry_run", dryRun, "servers", len(rep.Servers), "keys", len(rep.Keys),
		"held_leases", rep.HeldLeases, "remaining_servers", len(rep.RemainingServers),
		"remaining_keys", len(rep.RemainingKeys), "kept_snapshots", len(rep.KeptSnapshots))
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("teardown: %w", err)
	}
	return rep, nil
}

// tornDown lists the build servers and lease keys a teardown deletes.
func (p *Poller) tornDown(ctx context.Context) ([]*hcloud.Server, []*hcloud.SSHKey, error) {
	servers, err := p.d.Cloud.Servers(ctx, label.ServerSelector())
	if err != nil {
		return nil, nil, err
	}
	keys, err := p.d.Cloud.SSHKeys(ctx, label.RoleSelector(label.RoleLease))
	if err != nil {
		return nil, nil, err
	}
	var ss []*hcloud.Server
	for _, s := range servers {
		if tearsDown(s.Labels, p.opts.Cluster) {
			ss = append(ss, s)
		}
	}
	var ks []*hcloud.SSHKey
	for _, k := range keys {
		if tearsDown(k.Labels, p.opts.Cluster) {
			ks = append(ks, k)
		}
	}
	return ss, ks, nil
}
