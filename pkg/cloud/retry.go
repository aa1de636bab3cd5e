package cloud

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/backoff"
)

// retryTransport retries what hcloud-go does not: 503 `unavailable` and 423
// `locked` (another action still runs on the resource). Hetzner answers both
// before it changes anything, so a retry — POST included — is safe, with one
// exception: a create_image answered `locked` may be locked out by its own
// first try, whose reply was lost (hcloud-go retries the 502 of a lost
// reply but not `locked`: hcloud/client_handler_retry.go, retryPolicy).
// Retrying it blindly makes a second snapshot once that first action ends,
// so `locked` goes back to the builder, which looks for the snapshot before
// it asks again.
type retryTransport struct {
	next       http.RoundTripper
	base       time.Duration
	maxRetries int
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	wait := backoff.Exponential{Initial: t.base, Factor: 2, Max: 16 * t.base}
	for attempt := 0; ; attempt++ {
		if attempt > 0 && req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			req.Body = body
		}
		countRequest(req.Context())
		resp, err := t.next.RoundTrip(req)
		if err != nil || attempt >= t.maxRetries || (req.Body != nil && req.GetBody == nil) || !retryable(req, resp) {
			return resp, err
		}
		resp.Body.Close()
		if err := wait.Wait(req.Context()); err != nil {
			return nil, err
		}
	}
}

// retryable reads the error code of a 423 or 503 and puts the body back.
func retryable(req *http.Request, resp *http.Response) bool {
	if resp.StatusCode != http.StatusLocked && resp.StatusCode != http.StatusServiceUnavailable {
		return false
	}
	if resp.StatusCode == http.StatusLocked && strings.HasSuffix(req.URL.Path, "/actions/create_image") {
		return false
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return false
	}
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	return e.Error.Code == "locked" || e.Error.Code == "unavailable"
}
