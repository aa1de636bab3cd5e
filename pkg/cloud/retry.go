package cloud

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"time"
)

// retryTransport retries what hcloud-go does not: 503 `unavailable` and 423
// `locked` (another action still runs on the resource). Hetzner answers both
// before it changes anything, so a retry — POST included — is safe.
type retryTransport struct {
	next       http.RoundTripper
	base       time.Duration
	maxRetries int
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	backoff := t.base
	for attempt := 0; ; attempt++ {
		if attempt > 0 && req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			req.Body = body
		}
		resp, err := t.next.RoundTrip(req)
		if err != nil || attempt >= t.maxRetries || (req.Body != nil && req.GetBody == nil) || !retryable(resp) {
			return resp, err
		}
		resp.Body.Close()
		select {
		case <-req.Context().Done():
			return nil, req.Context().Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 16*t.base)
	}
}

// retryable reads the error code of a 423 or 503 and puts the body back.
func retryable(resp *http.Response) bool {
	if resp.StatusCode != http.StatusLocked && resp.StatusCode != http.StatusServiceUnavailable {
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
