package build

// Failure memory. A build that fails deterministically would fail again at
// every poll, each time on a billed server (three with Lambda's two
// retries), so a failed build leaves a record in the Hetzner project: an
// SSH key, which costs nothing and carries labels, named after the target
// (and the cluster), whose private half nobody holds. Its labels count the
// failures, name the last one with a short code and say when the next
// attempt is allowed. The backoff doubles from FAILURE_BACKOFF up to a day;
// after FAILURE_LIMIT failures the target is parked until its version,
// schematic or configuration changes (a record made under another
// configuration does not apply), or a request with force. A success deletes
// the record. The Poller reads all records with one listing and plans no
// build of a held target (pkg/poll failures.go).
//
// Classify is the one place that tells deterministic failures, which are
// recorded and answered without a function error (so that Lambda does not
// retry them), from transient ones, which stay function errors and keep the
// build server for the retry.

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/cloud"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/ssh"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// classified is an error whose class its origin knows better than its type
// tells: a script that exited non-zero, a layout check, no capacity.
type classified struct {
	code      string
	transient bool
	err       error
}

func (e *classified) Error() string { return e.err.Error() }
func (e *classified) Unwrap() error { return e.err }

// deterministic marks err as a failure that the same build would meet
// again: it is recorded, and not retried by Lambda.
func deterministic(code string, err error) error {
	return &classified{code: code, err: err}
}

// transient marks err as a failure that a retry may not meet.
func transient(code string, err error) error {
	return &classified{code: code, transient: true, err: err}
}

// transientAPI are the Hetzner error codes that say "try again":
// overload, maintenance, a busy or changed resource, one that vanished
// (a retry starts afresh), or capacity outside server creation (where no
// capacity is classified at its origin). hcloud-go hcloud/error.go
// describes them; everything else (invalid_input, forbidden, unauthorized,
// resource_limit_exceeded, ...) is met again by a retry.
var transientAPI = []hcloud.ErrorCode{
	hcloud.ErrorCodeRateLimitExceeded, hcloud.ErrorCodeServerError, hcloud.ErrorCodeBadGateway,
	hcloud.ErrorCodeTimeout, hcloud.ErrorCodeServiceError, hcloud.ErrorCodeUnknownError,
	hcloud.ErrorCodeMaintenance, hcloud.ErrorCodeConflict, hcloud.ErrorCodeLocked,
	hcloud.ErrorCodeNotFound, hcloud.ErrorCodeUniquenessError, hcloud.ErrorCodeResourceUnavailable,
	"unavailable", // 503, which hcloud-go has no constant for
}

// Classify returns a failure's short code (a label value) and whether it is
// transient.
//
// Deterministic: what the build itself met and would meet again on another
// server: no capacity for the smallest disk anywhere, the server quota, no
// usable server type, the factory not serving the image (404), the rescue
// system unreachable or its session broken, the download failing after the
// install script's own retries, the written disk failing verification, the
// install running out of INSTALL_TIMEOUT, a snapshot that failed, stayed
// creating past SNAPSHOT_TIMEOUT or kept vanishing, a function timeout too
// short for a step, continuations without progress; and API answers that a
// retry gets again (invalid input, forbidden, quota). Anything not known to
// be transient counts as deterministic: it is retried after the backoff,
// which starts at one poll interval, rather than at once and forever.
//
// Transient: Hetzner API errors that say "retry" (rate limit, 5xx, timeout,
// locked, conflict, maintenance, a vanished resource), a failed action,
// network errors and timeouts of API calls, the factory still building an
// image or answering with an error, and lease trouble (another invocation
// holds or took the build, a continuation could not be started).
func Classify(err error) (code string, isTransient bool) {
	var c *classified
	if errors.As(err, &c) {
		return c.code, c.transient
	}
	var herr hcloud.Error
	var aerr hcloud.ActionError
	var nerr net.Error
	switch {
	case errors.Is(err, errLeaseLost), errors.Is(err, errLeaseHeld):
		return "lease", true
	case talos.IsBuilding(err):
		return "factory-building", true
	case talos.IsNotAvailable(err):
		return "not-served", false
	case errors.As(err, &herr):
		return "api-" + string(herr.Code), slices.Contains(transientAPI, herr.Code)
	case errors.As(err, &aerr):
		return "action-" + aerr.Code, true
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return "timeout", true
	case errors.As(err, &nerr):
		return "network", true
	}
	return "error", false
}

// rescueFailure classifies a failure on the rescue system: the install
// ran out of its time, a command ran and exited non-zero (code), or the
// SSH session broke.
func rescueFailure(ctx context.Context, code string, err error) error {
	var exit *ssh.ExitError
	switch {
	case errors.Is(context.Cause(ctx), errInstallTimeout):
		return deterministic("install-timeout", err)
	case errors.As(err, &exit):
		return deterministic(code, err)
	}
	return deterministic("rescue-ssh", err)
}

var errInstallTimeout = errors.New("INSTALL_TIMEOUT ran out")

// Defaults of FailurePolicy: FAILURE_BACKOFF is one poll interval of the
// hourly schedule.
const (
	DefaultFailureBackoff = time.Hour
	DefaultFailureLimit   = 4
	MaxFailureBackoff     = 24 * time.Hour
)

// FailurePolicy says how long a failed target waits and when it is parked.
// The zero value means the defaults.
type FailurePolicy struct {
	// Backoff is the wait after the first failure; it doubles with every
	// further failure, up to MaxFailureBackoff.
	Backoff time.Duration
	// Limit is the number of failures after which the target is parked.
	Limit int
	// Config is the ConfigDigest of the configuration; a record made under
	// another one does not apply.
	Config string
}

// ConfigDigest is a short digest of the settings a build depends on: a
// change of one of them may cure a failure, so it unparks its target.
// They are the builder's options (the schematics and versions are part of
// the target itself) and the image factory's URL, which is the factory
// client's, not an option.
func ConfigDigest(o Options, factoryURL string) string {
	h := sha256.New()
	for _, f := range []string{
		factoryURL, strings.Join(o.ServerTypes["amd64"], ","), strings.Join(o.ServerTypes["arm64"], ","),
		strings.Join(o.Locations, ","), o.ServerImage, o.Cluster,
		o.StepTimeout.String(), o.InstallTimeout.String(), o.SnapshotWait.String(), o.SnapshotTimeout.String(),
		o.LeaseTTL.String(),
	} {
		h.Write([]byte(f))
		h.Write([]byte{0})
	}
	for _, k := range slices.Sorted(maps.Keys(o.Labels)) {
		h.Write([]byte(k + "=" + o.Labels[k]))
		h.Write([]byte{0})
	}
	// Whether snapshots are boot-checked is part of what a failure was met
	// under; written only when off, so that the records made before the
	// check existed (by builds that had none to fail) keep applying.
	if !o.VerifyBoot {
		h.Write([]byte("verify-boot=off"))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:5])
}

func (p FailurePolicy) backoff() time.Duration { return cmp.Or(p.Backoff, DefaultFailureBackoff) }
func (p FailurePolicy) limit() int             { return cmp.Or(p.Limit, DefaultFailureLimit) }

// Delay is the wait after the given number of failures: Backoff doubled
// for every failure after the first, at most MaxFailureBackoff.
func (p FailurePolicy) Delay(failures int) time.Duration {
	d := p.backoff()
	for i := 1; i < failures && d < MaxFailureBackoff; i++ {
		d *= 2
	}
	return min(d, MaxFailureBackoff)
}

// FailureRecord is what a target's record says.
type FailureRecord struct {
	Key      *hcloud.SSHKey // nil for a record not written yet
	Target   Target
	Cluster  string
	Failures int
	Code     string    // of the last failure
	Step     Step      // that failed last
	At       time.Time // of the last failure
	Next     time.Time // no attempt before
	Config   string    // ConfigDigest it was recorded under
	Request  string    // the request whose build failed last
}

// ParseFailureRecord reads a failure record from its key.
func ParseFailureRecord(k *hcloud.SSHKey) (FailureRecord, bool) {
	l := k.Labels
	t, ok := TargetFromLabels(l)
	if !ok || !label.IsManaged(l) || l[label.Role] != label.RoleFailure {
		return FailureRecord{}, false
	}
	n, err := strconv.Atoi(l[label.Failures])
	if err != nil || n < 1 {
		return FailureRecord{}, false
	}
	return FailureRecord{Key: k, Target: t, Cluster: l[label.Cluster], Failures: n, Code: l[label.LastError],
		Step: Step(l[label.Step]), At: unixLabel(l[label.FailedAt]), Next: unixLabel(l[label.NextAttempt]),
		Config: l[label.ConfigDigest], Request: l[label.Request]}, true
}

func unixLabel(s string) time.Time {
	sec, _ := strconv.ParseInt(s, 10, 64)
	return time.Unix(sec, 0).UTC()
}

// Name is the record's key name: readable, and unique per target and
// cluster, as key names are per project.
func (rec FailureRecord) Name() string { return failureName(rec.Target, rec.Cluster) }

func failureName(t Target, cluster string) string {
	sum := sha256.Sum256([]byte(cluster + "\x00" + t.Version + "\x00" + t.Arch + "\x00" + t.Schematic))
	readable := strings.NewReplacer(".", "-", "_", "-").Replace(strings.ToLower(t.Version))
	// "failed-" + arch + "-" + version + "-" + 10 hex ≤ 63, like Name.
	if m := 63 - len("failed-") - len(t.Arch) - 2 - 10; len(readable) > m {
		readable = strings.TrimRight(readable[:m], "-")
	}
	return "failed-" + t.Arch + "-" + readable + "-" + hex.EncodeToString(sum[:5])
}

// Labels are the record's labels.
func (rec FailureRecord) Labels() map[string]string {
	l := rec.Target.targetLabels(rec.Cluster)
	l[label.Role] = label.RoleFailure
	l[label.Failures] = strconv.Itoa(rec.Failures)
	l[label.LastError] = rec.Code
	l[label.Step] = string(rec.Step)
	l[label.FailedAt] = strconv.FormatInt(rec.At.Unix(), 10)
	l[label.NextAttempt] = strconv.FormatInt(rec.Next.Unix(), 10)
	l[label.ConfigDigest] = rec.Config
	if label.Check(label.Request, rec.Request) == nil {
		l[label.Request] = rec.Request
	}
	for k, v := range l {
		if label.Check(k, v) != nil {
			delete(l, k) // an odd code or request id must not lose the record
		}
	}
	return l
}

// Applies tells whether the record was made under this configuration.
func (p FailurePolicy) Applies(rec FailureRecord) bool { return rec.Config == p.Config }

// Parked tells whether the record parks its target: FAILURE_LIMIT reached.
func (p FailurePolicy) Parked(rec FailureRecord) bool { return rec.Failures >= p.limit() }

// Holds tells whether the record keeps its target from being built now.
func (p FailurePolicy) Holds(rec FailureRecord, now time.Time) bool {
	return p.Applies(rec) && (p.Parked(rec) || now.Before(rec.Next))
}

// Why says why a held target is not built, for reports and refusals.
func (p FailurePolicy) Why(rec FailureRecord) string {
	last := fmt.Sprintf("%d failed build(s), the last %s at step %s (%s)", rec.Failures, rec.Code, rec.Step,
		rec.At.Format(time.RFC3339))
	if p.Parked(rec) {
		return fmt.Sprintf("parked after %s: FAILURE_LIMIT (%d) reached; built again when its version, schematic or "+
			"configuration changes, or on a request with force", last, p.limit())
	}
	return fmt.Sprintf("backed off after %s: next attempt from %s (FAILURE_BACKOFF %s, doubling)", last,
		rec.Next.Format(time.RFC3339), p.backoff())
}

// Record returns the record of t after one more failure: counting on from
// prev (which may be nil) when it applies, from one otherwise.
func (p FailurePolicy) Record(prev *FailureRecord, t Target, cluster, code string, step Step, request string, now time.Time) FailureRecord {
	rec := FailureRecord{Target: t, Cluster: cluster, Failures: 1, Code: code, Step: step, At: now.UTC(),
		Config: p.Config, Request: request}
	if prev != nil {
		rec.Key = prev.Key
		if p.Applies(*prev) {
			rec.Failures = prev.Failures + 1
		}
	}
	rec.Next = rec.At.Add(p.Delay(rec.Failures))
	return rec
}

// RecordCloud is what writing failure records needs; *cloud.Client.
type RecordCloud interface {
	CreateSSHKey(ctx context.Context, name, publicKey string, labels map[string]string) (*hcloud.SSHKey, error)
	SSHKeyByName(ctx context.Context, name string) (*hcloud.SSHKey, error)
	SetSSHKeyLabels(ctx context.Context, k *hcloud.SSHKey, labels map[string]string) error
}

// WriteFailureRecord writes rec: its key's labels when it has one, else a
// new key with a fresh public key whose private half is dropped at once
// (Hetzner requires one; nobody can log in with it).
func WriteFailureRecord(ctx context.Context, c RecordCloud, rec FailureRecord) error {
	if rec.Key == nil {
		key, err := ssh.NewKey()
		if err != nil {
			return err
		}
		k, err := c.CreateSSHKey(ctx, rec.Name(), key.AuthorizedKey(), rec.Labels())
		if err == nil {
			return nil
		}
		if !cloud.IsConflict(err) {
			return fmt.Errorf("record the failure of %s: %w", rec.Target, err)
		}
		// Made meanwhile, or by our own create whose reply was lost: its
		// labels are overwritten, a count may be lost.
		if k, err = c.SSHKeyByName(ctx, rec.Name()); err != nil || k == nil {
			return fmt.Errorf("record the failure of %s: the record exists but cannot be read: %w", rec.Target, err)
		}
		rec.Key = k
	}
	if err := c.SetSSHKeyLabels(ctx, rec.Key, rec.Labels()); err != nil {
		return fmt.Errorf("record the failure of %s: %w", rec.Target, err)
	}
	return nil
}

// SnapshotCloud is what discarding a snapshot needs; *cloud.Client.
type SnapshotCloud interface {
	SetImageLabels(ctx context.Context, img *hcloud.Image, labels map[string]string) error
	DeleteImage(ctx context.Context, img *hcloud.Image) error
}

// DiscardSnapshot deletes a failed snapshot. It first takes away every
// label but the management, build, cluster and failed ones, so that no
// consumer and no target counts it even if it becomes available before it
// can be deleted (one being created is locked); a later look (the build's
// or the Poller's) deletes one that is left. It returns whether the
// snapshot is gone.
func DiscardSnapshot(ctx context.Context, c SnapshotCloud, img *hcloud.Image, why string) (bool, error) {
	var errs []error
	if img.Labels[label.Failed] == "" {
		marked := map[string]string{label.Managed: label.ManagedValue, label.Failed: why}
		for _, k := range []string{label.Build, label.Cluster} {
			if v, ok := img.Labels[k]; ok {
				marked[k] = v
			}
		}
		if err := c.SetImageLabels(ctx, img, marked); err != nil {
			errs = append(errs, fmt.Errorf("mark failed snapshot %d: %w", img.ID, err))
		}
	}
	if err := c.DeleteImage(ctx, img); err != nil {
		return false, errors.Join(append(errs, err)...)
	}
	return true, errors.Join(errs...)
}

// FailedSnapshot tells why a snapshot was marked failed by DiscardSnapshot,
// or "".
func FailedSnapshot(labels map[string]string) string { return labels[label.Failed] }

// SnapshotServer returns the id of the build server a snapshot was taken
// of.
func SnapshotServer(labels map[string]string) (int64, bool) {
	id, err := strconv.ParseInt(labels[label.Build], 10, 64)
	return id, err == nil
}

// heldBack is asked before a build creates its server: a record that
// holds the target refuses the request (a failed result that creates
// nothing and is itself not counted), unless the request forces the build
// and is not a retry of the request that failed last: a forced request
// ignores and clears the record. The Poller plans no held target, so a
// forced request meeting one comes from a person.
func (r *run) heldBack(ctx context.Context) error {
	b := r.b
	k, err := b.cloud.SSHKeyByName(ctx, failureName(r.t, b.opts.Cluster))
	if err != nil || k == nil {
		return nil // unreadable: the Poller's reading of it is what bounds the cost
	}
	rec, ok := ParseFailureRecord(k)
	pol := b.opts.Failures
	if !ok || !pol.Holds(rec, b.now()) {
		return nil
	}
	why := pol.Why(rec)
	if r.force && rec.Request != r.origin {
		r.log.WarnContext(ctx, "a forced request overrides the failure record", "record", why)
		if err := b.cloud.DeleteSSHKey(ctx, k); err != nil {
			r.log.WarnContext(ctx, "delete failure record", "error", err)
		}
		return nil
	}
	code := codeBackedOff
	if pol.Parked(rec) {
		code = codeParked
	}
	r.log.WarnContext(ctx, "not building a target that keeps failing", "record", why)
	return &heldBackError{code: code, why: why}
}

// heldBackError is a target a failure record holds back: the build fails
// at its check, creating nothing, and is not counted as a failure.
type heldBackError struct {
	code string // backed-off or parked
	why  string
}

func (e *heldBackError) Error() string {
	return fmt.Sprintf("not built: %s; send force:true to try now", e.why)
}

// remember records a deterministic failure of the build. A failure at the
// check has created nothing and is not remembered: the image may be served
// minutes later, and the Poller asks the factory itself.
func (r *run) remember(ctx context.Context, step Step, code string) {
	if step == StepCheck {
		return
	}
	b := r.b
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.opts.StepTimeout)
	defer cancel()
	var prev *FailureRecord
	k, err := b.cloud.SSHKeyByName(ctx, failureName(r.t, b.opts.Cluster))
	if err == nil && k != nil {
		if rec, ok := ParseFailureRecord(k); ok {
			prev = &rec
		} else {
			prev = &FailureRecord{Key: k}
		}
	}
	rec := b.opts.Failures.Record(prev, r.t, b.opts.Cluster, code, step, r.origin, b.now())
	if err == nil {
		err = WriteFailureRecord(ctx, b.cloud, rec)
	}
	if err != nil {
		r.log.ErrorContext(ctx, "the failure could not be recorded: the next poll may build the target again", "error", err)
		return
	}
	r.log.WarnContext(ctx, "failure recorded", "failures", rec.Failures, "code", code, "parked", b.opts.Failures.Parked(rec),
		"next_attempt", rec.Next)
}

// forget deletes the target's failure record after a success.
func (r *run) forget(ctx context.Context) {
	b := r.b
	k, err := b.cloud.SSHKeyByName(ctx, failureName(r.t, b.opts.Cluster))
	if err == nil && k != nil {
		err = b.cloud.DeleteSSHKey(ctx, k)
	}
	if err != nil {
		r.log.WarnContext(ctx, "delete the failure record of a built target", "error", err)
	}
}
