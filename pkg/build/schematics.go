package build

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// SchematicSet is the deployment's schematics: the configured IDs, and the
// ID the factory gives SCHEMATIC_CUSTOMIZATION. The customization is
// registered on first use rather than at start, within the factory
// client's SchematicTimeout, and its ID is kept once known (the factory
// derives it from the content), across the warm invocations of a Lambda
// function: a factory outage delays the builds of that schematic but stops
// nothing else, cleanup least of all.
type SchematicSet struct {
	configured []string
	yaml       string
	factory    *talos.Factory

	mu       sync.Mutex
	resolved []string // nil until the customization's ID is known
}

// NewSchematicSet returns the configured schematic IDs and the
// customization (SCHEMATIC_CUSTOMIZATION, may be empty), to be resolved
// with f.
func NewSchematicSet(configured []string, customization string, f *talos.Factory) *SchematicSet {
	s := &SchematicSet{configured: configured, yaml: customization, factory: f}
	if s.yaml == "" {
		s.resolved = s.configured
	}
	return s
}

// Configured returns the schematic IDs known without asking the factory.
func (s *SchematicSet) Configured() []string { return slices.Clone(s.configured) }

// Resolve returns every schematic ID of the deployment. When the
// customization cannot be registered it returns the configured IDs and
// the error.
func (s *SchematicSet) Resolve(ctx context.Context) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.resolved != nil {
		return slices.Clone(s.resolved), nil
	}
	id, err := s.factory.SchematicID(ctx, s.yaml)
	if err != nil {
		return s.Configured(), fmt.Errorf("SCHEMATIC_CUSTOMIZATION: %w", err)
	}
	s.resolved = s.Configured()
	if !slices.Contains(s.resolved, id) {
		s.resolved = append(s.resolved, id)
	}
	return slices.Clone(s.resolved), nil
}

// SchematicResolver resolves the deployment's schematics; *SchematicSet.
type SchematicResolver interface {
	Resolve(ctx context.Context) ([]string, error)
}

// schematics returns the schematics a request may name and expands to: the
// configured ones, and the customization's once resolved.
func (b *Builder) schematics() []string {
	if p := b.resolved.Load(); p != nil {
		return *p
	}
	return b.opts.Schematics
}

// resolveSchematics resolves the customization's schematic, if there is one
// and it is not known yet. When the factory cannot say it, a request that
// names a configured schematic goes on; any other is to be retried later.
func (b *Builder) resolveSchematics(ctx context.Context, r Request) error {
	if b.resolver == nil || b.resolved.Load() != nil {
		return nil
	}
	ids, err := b.resolver.Resolve(ctx)
	if err == nil {
		b.resolved.Store(&ids)
		return nil
	}
	if r.Schematic != "" && slices.Contains(b.opts.Schematics, r.Schematic) {
		b.log.WarnContext(ctx, "the customization's schematic is not known yet; building a configured one", "error", err)
		return nil
	}
	return fmt.Errorf("build to be retried: the request may name the schematic of SCHEMATIC_CUSTOMIZATION, "+
		"which the image factory has not resolved: %w", err)
}
