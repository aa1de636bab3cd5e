package fakelambda

import (
	"context"
	"sync"
	"time"
)

// pool holds the RIE processes of one function. A slot is one concurrent
// execution; an invocation takes a slot (or waits), then an idle instance or
// a freshly started one.
type pool struct {
	start startOptions
	slots chan struct{}

	mu     sync.Mutex
	idle   []*instance
	all    map[*instance]struct{}
	closed bool
}

func newPool(o startOptions) *pool {
	return &pool{
		start: o,
		slots: make(chan struct{}, o.fn.poolSize),
		all:   map[*instance]struct{}{},
	}
}

// acquire returns an instance reserved for one invocation; release it.
func (p *pool) acquire(ctx context.Context) (*instance, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			<-p.slots
			return nil, errClosed
		}
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			break
		}
		inst := p.idle[n-1]
		p.idle = p.idle[:n-1]
		if !inst.dead() {
			p.mu.Unlock()
			return inst, nil
		}
		delete(p.all, inst) // RIE died while idle
		p.mu.Unlock()
		inst.stop()
	}

	inst, err := startInstance(ctx, p.start)
	if err != nil {
		<-p.slots
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		inst.stop()
		<-p.slots
		return nil, errClosed
	}
	p.all[inst] = struct{}{}
	return inst, nil
}

// release returns inst to the pool, or ends it when it may not serve again.
func (p *pool) release(inst *instance, reusable bool) {
	p.mu.Lock()
	if reusable && !p.closed && !inst.dead() {
		p.idle = append(p.idle, inst)
		inst = nil
	} else {
		delete(p.all, inst)
	}
	p.mu.Unlock()
	if inst != nil {
		inst.stop()
	}
	<-p.slots
}

// kill kills the instances serving an invocation and reports how many.
func (p *pool) kill() int {
	p.mu.Lock()
	insts := make([]*instance, 0, len(p.all))
	for inst := range p.all {
		insts = append(insts, inst)
	}
	p.mu.Unlock()
	n := 0
	for _, inst := range insts {
		if inst.kill(true) {
			n++
		}
	}
	return n
}

// close kills every instance and waits, bounded, until they are gone.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	insts := make([]*instance, 0, len(p.all))
	for inst := range p.all {
		insts = append(insts, inst)
	}
	p.idle = nil
	p.mu.Unlock()
	for _, inst := range insts {
		inst.kill(false)
	}
	timeout := time.After(drainTimeout)
	for _, inst := range insts {
		select {
		case <-inst.exited:
		case <-timeout:
			p.start.log.Warn("rie did not exit", "function", p.start.fn.name)
			return
		}
	}
}
