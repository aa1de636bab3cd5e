package fakerescue

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hcloud-k8s/hcloud-k8s/infra/disk"
)

// Provision prepares server id's disk as Hetzner's create_server action
// does: the disk takes the content of image if the pool saved that image
// (SaveImage), and the machine takes the server type's architecture (x86,
// arm), which decides what its disk boots. For any other image (system
// images, snapshots added without content) the disk stays as Create made
// it. A machine never provisioned boots nothing from its disk.
func (p *Pool) Provision(id int64, arch string, image int64) error {
	if arch != "x86" && arch != "arm" {
		return fmt.Errorf("provision machine %d: architecture %q is not x86 or arm", id, arch)
	}
	m, err := p.machine(id)
	if err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	p.mu.Lock()
	src, saved := p.images[image]
	p.mu.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.arch = arch
	if !saved {
		return nil
	}
	if _, err := disk.Copy(m.disk, src, p.opts.DiskSize); err != nil {
		return fmt.Errorf("provision machine %d from image %d: %w", id, image, err)
	}
	p.record(Event{Server: id, Kind: EventProvision, Detail: fmt.Sprintf("image %d", image)})
	return nil
}

// SaveImage keeps the content of server id's disk as image's, for servers
// that Provision creates from it later, and returns its disk.FileDigest. As
// on Hetzner, a running server's disk is copied as it is at that moment.
func (p *Pool) SaveImage(id, image int64) (string, error) {
	m, err := p.machine(id)
	if err != nil {
		return "", fmt.Errorf("save image: %w", err)
	}
	path := filepath.Join(p.dir, fmt.Sprintf("image-%d.disk", image))
	m.mu.Lock()
	digest, err := disk.Copy(path, m.disk, p.opts.DiskSize)
	m.mu.Unlock()
	if err != nil {
		os.Remove(path)
		return "", fmt.Errorf("save image %d of machine %d: %w", image, id, err)
	}
	p.mu.Lock()
	p.images[image] = path
	p.mu.Unlock()
	return digest, nil
}

// corruptBytes is how much of a saved image CorruptImage overwrites: the
// protective MBR and the primary GPT header.
const corruptBytes = 2 * 512

// CorruptImage overwrites the start of image's saved disk (its protective
// MBR and GPT header) with random bytes, as a damaged snapshot: a server
// created from it finds nothing to boot. It returns the new digest.
func (p *Pool) CorruptImage(image int64) (string, error) {
	p.mu.Lock()
	path, ok := p.images[image]
	p.mu.Unlock()
	if !ok {
		return "", fmt.Errorf("corrupt image %d: no saved disk", image)
	}
	garbage := make([]byte, corruptBytes)
	rand.Read(garbage)
	if err := writeAt(path, garbage, 0); err != nil {
		return "", fmt.Errorf("corrupt image %d: %w", image, err)
	}
	return disk.FileDigest(path)
}

// DeleteImage drops image's saved disk; an image the pool never saved is no
// error.
func (p *Pool) DeleteImage(image int64) error {
	p.mu.Lock()
	path, ok := p.images[image]
	delete(p.images, image)
	p.mu.Unlock()
	if !ok {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete image %d: %w", image, err)
	}
	return nil
}

// writeAt writes b at off of the existing file path.
func writeAt(path string, b []byte, off int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(b, off); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
