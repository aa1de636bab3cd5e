package fakehcloud

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"
)

// serverCommands maps the server action endpoints to the command of the
// action they start: the actions pkg/cloud takes.
var serverCommands = map[string]string{
	"poweron":       "start_server",
	"poweroff":      "stop_server",
	"reset":         "reset_server",
	"enable_rescue": "enable_rescue",
	"create_image":  "create_image",
}

// snapshotSizeGB is the image_size of new snapshots: about what a Talos
// disk that was discarded before writing compresses to.
const snapshotSizeGB = 0.2

func (c *Cloud) serverAction(r *http.Request) (int, any, error) {
	command, ok := serverCommands[r.PathValue("command")]
	if !ok {
		return c.unknownPath(r)
	}
	var rescueReq schema.ServerActionEnableRescueRequest
	var imageReq schema.ServerActionCreateImageRequest
	switch command {
	case "enable_rescue":
		if err := decodeOptional(r, &rescueReq); err != nil {
			return 0, nil, err
		}
		if t := rescueReq.Type; t != nil && *t != "" && *t != "linux64" {
			return 0, nil, errInvalidField("type", "rescue type must be linux64")
		}
	case "create_image":
		if err := decodeOptional(r, &imageReq); err != nil {
			return 0, nil, err
		}
		if t := imageReq.Type; t != nil && *t != "snapshot" && *t != "backup" {
			return 0, nil, errInvalidField("type", "image type must be snapshot or backup")
		}
		if imageReq.Labels != nil {
			if err := validateLabels(*imageReq.Labels); err != nil {
				return 0, nil, err
			}
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	s, err := c.server(r)
	if err != nil {
		return 0, nil, err
	}
	var rescueKeys []string
	if command == "enable_rescue" {
		refs := make([]schema.IDOrName, len(rescueReq.SSHKeys))
		for i, id := range rescueReq.SSHKeys {
			refs[i] = schema.IDOrName{ID: id}
		}
		if rescueKeys, err = c.resolveSSHKeys(refs); err != nil {
			return 0, nil, err
		}
	}
	if c.faults.locked() || c.busy[serverRef(s.ID)] > 0 {
		return 0, nil, errLocked("server")
	}

	id := s.ID
	var effect func() error
	switch command {
	case "start_server":
		effect = func() error { return c.setPower(id, true, false) }
	case "stop_server":
		effect = func() error { return c.setPower(id, false, false) }
	case "reset_server":
		effect = func() error { return c.setPower(id, true, true) }
	case "enable_rescue":
		// Rescue takes effect on the next boot, which then disables it.
		effect = c.withServer(id, func(s *server) { s.RescueEnabled, s.rescueKeys = true, rescueKeys })
	case "create_image":
		status, body, err := c.createImage(s, imageReq)
		if f, ok := c.faults.loseReply("create_image"); ok && err == nil {
			return 0, nil, f.err()
		}
		return status, body, err
	}
	a := c.newAction(command, c.duration(command), serverRef(id))
	c.run(a, c.failable(command, effect, nil))
	if command == "enable_rescue" {
		return http.StatusCreated, schema.ServerActionEnableRescueResponse{Action: a.view(), RootPassword: rand.Text()}, nil
	}
	// Every other action answers {"action": ...}.
	return http.StatusCreated, schema.ActionGetResponse{Action: a.view()}, nil
}

// createImage starts a create_image action on s; c.mu must be held.
func (c *Cloud) createImage(s *server, req schema.ServerActionCreateImageRequest) (int, any, error) {
	img := &Image{
		ID: c.nextID("image"), Type: "snapshot", Status: "creating", Architecture: s.typ.Architecture,
		OSFlavor: "unknown", DiskSize: float32(s.typ.Disk), CreatedFrom: s.ID, CreatedFromName: s.Name,
		Created: now(),
	}
	if req.Type != nil {
		img.Type = *req.Type
	}
	if img.Type == "backup" {
		img.BoundTo = s.ID
	}
	if req.Description != nil {
		img.Description = *req.Description
	}
	if req.Labels != nil {
		img.Labels = cloneLabels(*req.Labels)
	} else {
		img.Labels = map[string]string{}
	}
	if src, ok := c.images[s.Image]; ok {
		img.OSFlavor, img.OSVersion = src.OSFlavor, src.OSVersion
	}
	c.images[img.ID] = img

	serverID, imageID := s.ID, img.ID
	drop := func() { delete(c.images, imageID) }
	d := c.duration("create_image")
	if slow, ok := c.faults.slowImage(); ok {
		d = slow
	}
	a := c.newAction("create_image", d, serverRef(serverID), imageRef(imageID))
	corrupt := c.faults.corruptImage()
	if c.faults.unavailableImage() {
		c.run(a, func() error {
			c.mu.Lock()
			defer c.mu.Unlock()
			if img, ok := c.images[imageID]; ok {
				img.Status = "unavailable"
			}
			return fmt.Errorf("create_image failed (injected fault)")
		})
		return http.StatusCreated, schema.ServerActionCreateImageResponse{Action: a.view(), Image: img.schema()}, nil
	}
	c.run(a, c.failable("create_image", func() error {
		digest, err := c.machines.SaveImage(serverID, imageID)
		if err == nil && corrupt {
			if digest, err = c.machines.CorruptImage(imageID); err != nil {
				err = errors.Join(err, c.machines.DeleteImage(imageID))
			}
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if err != nil {
			drop()
			return fmt.Errorf("save disk of server %d: %w", serverID, err)
		}
		img, ok := c.images[imageID]
		if !ok {
			return fmt.Errorf("image %d vanished", imageID)
		}
		img.Status, img.Digest, img.ImageSize = "available", digest, snapshotSizeGB
		return nil
	}, drop))
	return http.StatusCreated, schema.ServerActionCreateImageResponse{Action: a.view(), Image: img.schema()}, nil
}

// failable returns effect, or, when FailActions picks this action, an effect
// that fails after applying undo (under c.mu) instead. It draws at request
// time so that a seeded run is deterministic.
func (c *Cloud) failable(command string, effect func() error, undo func()) func() error {
	if !c.faults.failAction(command) {
		return effect
	}
	return func() error {
		if undo != nil {
			c.mu.Lock()
			undo()
			c.mu.Unlock()
		}
		return fmt.Errorf("%s failed (injected fault)", command)
	}
}

// withServer returns an effect applying change to server id under c.mu.
func (c *Cloud) withServer(id int64, change func(*server)) func() error {
	return func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		s, ok := c.servers[id]
		if !ok {
			return fmt.Errorf("server %d vanished", id)
		}
		change(s)
		return nil
	}
}

// setPower drives server id to on or off; restart power-cycles a running
// server. It calls Machines without c.mu held.
func (c *Cloud) setPower(id int64, on, restart bool) error {
	c.mu.Lock()
	s, ok := c.servers[id]
	running := ok && s.Status == "running"
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("server %d vanished", id)
	}
	if running && (!on || restart) {
		if err := c.machines.Halt(id); err != nil {
			return fmt.Errorf("halt server %d: %w", id, err)
		}
		if err := c.withServer(id, func(s *server) { s.Status = "off" })(); err != nil {
			return err
		}
	}
	if on && (!running || restart) {
		return c.boot(id)
	}
	return nil
}

// boot boots server id, into rescue if it is enabled, which uses it up.
func (c *Cloud) boot(id int64) error {
	c.mu.Lock()
	s, ok := c.servers[id]
	var rescue *Rescue
	if ok && s.RescueEnabled {
		rescue = &Rescue{AuthorizedKeys: append([]string(nil), s.rescueKeys...)}
	}
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("server %d vanished", id)
	}
	if err := c.machines.Boot(id, rescue); err != nil {
		return fmt.Errorf("boot server %d: %w", id, err)
	}
	return c.withServer(id, func(s *server) {
		s.Status = "running"
		if rescue != nil {
			s.RescueEnabled, s.rescueKeys = false, nil
		}
	})()
}
