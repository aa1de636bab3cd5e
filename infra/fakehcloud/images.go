package fakehcloud

import (
	"cmp"
	"net/http"
	"strconv"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"
)

// schema renders img; the pointers it holds are to copies, as the answer is
// encoded after c.mu is released.
func (img *Image) schema() schema.Image {
	v := img.view()
	img = &v
	created := img.Created
	out := schema.Image{
		ID: img.ID, Status: img.Status, Type: img.Type, Description: img.Description,
		DiskSize: img.DiskSize, Created: &created, OSFlavor: img.OSFlavor,
		Architecture: img.Architecture, RapidDeploy: img.Type == "system", Labels: cloneLabels(img.Labels),
	}
	if img.Name != "" {
		out.Name = &img.Name
	}
	if img.OSVersion != "" {
		out.OSVersion = &img.OSVersion
	}
	if img.ImageSize > 0 {
		out.ImageSize = &img.ImageSize
	}
	if img.CreatedFrom != 0 {
		out.CreatedFrom = &schema.ImageCreatedFrom{ID: img.CreatedFrom, Name: img.CreatedFromName}
	}
	if img.BoundTo != 0 {
		out.BoundTo = &img.BoundTo
	}
	if !img.Deprecated.IsZero() {
		d := img.Deprecated
		out.Deprecated = &d //nolint:staticcheck // still part of the API
		out.Deprecation = &schema.DeprecationInfo{Announced: d, UnavailableAfter: d.AddDate(0, 3, 0)}
	}
	return out
}

var imageSort = sortFields[*Image]{
	"id":          func(a, b *Image) int { return cmp.Compare(a.ID, b.ID) },
	"name":        func(a, b *Image) int { return cmp.Compare(a.Name, b.Name) },
	"description": func(a, b *Image) int { return cmp.Compare(a.Description, b.Description) },
	"created":     func(a, b *Image) int { return a.Created.Compare(b.Created) },
}

func (c *Cloud) listImages(r *http.Request) (int, any, error) {
	q := r.URL.Query()
	sel, err := selectorFromQuery(q)
	if err != nil {
		return 0, nil, err
	}
	for _, t := range q["type"] {
		if t != "system" && t != "app" && t != "snapshot" && t != "backup" {
			return 0, nil, errInvalidField("type", "invalid image type "+strconv.Quote(t))
		}
	}
	includeDeprecated := q.Get("include_deprecated") == "true"
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Image
	for _, img := range c.images {
		boundTo := ""
		if img.BoundTo != 0 {
			boundTo = strconv.FormatInt(img.BoundTo, 10)
		}
		if matchAny(q, "type", img.Type) && matchAny(q, "status", img.Status) &&
			matchAny(q, "architecture", img.Architecture) && matchAny(q, "name", img.Name) &&
			matchAny(q, "bound_to", boundTo) && (includeDeprecated || img.Deprecated.IsZero()) &&
			sel.matches(img.Labels) {
			out = append(out, img)
		}
	}
	if err := sortItems(out, q["sort"], imageSort); err != nil {
		return 0, nil, err
	}
	return listResponse(q, "images", out, (*Image).schema)
}

// image returns the image of the {id} path value; c.mu must be held.
func (c *Cloud) image(r *http.Request) (*Image, error) {
	id, err := pathID(r, "image")
	if err != nil {
		return nil, err
	}
	img, ok := c.images[id]
	if !ok {
		return nil, errNotFound("image", r.PathValue("id"))
	}
	return img, nil
}

func (c *Cloud) getImage(r *http.Request) (int, any, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	img, err := c.image(r)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, schema.ImageGetResponse{Image: img.schema()}, nil
}

func (c *Cloud) updateImage(r *http.Request) (int, any, error) {
	var req schema.ImageUpdateRequest
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	if req.Type != nil && *req.Type != "snapshot" {
		return 0, nil, errInvalidField("type", "images can only be converted to snapshot")
	}
	if req.Labels != nil {
		if err := validateLabels(*req.Labels); err != nil {
			return 0, nil, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	img, err := c.image(r)
	if err != nil {
		return 0, nil, err
	}
	if img.Type == "system" {
		return 0, nil, &apiError{http.StatusForbidden, "forbidden", "system images cannot be modified", nil}
	}
	if req.Description != nil {
		img.Description = *req.Description
	}
	if req.Type != nil {
		// A backup converted to a snapshot outlives its server.
		img.Type, img.BoundTo = *req.Type, 0
	}
	if req.Labels != nil {
		img.Labels = cloneLabels(*req.Labels) // PUT replaces the whole label set
	}
	return http.StatusOK, schema.ImageUpdateResponse{Image: img.schema()}, nil
}

func (c *Cloud) deleteImage(r *http.Request) (int, any, error) {
	id, err := c.removeImage(r)
	if err != nil {
		return 0, nil, err
	}
	// The image is gone from the API; what Machines kept of it is storage
	// only, so a failure to drop it is no failure of the request.
	if err := c.machines.DeleteImage(id); err != nil {
		c.logger.Warn("drop the disk of a deleted image", "image", id, "err", err)
	}
	return http.StatusNoContent, nil, nil
}

// removeImage removes the image of the {id} path value and returns its ID.
func (c *Cloud) removeImage(r *http.Request) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	img, err := c.image(r)
	if err != nil {
		return 0, err
	}
	if img.Type == "system" {
		return 0, &apiError{http.StatusForbidden, "forbidden", "system images cannot be deleted", nil}
	}
	if c.busy[imageRef(img.ID)] > 0 {
		return 0, errLocked("image")
	}
	delete(c.images, img.ID)
	return img.ID, nil
}
