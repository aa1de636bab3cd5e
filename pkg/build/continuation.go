package build

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Continuation carries a build from one invocation to the next, which the
// Builder invokes itself when its time runs short. Only the Builder sets
// it: it is signed with a key derived from the deployment's Hetzner token,
// so a payload written by hand cannot set or reset it.
type Continuation struct {
	// Origin names the request the build started from (its Lambda request
	// id). Lambda keeps the request id when it retries or re-delivers an
	// event, so a forced build finds its own snapshot done.
	Origin string `json:"origin"`
	// Idle counts the invocations in a row that handed over without
	// finishing a step; past maxIdleHops the build fails.
	Idle int    `json:"idle"`
	MAC  string `json:"mac"`
}

// SigningKey derives the key that signs continuations from the Hetzner
// token: whoever can forge one could as well use the token.
func SigningKey(hcloudToken string) []byte {
	sum := sha256.Sum256([]byte("hcloud-k8s builder continuation\x00" + hcloudToken))
	return sum[:]
}

func (b *Builder) mac(r Request) string {
	m := hmac.New(sha256.New, b.opts.SigningKey)
	for _, f := range []string{r.Version, r.Arch, r.Schematic, strconv.FormatBool(r.Force),
		r.Continuation.Origin, strconv.Itoa(r.Continuation.Idle)} {
		m.Write([]byte(f))
		m.Write([]byte{0})
	}
	// The queue, when there is one: a request without one is signed as
	// before queues existed, so continuations in flight stay valid.
	if len(r.Queue) > 0 {
		fmt.Fprintf(m, "queue\x00%d\x00", len(r.Queue))
		for _, q := range r.Queue {
			fmt.Fprintf(m, "%s\x00%t\x00", q.Version, q.Force)
		}
	}
	return hex.EncodeToString(m.Sum(nil))
}

// sign signs the request's continuation.
func (b *Builder) sign(r *Request) {
	r.Continuation.MAC = b.mac(*r)
}

var errUnsigned = errors.New("invalid request: continuation is not signed by this deployment's Builder (only the Builder continues a build)")

// verify checks a continuation's signature.
func (b *Builder) verify(r Request) error {
	c := r.Continuation
	if c == nil {
		return nil
	}
	want := b.mac(r)
	if len(b.opts.SigningKey) == 0 || !hmac.Equal([]byte(c.MAC), []byte(want)) {
		return errUnsigned
	}
	if r.Arch == "" || r.Schematic == "" {
		return errors.New("invalid request: a continuation names one architecture and schematic")
	}
	return nil
}

type startKey struct{}

// withInvocationStart records when the invocation began, so that a run can
// tell the function's whole timeout from the time left.
func withInvocationStart(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, startKey{}, t)
}

func invocationStart(ctx context.Context, def time.Time) time.Time {
	if t, ok := ctx.Value(startKey{}).(time.Time); ok {
		return t
	}
	return def
}
