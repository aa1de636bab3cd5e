package fakehcloud

import (
	"cmp"
	"net/http"
	"strings"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"
	"golang.org/x/crypto/ssh"
)

func (k *SSHKey) schema() schema.SSHKey {
	return schema.SSHKey{
		ID: k.ID, Name: k.Name, Fingerprint: k.Fingerprint, PublicKey: k.PublicKey,
		Labels: cloneLabels(k.Labels), Created: k.Created,
	}
}

var sshKeySort = sortFields[*SSHKey]{
	"id":   func(a, b *SSHKey) int { return cmp.Compare(a.ID, b.ID) },
	"name": func(a, b *SSHKey) int { return cmp.Compare(a.Name, b.Name) },
}

func (c *Cloud) listSSHKeys(r *http.Request) (int, any, error) {
	q := r.URL.Query()
	sel, err := selectorFromQuery(q)
	if err != nil {
		return 0, nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*SSHKey
	for _, k := range c.keys {
		if matchAny(q, "name", k.Name) && matchAny(q, "fingerprint", k.Fingerprint) && sel.matches(k.Labels) {
			out = append(out, k)
		}
	}
	if err := sortItems(out, q["sort"], sshKeySort); err != nil {
		return 0, nil, err
	}
	return listResponse(q, "ssh_keys", out, (*SSHKey).schema)
}

// sshKey returns the key of the {id} path value; c.mu must be held.
func (c *Cloud) sshKey(r *http.Request) (*SSHKey, error) {
	id, err := pathID(r, "ssh_key")
	if err != nil {
		return nil, err
	}
	k, ok := c.keys[id]
	if !ok {
		return nil, errNotFound("ssh_key", r.PathValue("id"))
	}
	return k, nil
}

func (c *Cloud) createSSHKey(r *http.Request) (int, any, error) {
	var req schema.SSHKeyCreateRequest
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	if req.Name == "" {
		return 0, nil, errInvalidField("name", "is required")
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(req.PublicKey))
	if err != nil {
		return 0, nil, errInvalidField("public_key", "invalid public key: "+err.Error())
	}
	var labels map[string]string
	if req.Labels != nil {
		labels = *req.Labels
	}
	if err := validateLabels(labels); err != nil {
		return 0, nil, err
	}
	fingerprint := ssh.FingerprintLegacyMD5(pub)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range c.keys {
		if k.Name == req.Name {
			return 0, nil, errUniqueness("SSH key with the same name already exists")
		}
		if k.Fingerprint == fingerprint {
			return 0, nil, errUniqueness("SSH key with the same fingerprint already exists")
		}
	}
	k := &SSHKey{
		ID: c.nextID("ssh_key"), Name: req.Name, Fingerprint: fingerprint,
		PublicKey: strings.TrimSpace(req.PublicKey), Labels: cloneLabels(labels), Created: now(),
	}
	c.keys[k.ID] = k
	if f, ok := c.faults.loseReply("create_ssh_key"); ok {
		return 0, nil, f.err()
	}
	return http.StatusCreated, schema.SSHKeyCreateResponse{SSHKey: k.schema()}, nil
}

func (c *Cloud) updateSSHKey(r *http.Request) (int, any, error) {
	var req schema.SSHKeyUpdateRequest
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	if req.Labels != nil {
		if err := validateLabels(*req.Labels); err != nil {
			return 0, nil, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k, err := c.sshKey(r)
	if err != nil {
		return 0, nil, err
	}
	if req.Name != "" && req.Name != k.Name {
		for _, other := range c.keys {
			if other.Name == req.Name {
				return 0, nil, errUniqueness("SSH key with the same name already exists")
			}
		}
		k.Name = req.Name
	}
	if req.Labels != nil {
		k.Labels = cloneLabels(*req.Labels) // PUT replaces the whole label set
	}
	return http.StatusOK, schema.SSHKeyUpdateResponse{SSHKey: k.schema()}, nil
}

func (c *Cloud) deleteSSHKey(r *http.Request) (int, any, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k, err := c.sshKey(r)
	if err != nil {
		return 0, nil, err
	}
	delete(c.keys, k.ID)
	return http.StatusNoContent, nil, nil
}
