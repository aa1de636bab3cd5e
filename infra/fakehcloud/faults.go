package fakehcloud

import (
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Fault is an error answer the cloud can inject.
type Fault struct {
	Status  int
	Code    string
	Message string
}

func (f Fault) err() *apiError { return &apiError{f.Status, f.Code, f.Message, nil} }

// Faults Hetzner answers under load. hcloud-go v2.52 retries rate_limit_exceeded,
// bad_gateway and timeout (and bare 502/504), but not unavailable.
var (
	FaultRateLimitExceeded = Fault{http.StatusTooManyRequests, "rate_limit_exceeded", "limit of requests per hour reached"}
	FaultUnavailable       = Fault{http.StatusServiceUnavailable, "unavailable", "the service is currently not available"}
	FaultBadGateway        = Fault{http.StatusBadGateway, "bad_gateway", "the request could not be answered by the API backend, please retry"}
	FaultTimeout           = Fault{http.StatusGatewayTimeout, "timeout", "the request could not be answered in time, please retry"}
	// FaultServerLimitExceeded is a project at its server quota, small for
	// a new account: 403, sometimes 422, with the message as
	// mysticaltech/terraform-hcloud-kube-hetzner issue #760 and
	// hetzneronline/community-content issue #933 quote it (infra/README.md,
	// the row on resource_limit_exceeded).
	FaultServerLimitExceeded = Fault{http.StatusForbidden, "resource_limit_exceeded", "server limit exceeded"}
)

// Placement is a server type in a location.
type Placement struct {
	ServerType string
	Location   string
}

// Faults are the failures the cloud injects; the zero value injects none.
// Rates are probabilities from 0 to 1, drawn from the seeded generator.
type Faults struct {
	// Transient is the rate of API requests answered with one of
	// TransientErrors before they touch any state, so retrying is safe.
	Transient float64
	// TransientErrors are picked from at random; empty means 429
	// rate_limit_exceeded, 502 bad_gateway and 503 unavailable.
	TransientErrors []Fault
	// Locked is the rate of server action requests answered 423 locked.
	Locked float64
	// FailAfterCommit is the rate of successful POST /servers answered with
	// FailAfterCommitError although the server was created, as when a
	// response is lost: a client retrying gets uniqueness_error.
	FailAfterCommit float64
	// FailAfterCommitError defaults to 502 bad_gateway.
	FailAfterCommitError Fault
	// Unavailable server types and locations fail creation with 412
	// resource_unavailable ("error during placement").
	Unavailable []Placement
	// ServerLimit, when positive, is the project's server quota: a create
	// while that many servers exist fails with ServerLimitError (default
	// FaultServerLimitExceeded) before anything is placed.
	ServerLimit      int
	ServerLimitError Fault
	// FailActions maps the command of a server action (start_server,
	// create_image, ...) to the rate of its actions that end in error
	// without effect.
	FailActions map[string]float64
	// LoseReplies answers the next n requests of an operation
	// ("create_server", "create_ssh_key", "create_image") with
	// FailAfterCommitError after they took effect, as when a reply is lost
	// on the way. hcloud-go retries the 502, so its retry meets what the
	// first try made: uniqueness_error for a key, a second snapshot for
	// create_image. Counted, not drawn, so a test hits exactly those calls.
	LoseReplies map[string]int
	// UnavailableImages is the rate of create_image actions that end in
	// error leaving their snapshot in status unavailable (Hetzner's status of
	// a failed image) instead of deleting it.
	UnavailableImages float64
	// SlowImages makes the next n create_image actions run for SlowImageFor
	// instead of their usual duration: snapshots stuck in "creating", their
	// servers locked meanwhile.
	SlowImages   int
	SlowImageFor time.Duration
	// CorruptImages makes the next n create_image actions end well but keep
	// a damaged disk (Machines.CorruptImage): the snapshot is available, and
	// a server created from it boots nothing, so its Talos API never
	// answers. Counted, not drawn. It needs Machines that keep disks
	// (fakerescue); without them the create_image action fails.
	CorruptImages int
	// Refuse answers every request matching a "METHOD /v1/path" pattern
	// (path.Match syntax, e.g. "PUT /v1/ssh_keys/*") with the fault, before
	// it touches any state: an outage of one endpoint.
	Refuse map[string]Fault
	// LockedUpdates answers a label update of a server that has a running
	// action with 423 locked. Whether Hetzner does is not documented; the
	// builder copes with both.
	LockedUpdates bool
}

func (f Faults) clone() Faults {
	f.TransientErrors = slices.Clone(f.TransientErrors)
	f.Unavailable = slices.Clone(f.Unavailable)
	f.FailActions = maps.Clone(f.FailActions)
	f.LoseReplies = maps.Clone(f.LoseReplies)
	f.Refuse = maps.Clone(f.Refuse)
	return f
}

// faultState holds the knobs and the generator deciding them.
type faultState struct {
	mu     sync.Mutex
	faults Faults
	rng    *rand.Rand
}

func (s *faultState) set(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f.clone()
}

// hit draws once against rate; a zero rate draws nothing so that enabling
// one fault does not shift the sequence of another.
func (s *faultState) hit(rate float64) bool {
	return rate > 0 && s.rng.Float64() < rate
}

func (s *faultState) transient() (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.hit(s.faults.Transient) {
		return Fault{}, false
	}
	kinds := s.faults.TransientErrors
	if len(kinds) == 0 {
		kinds = []Fault{FaultRateLimitExceeded, FaultBadGateway, FaultUnavailable}
	}
	return kinds[s.rng.IntN(len(kinds))], true
}

func (s *faultState) locked() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hit(s.faults.Locked)
}

func (s *faultState) failAfterCommit() (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.hit(s.faults.FailAfterCommit) {
		return Fault{}, false
	}
	if s.faults.FailAfterCommitError.Status == 0 {
		return FaultBadGateway, true
	}
	return s.faults.FailAfterCommitError, true
}

// loseReply tells whether the reply to a committed op is to be lost, and
// with which error.
func (s *faultState) loseReply(op string) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.faults.LoseReplies[op] <= 0 {
		return Fault{}, false
	}
	s.faults.LoseReplies[op]--
	if s.faults.FailAfterCommitError.Status == 0 {
		return FaultBadGateway, true
	}
	return s.faults.FailAfterCommitError, true
}

// slowImage returns how long the next create_image runs, if it is slowed.
func (s *faultState) slowImage() (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.faults.SlowImages <= 0 {
		return 0, false
	}
	s.faults.SlowImages--
	return s.faults.SlowImageFor, true
}

// corruptImage tells whether the next create_image keeps a damaged disk.
func (s *faultState) corruptImage() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.faults.CorruptImages <= 0 {
		return false
	}
	s.faults.CorruptImages--
	return true
}

func (s *faultState) refused(method, path string) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for pattern, f := range s.faults.Refuse {
		m, p, _ := strings.Cut(pattern, " ")
		if m == method && matchPath(p, path) {
			return f, true
		}
	}
	return Fault{}, false
}

func (s *faultState) unavailableImage() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hit(s.faults.UnavailableImages)
}

func (s *faultState) lockedUpdates() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults.LockedUpdates
}

func (s *faultState) unavailable(p Placement) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.faults.Unavailable, p)
}

// serverLimit returns the quota (0: none) and the error exceeding it.
func (s *faultState) serverLimit() (int, Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.faults.ServerLimitError.Status == 0 {
		return s.faults.ServerLimit, FaultServerLimitExceeded
	}
	return s.faults.ServerLimit, s.faults.ServerLimitError
}

func (s *faultState) failAction(command string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hit(s.faults.FailActions[command])
}

// newRand returns the fault generator for seed.
func newRand(seed uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}
