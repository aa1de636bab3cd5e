package build

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Request asks for snapshots of one Talos version. Arch and Schematic are
// optional: empty means every configured one.
type Request struct {
	Version   string `json:"version"`
	Arch      string `json:"arch,omitempty"`
	Schematic string `json:"schematic,omitempty"`
	// Force rebuilds even when a snapshot exists: it replaces the snapshots
	// of the target there are when the build starts, once the new one is
	// available.
	Force bool `json:"force,omitempty"`
	// Queue lists the builds of the same architecture and schematic that
	// follow this one, oldest first: when this target is done the Builder
	// starts the first of them, with the rest as its queue (queue.go).
	Queue []Next `json:"queue,omitempty"`
	// Continuation is set by the Builder on the invocations it starts itself.
	Continuation *Continuation `json:"continuation,omitempty"`
}

// MaxRequestBytes bounds a payload; a real one is about 150 bytes.
const MaxRequestBytes = 4 << 10

// ParseRequest decodes a payload strictly: unknown fields, trailing data
// and oversized payloads are errors.
func ParseRequest(payload []byte) (Request, error) {
	if len(payload) > MaxRequestBytes {
		return Request{}, fmt.Errorf("invalid request: payload is %d bytes, at most %d", len(payload), MaxRequestBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	var r Request
	if err := dec.Decode(&r); err != nil {
		return Request{}, fmt.Errorf("invalid request: %w; want {\"version\":\"v1.13.9\",\"arch\":\"amd64\",\"schematic\":\"<64 hex>\",\"force\":false}", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Request{}, errors.New("invalid request: trailing data after the JSON object")
	}
	return r, nil
}

// Targets validates the request against the options, and the policy of
// what may be built (policyProblems), and expands it.
func (b *Builder) Targets(r Request) ([]Target, error) {
	var problems []string
	if r.Version == "" {
		problems = append(problems, `version: is required, e.g. "v1.13.9"`)
	}
	arches := b.opts.Architectures
	if r.Arch != "" {
		if !slices.Contains(b.opts.Architectures, r.Arch) {
			problems = append(problems, fmt.Sprintf("arch: %q is not one of the configured architectures (%s)",
				r.Arch, strings.Join(b.opts.Architectures, ", ")))
		}
		arches = []string{r.Arch}
	}
	schematics := b.schematics()
	if r.Schematic != "" {
		schematics = []string{r.Schematic}
	}
	var targets []Target
	for _, s := range schematics {
		for _, a := range arches {
			targets = append(targets, Target{Version: r.Version, Arch: a, Schematic: s})
		}
	}
	if len(targets) == 0 {
		problems = append(problems, "no architecture or schematic is configured")
	}
	if r.Version != "" && len(problems) == 0 {
		for _, t := range targets {
			if err := t.Validate(); err != nil {
				problems = append(problems, err.Error())
				break // the same field is wrong in every target
			}
		}
	}
	if len(problems) == 0 {
		problems = b.policyProblems(r)
	}
	if len(problems) == 0 {
		problems = b.queueProblems(r)
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("invalid request: %s", strings.Join(problems, "; "))
	}
	return targets, nil
}

// State of a target's build.
type State string

const (
	Done       State = "done"
	InProgress State = "in_progress"
	Failed     State = "failed"
)

// Result reports one target.
type Result struct {
	Target
	State      State  `json:"state"`
	Step       Step   `json:"step,omitempty"`
	SnapshotID int64  `json:"snapshot_id,omitempty"`
	Server     string `json:"server,omitempty"`
	Location   string `json:"location,omitempty"`
	ServerType string `json:"server_type,omitempty"`
	Error      string `json:"error,omitempty"`
	// Code is the short code of a failure (Classify), "backed-off" or
	// "parked" for a target a failure record holds.
	Code string `json:"code,omitempty"`

	// next is the continuation a build in progress goes on with; retry
	// marks one that nothing carries on unless the request is run again.
	next  *Continuation
	retry bool
}

// Response is what the Builder returns.
type Response struct {
	Results []Result `json:"results"`
	// Next is the build of the request's queue this invocation started.
	Next *Next `json:"next,omitempty"`
}

// FailedError is returned when a target failed deterministically (and
// none is to be retried), with a message a person can act on. The Lambda
// handler answers it with the response, not a function error, so that
// Lambda does not retry a build that would fail again.
type FailedError struct {
	Results []Result
}

func (e *FailedError) Error() string {
	var msgs []string
	for _, r := range e.Results {
		if r.State == Failed {
			msgs = append(msgs, fmt.Sprintf("%s: %s", r.Target, r.Error))
		}
	}
	return "build failed: " + strings.Join(msgs, "; ")
}

// RetryError is returned when a target's build stopped without failing and
// nothing carries it on (a lease whose holder may have died, a lost lease,
// a failed continuation): Lambda reports it as a function error and runs
// the request again later.
type RetryError struct {
	Results []Result
}

func (e *RetryError) Error() string {
	var msgs []string
	for _, r := range e.Results {
		if r.retry {
			msgs = append(msgs, fmt.Sprintf("%s: %s", r.Target, r.Error))
		}
	}
	return "build to be retried: " + strings.Join(msgs, "; ")
}

func randomID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
