// Package poll is the scheduled half of the image builder: it keeps the
// project's Talos snapshots in step with the releases of siderolabs/talos.
// A poll lists the releases, keeps those the policy tracks, compares the
// targets they make with the snapshots and build servers that exist, plans
// (NewPlan, a pure function) and carries the plan out (Executor): start
// missing builds, re-drive stuck ones, collect expired build servers and
// lease keys, prune snapshots beyond retention. It only ever deletes what
// carries the management label.
package poll

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/release"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// Releases lists Talos releases; *release.Lister.
type Releases interface {
	List(ctx context.Context, covered func([]release.Release) bool) (release.Listing, error)
}

// Cloud is what a poll needs of the Hetzner project; *cloud.Client.
type Cloud interface {
	Deleter
	build.MarkerCloud
	Servers(ctx context.Context, selector string) ([]*hcloud.Server, error)
	Snapshots(ctx context.Context, selector string) ([]*hcloud.Image, error)
	SSHKeys(ctx context.Context, selector string) ([]*hcloud.SSHKey, error)
}

// Options are the Poller's settings.
type Options struct {
	Rules
	Policy release.Policy
	// AnonymousGitHub is set when no GitHub token is configured: every
	// report then warns (AnonymousGitHubWarning).
	AnonymousGitHub bool
	// Deployment is this deployment's build.DeploymentID: a poll claims
	// the cluster for it and refuses to act while another deployment owns
	// it. Empty (a command-line dry run) claims and checks nothing.
	Deployment string
}

// AnonymousGitHubWarning is the report's warning when GitHub is read
// without a token. GitHub limits unauthenticated requests per originating
// IP address ("Rate limits for the REST API", docs.github.com), and a Lambda
// function outside a VPC has no IP address of its own.
const AnonymousGitHubWarning = "GitHub is read without a token: 60 requests/hour per originating IP, " +
	"shared with other AWS customers on Lambda's egress IPs; set GITHUB_TOKEN_SECRET"

// Deps are the Poller's collaborators.
type Deps struct {
	Releases Releases
	Cloud    Cloud
	Factory  build.Factory // *talos.Factory
	Builder  Invoker       // nil allows dry runs only
	// Schematics resolves the schematics beyond Options.Schematics (those
	// of SCHEMATIC_CUSTOMIZATION) at every poll; nil: none.
	Schematics build.SchematicResolver
	Logger     *slog.Logger
	Now        func() time.Time // default time.Now
}

// Poller runs polls.
type Poller struct {
	d    Deps
	opts Options
	log  *slog.Logger
}

// New returns a Poller.
func New(d Deps, o Options) *Poller {
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return &Poller{d: d, opts: o, log: d.Logger}
}

// Report is what a poll returns: what it saw, planned and (unless a dry
// run) did. An item whose action failed carries the error.
type Report struct {
	DryRun       bool     `json:"dry_run"`
	ReleasesSeen int      `json:"releases_seen"`
	SkippedTags  []string `json:"skipped_tags"`
	// GitHubRequests is how many release pages were asked for, of which
	// GitHubNotModified were answered 304 (unchanged).
	GitHubRequests    int      `json:"github_requests"`
	GitHubNotModified int      `json:"github_not_modified"`
	Tracked           []string `json:"tracked"`
	// Warnings are conditions that do not stop a poll but may make later
	// ones fail, e.g. reading GitHub without a token.
	Warnings []string `json:"warnings"`
	// Skipped says what the poll left undone because GitHub or the image
	// factory failed, and why; what needs only the Hetzner project
	// (collection, re-drives) is done whatever they answer.
	Skipped []string `json:"skipped"`
	Plan
}

// Run polls once. It claims the cluster for this deployment and lists the
// project's snapshots, build servers and lease keys; failing any of that,
// it does nothing. Collection and re-drives need nothing else and are done
// at once, whatever GitHub and the image factory answer: a release list
// GitHub fails to give skips the builds and pruning (both need to know the
// tracked versions), a customization the factory cannot resolve skips the
// builds, re-drives and pruning of its schematic, and an image it does not
// serve defers its build. With dryRun it plans without acting. What was
// skipped is in the report; failed actions are recorded there and returned
// joined, and so is GitHub's failure, so that a poll that built nothing
// for that reason counts as failed (PollerStaleAlarm).
func (p *Poller) Run(ctx context.Context, dryRun bool) (Report, error) {
	rep := Report{DryRun: dryRun, SkippedTags: []string{}, Tracked: []string{}, Warnings: []string{}, Skipped: []string{}}
	if p.opts.AnonymousGitHub {
		p.log.Warn(AnonymousGitHubWarning)
		rep.Warnings = append(rep.Warnings, AnonymousGitHubWarning)
	}
	d := build.Deployment{Cluster: p.opts.Cluster, ID: p.opts.Deployment}
	claim := d.Claim
	if dryRun {
		claim = d.Check
	}
	if err := claim(ctx, p.d.Cloud, p.d.Now()); err != nil {
		return rep, fmt.Errorf("poll: nothing done: %w", err)
	}
	var errs []error
	st := State{Now: p.d.Now()}
	listing, err := p.d.Releases.List(ctx, p.opts.Policy.Covered)
	if err != nil {
		err = fmt.Errorf("list releases: %w", err)
		errs = append(errs, err)
		p.log.Error("listing the releases failed: no builds and no pruning; collection and re-drives go on", "error", err)
		rep.Skipped = append(rep.Skipped, "builds and pruning: the tracked versions are unknown: "+err.Error())
	} else {
		rep.ReleasesSeen, rep.GitHubRequests, rep.GitHubNotModified = len(listing.Releases), listing.Requests, listing.NotModified
		rep.SkippedTags = append(rep.SkippedTags, listing.Skipped...)
		for _, r := range p.opts.Policy.Track(listing.Releases) {
			st.Tracked = append(st.Tracked, r.Version)
			rep.Tracked = append(rep.Tracked, r.Version.String())
		}
		if len(st.Tracked) == 0 {
			p.log.Warn("no release is tracked: nothing is built or pruned", "releases_seen", rep.ReleasesSeen)
		}
	}
	if st.Snapshots, err = p.d.Cloud.Snapshots(ctx, label.SnapshotsOf(p.opts.Cluster)); err != nil {
		return rep, fmt.Errorf("poll: nothing done: %w", err)
	}
	if st.Servers, err = p.d.Cloud.Servers(ctx, label.ServerSelector()); err != nil {
		return rep, fmt.Errorf("poll: nothing done: %w", err)
	}
	if st.Keys, err = p.d.Cloud.SSHKeys(ctx, label.RoleSelector(label.RoleLease)); err != nil {
		return rep, fmt.Errorf("poll: nothing done: %w", err)
	}
	if st.Records, err = p.d.Cloud.SSHKeys(ctx, label.RoleSelector(label.RoleFailure)); err != nil {
		return rep, fmt.Errorf("poll: nothing done: %w", err)
	}
	rules := p.opts.Rules
	if p.d.Schematics != nil {
		// On failure, the configured schematics: the customization's is
		// neither built, re-driven nor pruned this time.
		if rules.Schematics, err = p.d.Schematics.Resolve(ctx); err != nil {
			p.log.Warn("the customization's schematic is unknown: its builds, re-drives and pruning wait", "error", err)
			rep.Skipped = append(rep.Skipped, "builds, re-drives and pruning of the customization's schematic: "+err.Error())
		}
	}
	// Collection, pruning and re-drives do not depend on the factory's
	// answers: they are final now. Carrying them out relabels some of the
	// listed resources in place: the builds are planned on a copy.
	listed := st.clone()
	rep.Plan = NewPlan(st, rules)
	exec := Executor{Cloud: p.d.Cloud, Builder: p.d.Builder, Logger: p.log}
	if !dryRun {
		errs = append(errs, exec.Cleanup(ctx, &rep.Plan))
	}
	if listed.Unserved, err = p.unserved(ctx, listed, rules); err != nil {
		errs = append(errs, fmt.Errorf("ask the image factory: %w", err))
		rep.Skipped = append(rep.Skipped, "builds: the image factory was not asked in time: "+err.Error())
		for _, it := range rep.Builds {
			rep.Deferred = append(rep.Deferred, Item{Target: it.Target, Reason: "the image factory was not asked in time"})
		}
		rep.Builds = []Item{}
	} else {
		full := NewPlan(listed, rules)
		rep.Builds, rep.Deferred = full.Builds, full.Deferred
	}
	p.log.Info("poll planned", "dry_run", dryRun, "tracked", rep.Tracked, "builds", len(rep.Builds),
		"redrives", len(rep.Redrives), "deferred", len(rep.Deferred), "collect_servers", len(rep.CollectServers),
		"collect_keys", len(rep.CollectKeys), "prune", len(rep.Prune), "skipped", rep.Skipped)
	if !dryRun {
		errs = append(errs, exec.Start(ctx, &rep.Plan))
	}
	err = errors.Join(errs...)
	// Lambda returns only the error of a failed invocation: the log keeps
	// the report.
	p.log.Info("poll finished", "failed", err != nil, "report", rep)
	if err != nil {
		return rep, fmt.Errorf("poll: %w", err)
	}
	return rep, nil
}

// clone copies the state deeply enough that changing the labels of the
// listed resources, as the executor does, leaves the copy as listed.
func (s State) clone() State {
	c := s
	c.Snapshots = cloneAll(s.Snapshots, func(img hcloud.Image) hcloud.Image {
		img.Labels = maps.Clone(img.Labels)
		return img
	})
	c.Servers = cloneAll(s.Servers, func(srv hcloud.Server) hcloud.Server {
		srv.Labels = maps.Clone(srv.Labels)
		return srv
	})
	keys := func(k hcloud.SSHKey) hcloud.SSHKey {
		k.Labels = maps.Clone(k.Labels)
		return k
	}
	c.Keys, c.Records = cloneAll(s.Keys, keys), cloneAll(s.Records, keys)
	c.Unserved = maps.Clone(s.Unserved)
	return c
}

func cloneAll[T any](in []*T, clone func(T) T) []*T {
	out := make([]*T, len(in))
	for i, v := range in {
		c := clone(*v)
		out[i] = &c
	}
	return out
}

// factoryChecks is how many targets a poll asks the image factory about at
// once: each question can take the factory client's whole HEAD timeout.
const factoryChecks = 8

// unserved asks the factory about exactly the targets the plan would
// start: it plans, asks about the builds it has not asked about yet (in
// parallel), and plans again with the unserved ones deferred, until the
// builds are all served. A target the factory does not serve yet (new
// releases can 404 for minutes), is building (its first request starts a
// build that takes minutes) or cannot answer for is deferred, not failed.
func (p *Poller) unserved(ctx context.Context, st State, rules Rules) (map[build.Target]string, error) {
	st.Unserved = map[build.Target]string{}
	asked := map[build.Target]bool{}
	for {
		var fresh []build.Target
		for _, it := range NewPlan(st, rules).Builds {
			if !asked[it.Target] {
				fresh = append(fresh, it.Target)
			}
		}
		if len(fresh) == 0 {
			return st.Unserved, nil
		}
		whys := make([]string, len(fresh))
		slots := make(chan struct{}, factoryChecks)
		var wg sync.WaitGroup
		for i, t := range fresh {
			asked[t] = true
			wg.Go(func() {
				slots <- struct{}{}
				defer func() { <-slots }()
				whys[i] = p.ask(ctx, t)
			})
		}
		wg.Wait()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		for i, t := range fresh {
			if whys[i] != "" {
				st.Unserved[t] = whys[i]
			}
		}
	}
}

// ask asks the factory for the image of t and returns why t cannot be built
// now, or "" if it can.
func (p *Poller) ask(ctx context.Context, t build.Target) string {
	_, err := p.d.Factory.Find(ctx, t.Schematic, t.Version, t.Arch)
	var building *talos.BuildingError
	switch {
	case err == nil, ctx.Err() != nil:
		return ""
	case talos.IsNotAvailable(err):
		return "the image factory does not serve it yet"
	case errors.As(err, &building):
		p.log.Info("the image factory is building an image", "target", t.String(), "waited", building.Waited)
		return fmt.Sprintf("the image factory is building it (no answer within %s): deferred to the next poll", building.Waited)
	default:
		p.log.Warn("asking the image factory failed", "target", t.String(), "error", err)
		return "asking the image factory failed: " + err.Error()
	}
}

// ParsePayload reads a Poller payload: any scheduled event, or
// {"dry_run":true}.
func ParsePayload(payload []byte) (dryRun bool, err error) {
	if len(bytes.TrimSpace(payload)) == 0 {
		return false, nil
	}
	var p struct {
		DryRun bool `json:"dry_run"`
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		return false, fmt.Errorf(`invalid payload: %w; want a scheduled event or {"dry_run":true}`, err)
	}
	return p.DryRun, nil
}
