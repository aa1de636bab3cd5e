package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/ssh"
)

// Several deployments may share one Hetzner project, each with its own
// CLUSTER_NAME: build servers and lease keys are named after the cluster
// (Target.Name), and a deployment adopts, re-drives, collects and prunes
// only what carries its cluster's labels. Two deployments with the same
// CLUSTER_NAME cannot share a project: consumers select snapshots by the
// cluster label and boot the most recent one, which only one builder can
// keep the highest version, and the two would adopt each other's servers
// and prune each other's snapshots. So each cluster has a marker in the
// project, an SSH key (free, labelled, and unique by name, so creating it is
// an atomic test-and-set: Hetzner Cloud API reference, SSH Keys, "name ...
// must be unique per Project", else uniqueness_error) that names
// the deployment owning the cluster; the Poller claims it, and a deployment
// that finds another's refuses to act.

// MarkerTTL is how long a deployment's claim on its cluster outlives its
// Poller's last run: after that the deployment counts as gone (a stack
// deleted without teardown, renamed, moved) and another may take over.
// Two days: longer than the Poller's alarm for a stale poll (a day).
const MarkerTTL = 48 * time.Hour

// markerRefresh is how old the marker's seen label may get before a poll
// renews it: one label update an hour at most.
const markerRefresh = time.Hour

// DeploymentID names a deployment: the region and name of its Builder
// function, which both functions know (the Builder as its own
// AWS_LAMBDA_FUNCTION_NAME, the Poller as BUILDER_FUNCTION_NAME, a name or
// an ARN; Lambda sets AWS_LAMBDA_FUNCTION_NAME and AWS_REGION in every
// function: AWS Lambda Developer Guide, "Defined runtime environment
// variables"). It is a label value; an unwieldy one is hashed. Empty means no
// identity (a command-line run), which neither claims nor checks a marker.
func DeploymentID(builderFunction, region string) string {
	name := builderFunction
	if rest, ok := strings.CutPrefix(name, "arn:"); ok {
		// arn:<partition>:lambda:<region>:<account>:function:<name>[:<qualifier>]
		// (Lambda API reference, Invoke, FunctionName)
		if f := strings.Split(rest, ":"); len(f) >= 6 {
			region, name = f[2], f[5]
		}
	} else if n, _, ok := strings.Cut(name, ":"); ok {
		name = n // a name with a qualifier
	}
	if name == "" {
		return ""
	}
	id := name
	if region != "" {
		id = region + "." + name
	}
	if label.Check(label.Deployment, id) != nil {
		sum := sha256.Sum256([]byte(id))
		return "sha256-" + hex.EncodeToString(sum[:16])
	}
	return id
}

// Deployment is a deployment's identity in the project.
type Deployment struct {
	Cluster string // CLUSTER_NAME, may be empty
	ID      string // DeploymentID; empty: no marker is claimed or checked
}

// MarkerName is the name of the cluster's marker key.
func (d Deployment) MarkerName() string {
	sum := sha256.Sum256([]byte("cluster\x00" + d.Cluster))
	return "hcloud-k8s-image-builder-" + hex.EncodeToString(sum[:5])
}

// OtherDeploymentError is the refusal of a deployment that finds the
// cluster claimed by another.
type OtherDeploymentError struct {
	Cluster, Marker, Owner, Us string
	Seen                       time.Time
}

func (e *OtherDeploymentError) Error() string {
	cluster := "CLUSTER_NAME=" + e.Cluster
	if e.Cluster == "" {
		cluster = "an empty CLUSTER_NAME"
	}
	return fmt.Sprintf("refusing to act: another deployment (%s, last seen %s) builds the snapshots of %s in this "+
		"Hetzner project, and two deployments of one cluster would adopt, collect and prune each other's servers "+
		"and snapshots; this deployment is %s. Give one of them another CLUSTER_NAME; if %s is gone, delete the "+
		"SSH key %s (hcloud ssh-key delete %s) or wait until %s, when its claim lapses",
		e.Owner, e.Seen.UTC().Format(time.RFC3339), cluster, e.Us, e.Owner, e.Marker, e.Marker,
		e.Seen.Add(MarkerTTL).UTC().Format(time.RFC3339))
}

// IsOtherDeployment tells whether err is a refusal for another deployment.
func IsOtherDeployment(err error) bool {
	var o *OtherDeploymentError
	return errors.As(err, &o)
}

// MarkerCloud is what the marker needs of the project; *cloud.Client.
type MarkerCloud interface {
	SSHKeyByName(ctx context.Context, name string) (*hcloud.SSHKey, error)
	CreateSSHKey(ctx context.Context, name, publicKey string, labels map[string]string) (*hcloud.SSHKey, error)
	SetSSHKeyLabels(ctx context.Context, k *hcloud.SSHKey, labels map[string]string) error
	DeleteSSHKey(ctx context.Context, k *hcloud.SSHKey) error
}

// Check returns an *OtherDeploymentError when another deployment holds a
// live claim on the cluster; it changes nothing.
func (d Deployment) Check(ctx context.Context, c MarkerCloud, now time.Time) error {
	if d.ID == "" {
		return nil
	}
	k, err := c.SSHKeyByName(ctx, d.MarkerName())
	if err != nil {
		return fmt.Errorf("look up the deployment marker: %w", err)
	}
	return d.judge(k, now)
}

// judge tells whether marker k (nil: none) lets this deployment act.
func (d Deployment) judge(k *hcloud.SSHKey, now time.Time) error {
	if k == nil {
		return nil
	}
	if !d.isMarker(k) {
		return fmt.Errorf("an SSH key named %s exists that is not the image builder's marker of this cluster "+
			"(labels %v); rename or delete it", k.Name, k.Labels)
	}
	if owner := k.Labels[label.Deployment]; owner != d.ID && !markerStale(k, now) {
		return &OtherDeploymentError{Cluster: d.Cluster, Marker: k.Name, Owner: owner, Us: d.ID, Seen: markerSeen(k)}
	}
	return nil
}

func (d Deployment) isMarker(k *hcloud.SSHKey) bool {
	return label.IsManaged(k.Labels) && k.Labels[label.Role] == label.RoleDeployment &&
		k.Labels[label.Cluster] == d.Cluster
}

func markerSeen(k *hcloud.SSHKey) time.Time {
	s, _ := strconv.ParseInt(k.Labels[label.Seen], 10, 64)
	return time.Unix(s, 0)
}

func markerStale(k *hcloud.SSHKey, now time.Time) bool { return now.Sub(markerSeen(k)) > MarkerTTL }

// Claim makes this deployment the owner of the cluster in the project, or
// returns an *OtherDeploymentError when another deployment owns it. It
// creates the marker when there is none, renews the owner's seen label
// (at most hourly), and takes over a marker whose owner has not been seen
// for MarkerTTL. Creation by name is the atomic step: of two deployments
// claiming at once, one meets uniqueness_error, reads the other's marker
// and refuses.
func (d Deployment) Claim(ctx context.Context, c MarkerCloud, now time.Time) error {
	if d.ID == "" {
		return nil
	}
	name := d.MarkerName()
	for range 2 {
		k, err := c.SSHKeyByName(ctx, name)
		if err != nil {
			return fmt.Errorf("look up the deployment marker: %w", err)
		}
		if err := d.judge(k, now); err != nil {
			return err
		}
		switch {
		case k == nil:
		case k.Labels[label.Deployment] == d.ID:
			if now.Sub(markerSeen(k)) < markerRefresh {
				return nil
			}
			l := maps.Clone(k.Labels)
			l[label.Seen] = strconv.FormatInt(now.Unix(), 10)
			if err := c.SetSSHKeyLabels(ctx, k, l); err != nil {
				return fmt.Errorf("renew the deployment marker: %w", err)
			}
			return nil
		default: // another's, stale: delete it, then create ours
			if err := c.DeleteSSHKey(ctx, k); err != nil && !cloud.IsNotFound(err) {
				return fmt.Errorf("take over the deployment marker of %s: %w", k.Labels[label.Deployment], err)
			}
		}
		// The key pair is thrown away: the marker is never a login key.
		key, err := ssh.NewKey()
		if err != nil {
			return err
		}
		l := map[string]string{label.Managed: label.ManagedValue, label.Role: label.RoleDeployment,
			label.Deployment: d.ID, label.Seen: strconv.FormatInt(now.Unix(), 10)}
		if d.Cluster != "" {
			l[label.Cluster] = d.Cluster
		}
		_, err = c.CreateSSHKey(ctx, name, key.AuthorizedKey(), l)
		if err == nil || !cloud.IsConflict(err) {
			return err
		}
		// Someone created it meanwhile: look again.
	}
	return fmt.Errorf("claim the deployment marker %s: it keeps changing", name)
}

// Release deletes the cluster's marker if this deployment holds it: a
// deployment torn down gives up its claim.
func (d Deployment) Release(ctx context.Context, c MarkerCloud) error {
	if d.ID == "" {
		return nil
	}
	k, err := c.SSHKeyByName(ctx, d.MarkerName())
	if err != nil {
		return fmt.Errorf("look up the deployment marker: %w", err)
	}
	if k == nil || !d.isMarker(k) || k.Labels[label.Deployment] != d.ID {
		return nil
	}
	if err := c.DeleteSSHKey(ctx, k); err != nil && !cloud.IsNotFound(err) {
		return fmt.Errorf("give up the deployment's claim (SSH key %s): %w", k.Name, err)
	}
	return nil
}

// deployment is the Builder's identity.
func (b *Builder) deployment() Deployment {
	return Deployment{Cluster: b.opts.Cluster, ID: b.opts.Deployment}
}

// name is the target's build server and lease key name.
func (r *run) name() string { return r.t.Name(r.b.opts.Cluster) }

// owned tells whether a server or key found under the target's name is
// this deployment's (role build-server or lease): managed, of our cluster
// (none when we have none) and of the target.
func (r *run) owned(labels map[string]string, role string) bool {
	t, ok := TargetFromLabels(labels)
	return ok && t == r.t && label.IsManaged(labels) && labels[label.Role] == role &&
		labels[label.Cluster] == r.b.opts.Cluster
}

// ForeignError is a server or key under a build's name that is not this
// deployment's: it is never adopted, taken over or deleted.
type ForeignError struct {
	Kind, Name string
	Labels     map[string]string
	Target     Target
}

func (e *ForeignError) Error() string {
	cluster, ok := e.Labels[label.Cluster]
	if !ok {
		cluster = "(none)"
	}
	return fmt.Sprintf("%s %s is not this deployment's build of %s (cluster %s, %s=%q, role %q): not adopting it; "+
		"another deployment with the same CLUSTER_NAME in this project, or someone else's %s of that name",
		e.Kind, e.Name, e.Target, cluster, label.Managed, e.Labels[label.Managed], e.Labels[label.Role], e.Kind)
}

// lookup returns the target's build server, nil when there is none, or a
// *ForeignError when a server of that name is not ours.
func (r *run) lookup(ctx context.Context) (*hcloud.Server, error) {
	srv, err := r.b.cloud.ServerByName(ctx, r.name())
	if err != nil || srv == nil {
		return srv, err
	}
	if !r.owned(srv.Labels, label.RoleBuildServer) {
		return nil, &ForeignError{Kind: "server", Name: srv.Name, Labels: srv.Labels, Target: r.t}
	}
	return srv, nil
}

func isForeign(err error) bool {
	var f *ForeignError
	return errors.As(err, &f)
}
