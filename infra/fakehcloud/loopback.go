package fakehcloud

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
)

// emptyDigest is disk.FileDigest of an empty disk: sha256 of nothing.
var emptyDigest = func() string {
	sum := sha256.Sum256(nil)
	return "sha256:" + hex.EncodeToString(sum[:])
}()

// loopbackMachines is the Machines of a cloud on its own: sequential
// loopback addresses 127.77.x.y, no disks, nothing to boot. Every snapshot
// is of an empty disk.
type loopbackMachines struct {
	mu    sync.Mutex
	next  int
	addrs map[int64]string
}

func newLoopbackMachines() *loopbackMachines {
	return &loopbackMachines{addrs: map[int64]string{}}
}

func (m *loopbackMachines) Create(id int64, _ int64) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.next >= 254*256 {
		return "", fmt.Errorf("create machine %d: loopback addresses exhausted", id)
	}
	// Skip .0 and .255 so every address looks like a host.
	ip := fmt.Sprintf("127.77.%d.%d", m.next/254, m.next%254+1)
	m.next++
	m.addrs[id] = ip
	return ip, nil
}

func (m *loopbackMachines) Provision(id int64, _ string, _ int64) error { return m.known(id) }

func (m *loopbackMachines) Boot(id int64, _ *Rescue) error { return m.known(id) }

func (m *loopbackMachines) Halt(id int64) error { return m.known(id) }

func (m *loopbackMachines) SaveImage(id, _ int64) (string, error) {
	if err := m.known(id); err != nil {
		return "", err
	}
	return emptyDigest, nil
}

func (m *loopbackMachines) CorruptImage(image int64) (string, error) {
	return "", fmt.Errorf("corrupt image %d: loopback machines keep no disks", image)
}

func (m *loopbackMachines) DeleteImage(int64) error { return nil }

func (m *loopbackMachines) Delete(id int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.addrs[id]; !ok {
		return fmt.Errorf("machine %d not found", id)
	}
	delete(m.addrs, id)
	return nil
}

func (m *loopbackMachines) known(id int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.addrs[id]; !ok {
		return fmt.Errorf("machine %d not found", id)
	}
	return nil
}
