// Package cloud is the narrow slice of the Hetzner Cloud API the builder and
// the poller use, on hcloud-go: whole operations (an action is waited for, a
// missing resource is nil rather than an error), tuned to poll briskly.
package cloud

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
)

// Options configure a Client.
type Options struct {
	Token    string
	Endpoint string // API base URL; empty means Hetzner's
	// Version is reported in the User-Agent with the application name.
	Version string
	// PollInterval caps the backoff between polls of a running action;
	// default 1 s. Actions poll from 100 ms up, so quick ones return quickly.
	PollInterval time.Duration
	// RetryBase is the first backoff of a retried request (rate limit,
	// conflict, 502/504 by hcloud-go; 503 and locked by us); default 1 s,
	// doubling, at most MaxRetries times each.
	RetryBase  time.Duration
	MaxRetries int
}

// Client is a Hetzner Cloud project.
type Client struct {
	c *hcloud.Client
}

// New returns a Client. It does not contact the API.
func New(o Options) *Client {
	poll := o.PollInterval
	if poll <= 0 {
		poll = time.Second
	}
	retryBase := o.RetryBase
	if retryBase <= 0 {
		retryBase = time.Second
	}
	maxRetries := o.MaxRetries
	if maxRetries <= 0 {
		maxRetries = 5
	}
	opts := []hcloud.ClientOption{
		hcloud.WithHTTPClient(&http.Client{
			Timeout:   time.Minute,
			Transport: &retryTransport{next: http.DefaultTransport, base: retryBase, maxRetries: maxRetries},
		}),
		hcloud.WithToken(o.Token),
		hcloud.WithApplication("hcloud-k8s-image-builder", o.Version),
		hcloud.WithPollOpts(hcloud.PollOpts{BackoffFunc: hcloud.ExponentialBackoffWithOpts(hcloud.ExponentialBackoffOpts{
			Base: min(100*time.Millisecond, poll), Multiplier: 2, Cap: poll,
		})}),
		hcloud.WithRetryOpts(hcloud.RetryOpts{
			BackoffFunc: hcloud.ExponentialBackoffWithOpts(hcloud.ExponentialBackoffOpts{
				Base: retryBase, Multiplier: 2, Cap: 16 * retryBase, Jitter: true,
			}),
			MaxRetries: maxRetries,
		}),
	}
	if o.Endpoint != "" {
		opts = append(opts, hcloud.WithEndpoint(o.Endpoint))
	}
	return &Client{c: hcloud.NewClient(opts...)}
}

// IsConflict tells whether err is a uniqueness violation: the name (or the
// key's fingerprint) is taken.
func IsConflict(err error) bool {
	return hcloud.IsError(err, hcloud.ErrorCodeUniquenessError)
}

// IsNoCapacity tells whether a server could not be placed: the type is out
// of stock in the location, or not sold there at all.
func IsNoCapacity(err error) bool {
	if hcloud.IsError(err, hcloud.ErrorCodeResourceUnavailable, hcloud.ErrorCodePlacementError) {
		return true
	}
	var herr hcloud.Error
	return errors.As(err, &herr) && herr.Code == hcloud.ErrorCodeInvalidInput &&
		strings.Contains(strings.ToLower(herr.Message), "unsupported location")
}

// IsLocked tells whether the resource is busy with an action: nothing was
// changed, and asking again later may succeed.
func IsLocked(err error) bool { return hcloud.IsError(err, hcloud.ErrorCodeLocked) }

// IsLimitExceeded tells whether the project is at a quota (for servers, a
// new account's is small): no retry or other location helps until someone
// deletes servers or Hetzner raises the limit.
func IsLimitExceeded(err error) bool {
	return hcloud.IsError(err, hcloud.ErrorCodeResourceLimitExceeded)
}

// IsNotFound tells whether the resource is gone.
func IsNotFound(err error) bool { return hcloud.IsError(err, hcloud.ErrorCodeNotFound) }

// ServerByName returns the server, or nil when there is none.
func (c *Client) ServerByName(ctx context.Context, name string) (*hcloud.Server, error) {
	s, _, err := c.c.Server.GetByName(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("get server %s: %w", name, err)
	}
	return s, nil
}

// Servers lists the servers matching a label selector.
func (c *Client) Servers(ctx context.Context, selector string) ([]*hcloud.Server, error) {
	ss, err := c.c.Server.AllWithOpts(ctx, hcloud.ServerListOpts{ListOpts: hcloud.ListOpts{LabelSelector: selector}})
	if err != nil {
		return nil, fmt.Errorf("list servers %s: %w", selector, err)
	}
	return ss, nil
}

// CreateServerOpts describe a build server.
type CreateServerOpts struct {
	Name       string
	ServerType string
	Location   string
	Image      string // a system image; the build boots into rescue anyway
	// Snapshot, when set, is the image instead: the server's disk starts as
	// the snapshot's.
	Snapshot int64
	Labels   map[string]string
	// SSHKeys go into the server's image. Unused by a build, but a server
	// created without keys gets a root password that Hetzner mails to the
	// project owner (hcloud-upload-image passes its key for that reason:
	// apricote/hcloud-upload-image hcloudimages/client.go).
	SSHKeys []*hcloud.SSHKey
}

// CreateServer creates a server that stays off: rescue must be enabled
// before its first boot. It waits until the server exists.
func (c *Client) CreateServer(ctx context.Context, o CreateServerOpts) (*hcloud.Server, error) {
	img := &hcloud.Image{Name: o.Image}
	if o.Snapshot != 0 {
		img = &hcloud.Image{ID: o.Snapshot}
	}
	res, _, err := c.c.Server.Create(ctx, hcloud.ServerCreateOpts{
		Name:             o.Name,
		ServerType:       &hcloud.ServerType{Name: o.ServerType},
		Image:            img,
		Location:         &hcloud.Location{Name: o.Location},
		StartAfterCreate: hcloud.Ptr(false),
		Labels:           o.Labels,
		SSHKeys:          o.SSHKeys,
		PublicNet:        &hcloud.ServerCreatePublicNet{EnableIPv4: true, EnableIPv6: true},
	})
	if err != nil {
		return nil, fmt.Errorf("create server %s (%s in %s): %w", o.Name, o.ServerType, o.Location, err)
	}
	if err := c.wait(ctx, res.Action); err != nil {
		return nil, fmt.Errorf("create server %s: %w", o.Name, err)
	}
	// The response showed it initializing; created and not started, it is off.
	res.Server.Status = hcloud.ServerStatusOff
	return res.Server, nil
}

// ServerTypes lists the server types the API offers now, with their disks,
// architectures and per-location availability and deprecation. Callers
// read them once per invocation: what is sold changes.
func (c *Client) ServerTypes(ctx context.Context) ([]*hcloud.ServerType, error) {
	ts, err := c.c.ServerType.All(ctx)
	if err != nil {
		return nil, fmt.Errorf("list server types: %w", err)
	}
	return ts, nil
}

// SetServerLabels replaces the server's labels (Hetzner has no partial
// update: callers read, modify and write).
func (c *Client) SetServerLabels(ctx context.Context, s *hcloud.Server, labels map[string]string) error {
	if _, _, err := c.c.Server.Update(ctx, s, hcloud.ServerUpdateOpts{Labels: labels}); err != nil {
		return fmt.Errorf("label server %s: %w", s.Name, err)
	}
	s.Labels = labels
	return nil
}

// DeleteServer deletes the server and waits until it is gone. A server
// that is already gone is not an error.
func (c *Client) DeleteServer(ctx context.Context, s *hcloud.Server) error {
	res, _, err := c.c.Server.DeleteWithResult(ctx, s)
	if IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete server %s: %w", s.Name, err)
	}
	if err := c.wait(ctx, res.Action); err != nil {
		return fmt.Errorf("delete server %s: %w", s.Name, err)
	}
	return nil
}

// EnableRescue arms the rescue system with one key for the next boot.
func (c *Client) EnableRescue(ctx context.Context, s *hcloud.Server, key *hcloud.SSHKey) error {
	res, _, err := c.c.Server.EnableRescue(ctx, s, hcloud.ServerEnableRescueOpts{
		Type: hcloud.ServerRescueTypeLinux64, SSHKeys: []*hcloud.SSHKey{key},
	})
	if err != nil {
		return fmt.Errorf("enable rescue on %s: %w", s.Name, err)
	}
	if err := c.wait(ctx, res.Action); err != nil {
		return fmt.Errorf("enable rescue on %s: %w", s.Name, err)
	}
	return nil
}

// Boot starts the server, or resets it when it runs, so that it boots
// afresh (into rescue, when armed). A power-on is not waited for: the boot
// takes much longer, and SSH dialing waits for it. A reset is, so that the
// system that ran before cannot answer the dial.
func (c *Client) Boot(ctx context.Context, s *hcloud.Server) error {
	if s.Status == hcloud.ServerStatusOff {
		if _, _, err := c.c.Server.Poweron(ctx, s); err != nil {
			return fmt.Errorf("power on %s: %w", s.Name, err)
		}
		return nil
	}
	a, _, err := c.c.Server.Reset(ctx, s)
	if err == nil {
		err = c.wait(ctx, a)
	}
	if err != nil {
		return fmt.Errorf("reset %s: %w", s.Name, err)
	}
	return nil
}

// PowerOff cuts the power and waits until the server is off.
func (c *Client) PowerOff(ctx context.Context, s *hcloud.Server) error {
	a, _, err := c.c.Server.Poweroff(ctx, s)
	if err != nil {
		return fmt.Errorf("power off %s: %w", s.Name, err)
	}
	if err := c.wait(ctx, a); err != nil {
		return fmt.Errorf("power off %s: %w", s.Name, err)
	}
	s.Status = hcloud.ServerStatusOff
	return nil
}

// CreateSnapshot starts a snapshot of the server's disk. It does not wait:
// a snapshot takes minutes, which the builder spends across invocations.
func (c *Client) CreateSnapshot(ctx context.Context, s *hcloud.Server, description string, labels map[string]string) (*hcloud.Image, error) {
	res, _, err := c.c.Server.CreateImage(ctx, s, &hcloud.ServerCreateImageOpts{
		Type: hcloud.ImageTypeSnapshot, Description: &description, Labels: labels,
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", s.Name, err)
	}
	return res.Image, nil
}

// Snapshots lists the snapshots matching a label selector, any status.
func (c *Client) Snapshots(ctx context.Context, selector string) ([]*hcloud.Image, error) {
	imgs, err := c.c.Image.AllWithOpts(ctx, hcloud.ImageListOpts{
		ListOpts: hcloud.ListOpts{LabelSelector: selector},
		Type:     []hcloud.ImageType{hcloud.ImageTypeSnapshot},
	})
	if err != nil {
		return nil, fmt.Errorf("list snapshots %s: %w", selector, err)
	}
	return imgs, nil
}

// DeleteImage deletes the image; one already gone is not an error.
func (c *Client) DeleteImage(ctx context.Context, img *hcloud.Image) error {
	if _, err := c.c.Image.Delete(ctx, img); err != nil && !IsNotFound(err) {
		return fmt.Errorf("delete image %d: %w", img.ID, err)
	}
	return nil
}

// SetImageLabels replaces the image's labels.
func (c *Client) SetImageLabels(ctx context.Context, img *hcloud.Image, labels map[string]string) error {
	if _, _, err := c.c.Image.Update(ctx, img, hcloud.ImageUpdateOpts{Labels: labels}); err != nil {
		return fmt.Errorf("label image %d: %w", img.ID, err)
	}
	img.Labels = labels
	return nil
}

// CreateSSHKey registers a public key.
func (c *Client) CreateSSHKey(ctx context.Context, name, publicKey string, labels map[string]string) (*hcloud.SSHKey, error) {
	k, _, err := c.c.SSHKey.Create(ctx, hcloud.SSHKeyCreateOpts{Name: name, PublicKey: publicKey, Labels: labels})
	if err != nil {
		return nil, fmt.Errorf("create ssh key %s: %w", name, err)
	}
	return k, nil
}

// SSHKeyByName returns the key, or nil when there is none.
func (c *Client) SSHKeyByName(ctx context.Context, name string) (*hcloud.SSHKey, error) {
	k, _, err := c.c.SSHKey.GetByName(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("get ssh key %s: %w", name, err)
	}
	return k, nil
}

// SSHKeys lists the keys matching a label selector.
func (c *Client) SSHKeys(ctx context.Context, selector string) ([]*hcloud.SSHKey, error) {
	ks, err := c.c.SSHKey.AllWithOpts(ctx, hcloud.SSHKeyListOpts{ListOpts: hcloud.ListOpts{LabelSelector: selector}})
	if err != nil {
		return nil, fmt.Errorf("list ssh keys %s: %w", selector, err)
	}
	return ks, nil
}

// SetSSHKeyLabels replaces the key's labels.
func (c *Client) SetSSHKeyLabels(ctx context.Context, k *hcloud.SSHKey, labels map[string]string) error {
	if _, _, err := c.c.SSHKey.Update(ctx, k, hcloud.SSHKeyUpdateOpts{Labels: labels}); err != nil {
		return fmt.Errorf("label ssh key %s: %w", k.Name, err)
	}
	k.Labels = labels
	return nil
}

// DeleteSSHKey deletes the key; one already gone is not an error.
func (c *Client) DeleteSSHKey(ctx context.Context, k *hcloud.SSHKey) error {
	if _, err := c.c.SSHKey.Delete(ctx, k); err != nil && !IsNotFound(err) {
		return fmt.Errorf("delete ssh key %s: %w", k.Name, err)
	}
	return nil
}

func (c *Client) wait(ctx context.Context, a *hcloud.Action) error {
	if a == nil {
		return nil
	}
	return c.c.Action.WaitFor(ctx, a)
}
