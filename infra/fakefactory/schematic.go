package fakefactory

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"

	"gopkg.in/yaml.v3"
)

// Well-known schematic IDs, always known to the emulator.
const (
	// VanillaSchematic is the empty schematic: no customization.
	VanillaSchematic = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
	// QemuGuestAgentSchematic adds the official siderolabs/qemu-guest-agent
	// extension (the hcloud-k8s default).
	QemuGuestAgentSchematic = "ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515"
)

var schematicIDRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Schematic mirrors the real factory's schematic document. The ID is the
// sha256 of its YAML encoding, so the field order, the tags and the YAML
// library (gopkg.in/yaml.v3) must stay exactly as upstream's.
type Schematic struct {
	Owner         string        `yaml:"owner,omitempty"`
	Overlay       Overlay       `yaml:"overlay,omitempty"`
	Customization Customization `yaml:"customization"`
}

// Customization is what a schematic changes in the stock image.
type Customization struct {
	EmbeddedMachineConfiguration string           `yaml:"embeddedMachineConfiguration,omitempty"`
	ExtraKernelArgs              []string         `yaml:"extraKernelArgs,omitempty"`
	Meta                         []MetaValue      `yaml:"meta,omitempty"`
	SystemExtensions             SystemExtensions `yaml:"systemExtensions,omitempty"`
	Bootloader                   string           `yaml:"bootloader,omitempty"`
	SecureBoot                   SecureBoot       `yaml:"secureboot,omitempty"`
	DiskImage                    DiskImage        `yaml:"diskImage,omitempty"`
}

// MetaValue is an initial value of the Talos META partition.
type MetaValue struct {
	Key   uint8  `yaml:"key"`
	Value string `yaml:"value"`
}

// SystemExtensions lists official extensions, e.g. "siderolabs/qemu-guest-agent".
type SystemExtensions struct {
	OfficialExtensions []string `yaml:"officialExtensions,omitempty"`
}

// Overlay is a board overlay (single-board computers).
type Overlay struct {
	Image   string         `yaml:"image"`
	Name    string         `yaml:"name"`
	Options map[string]any `yaml:"options,omitempty"`
}

// SecureBoot holds the SecureBoot options.
type SecureBoot struct {
	EnrollKeys                   string `yaml:"enrollKeys,omitempty"`
	IncludeWellKnownCertificates bool   `yaml:"includeWellKnownCertificates,omitempty"`
}

// DiskImage holds disk image options.
type DiskImage struct {
	SectorSize uint `yaml:"sectorSize,omitempty"`
}

// ParseSchematic decodes a YAML (or JSON) schematic; unknown fields are
// errors, as in the real factory.
func ParseSchematic(data []byte) (*Schematic, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var s Schematic
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("parse schematic: %w", err)
	}
	return &s, nil
}

// ID returns the schematic ID: the hex sha256 of the canonical YAML encoding.
func (s *Schematic) ID() (string, error) {
	data, err := yaml.Marshal(s)
	if err != nil {
		return "", fmt.Errorf("marshal schematic: %w", err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}
