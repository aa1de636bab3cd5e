// Package stack starts the whole local world on loopback: the Hetzner Cloud
// API with rescue hosts behind its servers, the Talos Image Factory, the
// GitHub releases API, a secrets store and an EventBridge bus — what the
// functions run against in tests and in `make local`.
package stack

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakeevents"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakefactory"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakegithub"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakehcloud"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakerescue"
	"github.com/hcloud-k8s/hcloud-k8s/infra/fakesecrets"
)

// Options shape the local world. Zero values give a quick one for tests.
type Options struct {
	// Dir holds disks and images; empty means a temporary directory that
	// Close removes.
	Dir string
	// BootDelay is how long a rescue system takes to accept SSH (real
	// Hetzner: ~80 s); default 100 ms.
	BootDelay time.Duration
	// ActionDuration is how long a Hetzner action runs; default 50 ms.
	// ActionDurations overrides it per command (e.g. create_image).
	ActionDuration  time.Duration
	ActionDurations map[string]time.Duration
	// DiskSize is the size of each server's sparse disk file; default 4 GiB,
	// enough for images at QuickScale but not at the real sizes (v1.11+
	// amd64: 4247 MiB).
	DiskSize int64
	// Scale shapes the factory's images (fakefactory.Options.Scale): 0 means
	// fakefactory.QuickScale, 1 the real sizes.
	Scale int64
	// Data is the kind of data in the factory's images.
	Data fakefactory.DataKind
	// FactoryBuildDelay is how long the factory builds an image on the
	// first request for it (fakefactory.Options.BuildDelay).
	FactoryBuildDelay time.Duration
	// Versions the factory serves; default fakefactory.DefaultVersions().
	Versions []string
	// Releases of siderolabs/talos; default fakegithub.TalosReleases().
	Releases []fakegithub.Release
	// Faults to inject into the Hetzner API from the start.
	Faults fakehcloud.Faults
	Seed   uint64
	Logger *slog.Logger
}

// Stack is the running local world.
type Stack struct {
	Cloud    *fakehcloud.Cloud
	Machines *fakerescue.Pool
	Factory  *fakefactory.Factory
	GitHub   *fakegithub.Server
	// Secrets stands in for Secrets Manager and SSM Parameter Store.
	Secrets *fakesecrets.Store
	// Events stands in for EventBridge's default bus, at EventsURL.
	Events    *fakeevents.Bus
	EventsURL string

	HCloudURL, FactoryURL, GitHubURL, SecretsURL string
	Token                                        string

	tmp    string
	logger *slog.Logger
}

// Start starts every emulator on 127.0.0.1 with random ports.
func Start(o Options) (_ *Stack, err error) {
	s := &Stack{Token: fakehcloud.DefaultToken}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	dir := o.Dir
	if dir == "" {
		if s.tmp, err = os.MkdirTemp("", "hcloud-k8s-stack-"); err != nil {
			return nil, err
		}
		dir = s.tmp
	}
	for _, sub := range []string{"disks", "images"} {
		if err := os.MkdirAll(dir+"/"+sub, 0o755); err != nil {
			return nil, err
		}
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s.logger = logger

	// The guest's power commands (poweroff in rescue) reach the cloud that
	// the pool serves, and disks boot the factory's images: both exist
	// before any server can boot.
	var cloud *fakehcloud.Cloud
	s.Machines = fakerescue.New(fakerescue.Options{
		Dir: dir + "/disks", DiskSize: o.DiskSize, BootDelay: o.BootDelay, Logger: logger,
		PowerFunc: func(id int64, op string) { cloud.GuestPower(id, op) },
		Identify:  func(digest string) (string, string, bool) { return s.Factory.Identify(digest) },
	})
	cloud = fakehcloud.New(fakehcloud.Options{
		Machines: machines{s.Machines}, ActionDuration: o.ActionDuration, ActionDurations: o.ActionDurations,
		Faults: o.Faults, Seed: o.Seed, Logger: logger,
	})
	s.Cloud = cloud
	if s.HCloudURL, err = cloud.Start(); err != nil {
		return nil, fmt.Errorf("start hetzner api: %w", err)
	}

	scale := o.Scale
	if scale == 0 {
		scale = fakefactory.QuickScale
	}
	s.Factory = fakefactory.New(fakefactory.Options{
		Dir: dir + "/images", Versions: o.Versions, Scale: scale, Data: o.Data, BuildDelay: o.FactoryBuildDelay,
		Redirect: true, Logger: logger,
	})
	if s.FactoryURL, err = s.Factory.Start(); err != nil {
		return nil, fmt.Errorf("start image factory: %w", err)
	}

	releases := o.Releases
	if releases == nil {
		releases = fakegithub.TalosReleases()
	}
	s.GitHub = fakegithub.New(fakegithub.Options{Releases: releases})
	if s.GitHubURL, err = s.GitHub.Start(); err != nil {
		return nil, fmt.Errorf("start github api: %w", err)
	}
	s.Secrets = fakesecrets.New()
	if s.SecretsURL, err = s.Secrets.Start(); err != nil {
		return nil, fmt.Errorf("start secrets store: %w", err)
	}
	s.Events = fakeevents.New()
	if s.EventsURL, err = s.Events.Start(); err != nil {
		return nil, fmt.Errorf("start event bus: %w", err)
	}
	return s, nil
}

// Env is the configuration that points the functions at this stack.
func (s *Stack) Env() map[string]string {
	return map[string]string{
		"HCLOUD_TOKEN":      s.Token,
		"HCLOUD_ENDPOINT":   s.HCloudURL,
		"TALOS_FACTORY_URL": s.FactoryURL,
		"GITHUB_API_URL":    s.GitHubURL,
		// Where a *_TOKEN_SECRET is looked up.
		"AWS_ENDPOINT_URL_SECRETS_MANAGER": s.SecretsURL,
		"AWS_ENDPOINT_URL_SSM":             s.SecretsURL,
		// Where the Builder announces its builds' ends.
		"AWS_ENDPOINT_URL_EVENTBRIDGE": s.EventsURL,
	}
}

// Close stops everything Start started and removes its temporary files.
func (s *Stack) Close() error {
	var errs []error
	if s.Events != nil {
		errs = append(errs, s.Events.Close())
	}
	if s.Secrets != nil {
		errs = append(errs, s.Secrets.Close())
	}
	if s.GitHub != nil {
		errs = append(errs, s.GitHub.Close())
	}
	if s.Factory != nil {
		errs = append(errs, s.Factory.Close())
	}
	if s.Cloud != nil {
		errs = append(errs, s.Cloud.Close())
	}
	if s.Machines != nil {
		errs = append(errs, s.Machines.Close())
	}
	if s.tmp != "" {
		errs = append(errs, os.RemoveAll(s.tmp))
	}
	return errors.Join(errs...)
}

// machines adapts the rescue pool to the cloud's Machines interface; the
// two packages do not import each other.
type machines struct{ *fakerescue.Pool }

func (m machines) Boot(id int64, r *fakehcloud.Rescue) error {
	return m.Pool.Boot(id, (*fakerescue.Rescue)(r))
}
