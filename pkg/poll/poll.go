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
	"sync"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/config"
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
}

// AnonymousGitHubWarning is the report's warning when GitHub is read
// without a token. GitHub limits unauthenticated requests per originating
// IP address ("Rate limits for the REST API", docs.github.com), and a Lambda
// function outside a VPC has no IP address of its own.
const AnonymousGitHubWarning = "GitHub is read without a token: 60 requests/hour per originating IP, " +
	"shared with other AWS customers on Lambda's egress IPs; set GITHUB_TOKEN_SECRET"

// OptionsFrom maps the configuration to poller options; schematics are the
// resolved schematic IDs (build.Schematics).
func OptionsFrom(c config.Config, schematics []string) (Options, error) {
	p, err := release.NewPolicy(c.TrackMinors, c.TrackAllPatches, c.Prereleases, c.MinVersion)
	if err != nil {
		return Options{}, fmt.Errorf("MIN_VERSION: %w", err)
	}
	return Options{Policy: p, AnonymousGitHub: c.GitHubToken == "", Rules: Rules{
		Architectures: c.Architectures, Schematics: schematics, Cluster: c.Cluster,
		MaxBuilds: c.MaxBuildsPerPoll, ServerTTL: c.BuildServerTTL, KeepOthers: c.KeepOthers,
		FailureRules: FailureRules{Failures: build.FailurePolicyFrom(c), SnapshotTimeout: c.SnapshotTimeout},
	}}, nil
}

// Deps are the Poller's collaborators.
type Deps struct {
	Releases Releases
	Cloud    Cloud
	Factory  build.Factory // *talos.Factory
	Builder  Invoker       // nil allows dry runs only
	Logger   *slog.Logger
	Now      func() time.Time // default time.Now
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
	Plan
}

// Run polls once. Listing or reading failures end the poll before anything
// is acted on. With dryRun it plans without acting. Failed actions are
// recorded in the report and returned joined.
func (p *Poller) Run(ctx context.Context, dryRun bool) (Report, error) {
	rep := Report{DryRun: dryRun, SkippedTags: []string{}, Tracked: []string{}, Warnings: []string{}}
	if p.opts.AnonymousGitHub {
		p.log.Warn(AnonymousGitHubWarning)
		rep.Warnings = append(rep.Warnings, AnonymousGitHubWarning)
	}
	listing, err := p.d.Releases.List(ctx, p.opts.Policy.Covered)
	if err != nil {
		return rep, fmt.Errorf("poll: nothing done: %w", err)
	}
	rep.ReleasesSeen, rep.GitHubRequests, rep.GitHubNotModified = len(listing.Releases), listing.Requests, listing.NotModified
	rep.SkippedTags = append(rep.SkippedTags, listing.Skipped...)
	st := State{Now: p.d.Now()}
	for _, r := range p.opts.Policy.Track(listing.Releases) {
		st.Tracked = append(st.Tracked, r.Version)
		rep.Tracked = append(rep.Tracked, r.Version.String())
	}
	if len(st.Tracked) == 0 {
		p.log.Warn("no release is tracked: nothing is built or pruned", "releases_seen", rep.ReleasesSeen)
	}
	if st.Snapshots, err = p.d.Cloud.Snapshots(ctx, snapshotSelector(p.opts.Cluster)); err != nil {
		return rep, fmt.Errorf("poll: nothing done: %w", err)
	}
	if st.Servers, err = p.d.Cloud.Servers(ctx, build.BuildServerSelector()); err != nil {
		return rep, fmt.Errorf("poll: nothing done: %w", err)
	}
	if st.Keys, err = p.d.Cloud.SSHKeys(ctx, build.LeaseSelector()); err != nil {
		return rep, fmt.Errorf("poll: nothing done: %w", err)
	}
	if st.Records, err = p.d.Cloud.SSHKeys(ctx, build.FailureSelector()); err != nil {
		return rep, fmt.Errorf("poll: nothing done: %w", err)
	}
	if st.Unserved, err = p.unserved(ctx, st); err != nil {
		return rep, fmt.Errorf("poll: nothing done: %w", err)
	}
	rep.Plan = NewPlan(st, p.opts.Rules)
	p.log.Info("poll planned", "dry_run", dryRun, "tracked", rep.Tracked, "builds", len(rep.Builds),
		"redrives", len(rep.Redrives), "deferred", len(rep.Deferred), "collect_servers", len(rep.CollectServers),
		"collect_keys", len(rep.CollectKeys), "prune", len(rep.Prune))
	if dryRun {
		return rep, nil
	}
	err = Executor{Cloud: p.d.Cloud, Builder: p.d.Builder, Logger: p.log}.Apply(ctx, &rep.Plan)
	// Lambda returns only the error of a failed invocation: the log keeps
	// the report.
	p.log.Info("poll finished", "failed", err != nil, "report", rep)
	if err != nil {
		return rep, fmt.Errorf("poll: %w", err)
	}
	return rep, nil
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
func (p *Poller) unserved(ctx context.Context, st State) (map[build.Target]string, error) {
	st.Unserved = map[build.Target]string{}
	asked := map[build.Target]bool{}
	for {
		var fresh []build.Target
		for _, it := range NewPlan(st, p.opts.Rules).Builds {
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

// snapshotSelector selects the managed snapshots of our cluster (or of no
// cluster), as the builder labels them.
func snapshotSelector(cluster string) string {
	sel := label.Managed + "=" + label.ManagedValue
	if cluster == "" {
		return sel + ",!" + label.Cluster
	}
	return sel + "," + label.Cluster + "=" + cluster
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
