package fakehcloud

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
)

// With a fifth of all requests failing transiently, a client with retries
// still gets through, and the log shows what it retried.
func TestTransientFaultsAreRetried(t *testing.T) {
	e := newEnv(t, Options{Seed: 7, Faults: Faults{
		Transient:       0.2,
		TransientErrors: []Fault{FaultRateLimitExceeded, FaultBadGateway, FaultTimeout},
	}})
	client := newClient(e.url, DefaultToken, 10)
	key, _, err := client.SSHKey.Create(ctx(t), hcloud.SSHKeyCreateOpts{Name: "k", PublicKey: newPublicKey(t)})
	if err != nil {
		t.Fatalf("create key: %v", err)
	}
	for i := range 10 {
		res, _, err := client.Server.Create(ctx(t), hcloud.ServerCreateOpts{
			Name: "box-" + strconv.Itoa(i), ServerType: &hcloud.ServerType{Name: "cx23"},
			Image: &hcloud.Image{Name: "debian-12"}, SSHKeys: []*hcloud.SSHKey{key},
		})
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
		if err := client.Action.WaitFor(ctx(t), append(res.NextActions, res.Action)...); err != nil {
			t.Fatalf("wait %d: %v", i, err)
		}
	}
	if n := len(e.cloud.Servers()); n != 10 {
		t.Fatalf("%d servers, want 10 (no duplicates from retries)", n)
	}
	reqs := e.cloud.Requests()
	failed := map[int]int{}
	for i, r := range reqs {
		if r.Status < 400 {
			continue
		}
		failed[r.Status]++
		if !slices.ContainsFunc(reqs[i+1:], func(later Request) bool {
			return later.Method == r.Method && later.Path == r.Path && later.Query == r.Query
		}) {
			t.Errorf("failed request %s %s?%s was not retried", r.Method, r.Path, r.Query)
		}
	}
	if failed[429] == 0 || failed[502] == 0 || failed[504] == 0 {
		t.Fatalf("failed requests by status = %v, want 429, 502 and 504 among them", failed)
	}
}

// hcloud-go v2.52 does not retry 503 unavailable: callers must.
func TestUnavailableIsNotRetriedByHcloudGo(t *testing.T) {
	e := newEnv(t, Options{Faults: Faults{Transient: 1, TransientErrors: []Fault{FaultUnavailable}}})
	_, _, err := e.client.Server.List(ctx(t), hcloud.ServerListOpts{})
	wantAPIError(t, err, "unavailable", http.StatusServiceUnavailable)
	if n := e.cloud.CountRequests("GET", "/v1/servers"); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}

func TestFailAfterCommitThenUniqueness(t *testing.T) {
	e := newEnv(t, Options{Faults: Faults{FailAfterCommit: 1}})
	opts := hcloud.ServerCreateOpts{
		Name: "talos-build", ServerType: &hcloud.ServerType{Name: "cx23"}, Image: &hcloud.Image{Name: "debian-12"},
	}
	_, _, err := e.client.Server.Create(ctx(t), opts)
	wantAPIError(t, err, hcloud.ErrorCodeUniquenessError, http.StatusConflict)
	reqs := e.cloud.Requests()
	if len(reqs) != 2 || reqs[0].Status != http.StatusBadGateway || reqs[1].Status != http.StatusConflict {
		t.Fatalf("requests = %+v, want a 502 then a 409", reqs)
	}
	// The creator adopts the server its lost request made.
	srv, _, err := e.client.Server.GetByName(ctx(t), "talos-build")
	if err != nil || srv == nil {
		t.Fatalf("adopt: %v, %v", srv, err)
	}
	if n := len(e.cloud.Servers()); n != 1 {
		t.Fatalf("%d servers, want 1", n)
	}

	e.cloud.SetFaults(Faults{FailAfterCommit: 1, FailAfterCommitError: FaultTimeout})
	opts.Name = "second"
	noRetry := newClient(e.url, DefaultToken, 0)
	_, _, err = noRetry.Server.Create(ctx(t), opts)
	wantAPIError(t, err, hcloud.ErrorCodeTimeout, http.StatusGatewayTimeout)
	if _, ok := findServer(e.cloud, "second"); !ok {
		t.Fatal("server not committed before the timeout answer")
	}
}

func findServer(c *Cloud, name string) (Server, bool) {
	for _, s := range c.Servers() {
		if s.Name == name {
			return s, true
		}
	}
	return Server{}, false
}

func TestLockedFault(t *testing.T) {
	e := newEnv(t, Options{})
	srv := e.createServer(t, hcloud.ServerCreateOpts{Name: "box"})
	e.cloud.SetFaults(Faults{Locked: 1})
	_, _, err := e.client.Server.Poweroff(ctx(t), srv)
	wantAPIError(t, err, hcloud.ErrorCodeLocked, http.StatusLocked)
	if s := e.getServer(t, srv.ID); s.Status != hcloud.ServerStatusRunning {
		t.Fatalf("status %s after a locked poweroff", s.Status)
	}
	e.cloud.SetFaults(Faults{})
	a, _, err := e.client.Server.Poweroff(ctx(t), srv)
	e.wait(t, a, err)
}

func TestFailActions(t *testing.T) {
	e := newEnv(t, Options{Faults: Faults{FailActions: map[string]float64{"create_image": 1}}})
	srv := e.createServer(t, hcloud.ServerCreateOpts{Name: "box"})
	res, _, err := e.client.Server.CreateImage(ctx(t), srv, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = e.client.Action.WaitFor(ctx(t), res.Action)
	var actionErr hcloud.ActionError
	if !errors.As(err, &actionErr) || actionErr.Code != "action_failed" {
		t.Fatalf("wait = %v, want action_failed", err)
	}
	if _, ok := e.cloud.Image(res.Image.ID); ok {
		t.Fatal("failed snapshot kept")
	}
	if hasOp(e.machines.ops(srv.ID), "save") {
		t.Fatal("failed create_image read the disk")
	}
}

func TestAuthAndRateLimitHeaders(t *testing.T) {
	e := newEnv(t, Options{RateLimit: 3, EnforceRateLimit: true})
	_, _, err := newClient(e.url, "wrong", 0).Server.List(ctx(t), hcloud.ServerListOpts{})
	wantAPIError(t, err, hcloud.ErrorCodeUnauthorized, http.StatusUnauthorized)
	resp, err := http.Get(e.url + "/servers")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: %d", resp.StatusCode)
	}

	_, r, err := e.client.Server.List(ctx(t), hcloud.ServerListOpts{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Meta.Ratelimit.Limit != 3 || r.Meta.Ratelimit.Remaining != 0 || !r.Meta.Ratelimit.Reset.After(time.Now()) {
		t.Fatalf("rate limit = %+v", r.Meta.Ratelimit)
	}
	_, _, err = newClient(e.url, DefaultToken, 0).Server.List(ctx(t), hcloud.ServerListOpts{})
	wantAPIError(t, err, hcloud.ErrorCodeRateLimitExceeded, http.StatusTooManyRequests)
}

// TestLostRepliesOfCreates shows what a retried create meets when the reply
// of its first try was lost: hcloud-go retries the 502 (also for POST), so a
// key's second try is a uniqueness_error, and a create_image's second try is
// either `locked` (the first one's action still runs on the server) or, once
// that action is done, a second snapshot.
func TestLostRepliesOfCreates(t *testing.T) {
	e := newEnv(t, Options{Faults: Faults{LoseReplies: map[string]int{"create_ssh_key": 1, "create_image": 1}}})
	_, _, err := e.client.SSHKey.Create(ctx(t), hcloud.SSHKeyCreateOpts{Name: "lease", PublicKey: newPublicKey(t)})
	wantAPIError(t, err, hcloud.ErrorCodeUniquenessError, http.StatusConflict)
	if n := len(e.cloud.SSHKeys()); n != 1 {
		t.Fatalf("%d keys, want the one the lost request made", n)
	}
	// Counted: the next create is answered normally.
	if _, _, err := e.client.SSHKey.Create(ctx(t), hcloud.SSHKeyCreateOpts{Name: "other", PublicKey: newPublicKey(t)}); err != nil {
		t.Fatal(err)
	}

	snapshots := func(e *testEnv) int {
		n := 0
		for _, img := range e.cloud.Images() {
			if img.Type == "snapshot" {
				n++
			}
		}
		return n
	}
	// A retry while the first action still runs: locked.
	srv := e.createServer(t, hcloud.ServerCreateOpts{Name: "box"})
	_, _, err = e.client.Server.CreateImage(ctx(t), srv, &hcloud.ServerCreateImageOpts{Type: hcloud.ImageTypeSnapshot})
	if !hcloud.IsError(err, hcloud.ErrorCodeLocked) || snapshots(e) != 1 {
		t.Fatalf("quick retry: %v, %d snapshots; want locked and the one snapshot", err, snapshots(e))
	}

	// A retry after the first action ended: a second snapshot.
	e2 := newEnv(t, Options{ActionDurations: map[string]time.Duration{"create_image": time.Millisecond},
		Faults: Faults{LoseReplies: map[string]int{"create_image": 1}}})
	srv = e2.createServer(t, hcloud.ServerCreateOpts{Name: "box"})
	slow := hcloud.NewClient(hcloud.WithEndpoint(e2.url), hcloud.WithToken(DefaultToken),
		hcloud.WithRetryOpts(hcloud.RetryOpts{BackoffFunc: hcloud.ConstantBackoff(100 * time.Millisecond), MaxRetries: 1}))
	res, _, err := slow.Server.CreateImage(ctx(t), srv, &hcloud.ServerCreateImageOpts{Type: hcloud.ImageTypeSnapshot})
	if err != nil || res.Image == nil || snapshots(e2) != 2 {
		t.Fatalf("slow retry: %v, %d snapshots; want success and two snapshots", err, snapshots(e2))
	}
}

func TestUnavailableImagesAndLockedUpdates(t *testing.T) {
	e := newEnv(t, Options{ActionDuration: 300 * time.Millisecond,
		Faults: Faults{UnavailableImages: 1, LockedUpdates: true}})
	srv := e.createServer(t, hcloud.ServerCreateOpts{Name: "box"})
	res, _, err := e.client.Server.CreateImage(ctx(t), srv, &hcloud.ServerCreateImageOpts{Type: hcloud.ImageTypeSnapshot})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = e.client.Server.Update(ctx(t), srv, hcloud.ServerUpdateOpts{Labels: map[string]string{"a": "b"}})
	wantAPIError(t, err, hcloud.ErrorCodeLocked, http.StatusLocked)
	if err := e.client.Action.WaitFor(ctx(t), res.Action); err == nil {
		t.Fatal("create_image succeeded, want it failed")
	}
	img, _, err := e.client.Image.GetByID(ctx(t), res.Image.ID)
	if err != nil || img == nil || img.Status != hcloud.ImageStatus("unavailable") {
		t.Fatalf("image %+v, %v: want status unavailable", img, err)
	}
	if _, _, err := e.client.Server.Update(ctx(t), srv, hcloud.ServerUpdateOpts{Labels: map[string]string{"a": "b"}}); err != nil {
		t.Fatalf("update after the action: %v", err)
	}
}

func TestRefuse(t *testing.T) {
	e := newEnv(t, Options{})
	key, _, err := e.client.SSHKey.Create(ctx(t), hcloud.SSHKeyCreateOpts{Name: "k", PublicKey: newPublicKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	e.cloud.SetFaults(Faults{Refuse: map[string]Fault{"PUT /v1/ssh_keys/*": {http.StatusInternalServerError, "server_error", "refused"}}})
	_, _, err = e.client.SSHKey.Update(ctx(t), key, hcloud.SSHKeyUpdateOpts{Labels: map[string]string{"a": "b"}})
	wantAPIError(t, err, "server_error", http.StatusInternalServerError)
	if got, _, err := e.client.SSHKey.GetByName(ctx(t), key.Name); err != nil || got == nil {
		t.Errorf("other endpoints: %v, %v", got, err)
	}
	if k := e.cloud.SSHKeys(); len(k[0].Labels) != 0 {
		t.Errorf("a refused update changed the key: %v", k[0].Labels)
	}
}
