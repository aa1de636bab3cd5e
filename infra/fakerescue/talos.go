package fakerescue

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/disk"
	"github.com/hcloud-k8s/hcloud-k8s/infra/faketalos"
)

// talosArch is the Talos architecture a server type's architecture boots.
var talosArch = map[string]string{"x86": "amd64", "arm": "arm64"}

// diskBoot is a machine booting from its disk: when the disk holds a Talos
// image of the machine's architecture, the Talos API comes up after the boot
// delay, in maintenance mode since the server has no user data.
type diskBoot struct {
	stop chan struct{} // closed by halt

	mu     sync.Mutex
	halted bool
	api    *faketalos.Server
}

// bootDisk starts booting m from its disk; m.mu must be held.
func (p *Pool) bootDisk(m *machine) *diskBoot {
	b := &diskBoot{stop: make(chan struct{})}
	p.mu.Lock()
	delay := p.talosBootDelay
	p.mu.Unlock()
	start, arch := time.Now(), m.arch
	p.boots.Add(1)
	go func() {
		defer p.boots.Done()
		opts, why := p.talosImage(m, arch)
		if b.stopped() {
			return
		}
		if why != "" {
			p.record(Event{Server: m.id, Kind: EventNoBoot, Detail: why})
			p.log.Info("disk does not boot", "id", m.id, "why", why)
			return
		}
		select {
		case <-b.stop:
			return
		case <-time.After(delay - time.Since(start)):
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.halted {
			return
		}
		api, err := faketalos.Start(opts)
		if err != nil {
			p.log.Error("talos api does not listen", "id", m.id, "err", err)
			return
		}
		b.api = api
		p.record(Event{Server: m.id, Kind: EventTalos, Detail: opts.Version + " " + opts.Addr})
		p.log.Info("talos api ready", "id", m.id, "version", opts.Version, "addr", opts.Addr)
	}()
	return b
}

// talosImage tells what the Talos API of a disk boot is, or why nothing
// boots.
func (p *Pool) talosImage(m *machine, arch string) (faketalos.Options, string) {
	switch {
	case p.opts.Identify == nil:
		return faketalos.Options{}, "no image is known to boot"
	case talosArch[arch] == "":
		return faketalos.Options{}, "machine was never provisioned: its architecture is unknown"
	}
	digest, err := disk.FileDigest(m.disk)
	if err != nil {
		return faketalos.Options{}, fmt.Sprintf("disk unreadable: %v", err)
	}
	version, imageArch, ok := p.opts.Identify(digest)
	switch {
	case !ok:
		return faketalos.Options{}, "disk " + digest + " holds no Talos image"
	case imageArch != talosArch[arch]:
		return faketalos.Options{}, fmt.Sprintf("Talos %s %s image on an %s machine", version, imageArch, arch)
	}
	addr := net.JoinHostPort(m.ip, strconv.Itoa(p.opts.TalosPort))
	return faketalos.Options{Addr: addr, Version: version, Arch: imageArch}, ""
}

// halt powers the boot off: a Talos API stops listening and drops its
// connections.
func (b *diskBoot) halt() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.halted {
		return
	}
	b.halted = true
	close(b.stop)
	if b.api != nil {
		b.api.Close()
	}
}

func (b *diskBoot) stopped() bool {
	select {
	case <-b.stop:
		return true
	default:
		return false
	}
}
