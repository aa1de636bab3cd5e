package fakerescue

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// serverVersion is what Hetzner's Debian-based rescue system announces.
const serverVersion = "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"

// handshakeTimeout bounds the SSH handshake of a connection.
const handshakeTimeout = 10 * time.Second

// host is the rescue system of one boot: its namespace and its SSH server.
type host struct {
	pool *Pool
	m    *machine
	addr string
	ns   *namespace
	cfg  *ssh.ServerConfig

	mu      sync.Mutex
	stopped bool
	timer   *time.Timer
	ln      net.Listener
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup // listener, connections and sessions
}

// newHost builds the namespace of a rescue boot and an SSH server config
// with a fresh host key that accepts root with one of keys.
func (p *Pool) newHost(m *machine, keys []string) (*host, error) {
	authorized := make(map[string]bool)
	for _, k := range keys {
		pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k))
		if err != nil {
			return nil, fmt.Errorf("authorized key %q: %w", k, err)
		}
		authorized[string(pk.Marshal())] = true
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	ns, err := newNamespace(p.env, m.disk, m.bin)
	if err != nil {
		return nil, err
	}
	h := &host{pool: p, m: m, addr: m.addr(p.opts.Port), ns: ns, conns: make(map[net.Conn]struct{})}
	h.cfg = &ssh.ServerConfig{
		ServerVersion: serverVersion,
		PublicKeyCallback: func(c ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			fp := ssh.FingerprintSHA256(key)
			if c.User() != "root" || !authorized[string(key.Marshal())] {
				p.record(Event{Server: m.id, Kind: EventAuthFailed, Detail: c.User() + " " + fp})
				return nil, fmt.Errorf("key %s not authorized for %s", fp, c.User())
			}
			p.record(Event{Server: m.id, Kind: EventLogin, Detail: fp})
			return &ssh.Permissions{}, nil
		},
	}
	h.cfg.AddHostKey(signer)
	return h, nil
}

// start makes SSH listen after delay.
func (h *host) start(delay time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.timer = time.AfterFunc(max(delay, 0), h.listen)
}

func (h *host) listen() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return
	}
	ln, err := net.Listen("tcp", h.addr)
	if err != nil {
		h.pool.log.Error("rescue ssh does not listen", "id", h.m.id, "err", err)
		return
	}
	h.ln = ln
	h.wg.Add(1)
	go h.serve(ln)
	h.pool.record(Event{Server: h.m.id, Kind: EventReady, Detail: h.addr})
	h.pool.log.Info("rescue ssh ready", "id", h.m.id, "addr", h.addr)
}

func (h *host) serve(ln net.Listener) {
	defer h.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed by stop
		}
		h.mu.Lock()
		if h.stopped {
			h.mu.Unlock()
			c.Close()
			return
		}
		h.conns[c] = struct{}{}
		h.wg.Add(1)
		h.mu.Unlock()
		go h.handleConn(c)
	}
}

// stop closes the listener and the connections and kills every process of
// the boot; it returns when all of them have ended.
func (h *host) stop() {
	h.mu.Lock()
	h.stopped = true
	if h.timer != nil {
		h.timer.Stop()
	}
	if h.ln != nil {
		h.ln.Close()
	}
	for c := range h.conns {
		c.Close()
	}
	h.mu.Unlock()
	h.ns.close()
	h.wg.Wait()
}

func (h *host) dropConns() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.conns {
		c.Close()
	}
	return len(h.conns)
}

func (h *host) handleConn(c net.Conn) {
	defer h.wg.Done()
	defer func() {
		c.Close()
		h.mu.Lock()
		delete(h.conns, c)
		h.mu.Unlock()
	}()
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(c, h.cfg)
	if err != nil {
		h.pool.log.Debug("ssh handshake", "id", h.m.id, "err", err)
		return
	}
	c.SetDeadline(time.Time{})
	// Global requests, keepalive@openssh.com among them, get the failure
	// reply OpenSSH gives to requests it does not know; any reply keeps the
	// client's keepalive happy.
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "only session channels")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		// The connection's count in wg is held, so Add is safe here.
		h.wg.Add(1)
		go h.session(sc, ch, creqs)
	}
}

// exitInfo is how a session's command ended.
type exitInfo struct {
	status int            // exit status, if signal is 0
	signal syscall.Signal // killing signal, or 0
}

// session serves one session channel: one exec or shell request, then the
// command's exit status.
func (h *host) session(sc *ssh.ServerConn, ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer h.wg.Done()
	defer func() {
		ch.Close()
		go ssh.DiscardRequests(reqs) // until the client closes its side
	}()
	var done <-chan exitInfo
	for {
		select {
		case req, ok := <-reqs:
			if !ok {
				if done != nil {
					// Like sshd, a client that goes away does not kill its
					// command; the boot's end does. Wait for it.
					<-done
				}
				return
			}
			switch req.Type {
			case "exec", "shell":
				if done != nil {
					req.Reply(false, nil)
					continue
				}
				var args []string
				if req.Type == "exec" {
					var p struct{ Command string }
					if err := ssh.Unmarshal(req.Payload, &p); err != nil {
						req.Reply(false, nil)
						continue
					}
					args = []string{"-c", p.Command}
				}
				d, err := h.run(sc, ch, args)
				req.Reply(err == nil, nil)
				if err != nil {
					h.pool.log.Warn("rescue command did not start", "id", h.m.id, "err", err)
					return
				}
				done = d
			default:
				// No pty, env, subsystems (sftp) or signals. Channel
				// keepalive@openssh.com gets the failure reply OpenSSH gives.
				if req.WantReply {
					req.Reply(false, nil)
				}
			}
		case e := <-done:
			ch.CloseWrite()
			if e.signal != 0 {
				if name, ok := signalNames[e.signal]; ok {
					ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
						Signal     string
						CoreDumped bool
						Error      string
						Lang       string
					}{Signal: name}))
					return
				}
				e.status = 128 + int(e.signal)
			}
			ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(e.status)}))
			return
		}
	}
}

// signalNames are the signal names of RFC 4254, section 6.10.
var signalNames = map[syscall.Signal]string{
	syscall.SIGABRT: "ABRT", syscall.SIGALRM: "ALRM", syscall.SIGFPE: "FPE",
	syscall.SIGHUP: "HUP", syscall.SIGILL: "ILL", syscall.SIGINT: "INT",
	syscall.SIGKILL: "KILL", syscall.SIGPIPE: "PIPE", syscall.SIGQUIT: "QUIT",
	syscall.SIGSEGV: "SEGV", syscall.SIGTERM: "TERM", syscall.SIGUSR1: "USR1",
	syscall.SIGUSR2: "USR2",
}

// run starts the login shell with args in the namespace, wired to the
// channel, and returns a channel that reports how it ended once its output
// is drained.
func (h *host) run(sc *ssh.ServerConn, ch ssh.Channel, args []string) (<-chan exitInfo, error) {
	cmd := h.ns.command(h.pool.env, h.pool.opts.Shell, args...)
	cmd.Env = []string{
		"PATH=" + h.pool.sessionPath(),
		"HOME=/root", "USER=root", "LOGNAME=root", "SHELL=" + h.pool.opts.Shell,
		"SSH_CONNECTION=" + sshConnection(sc),
	}
	cmd.Stdout = ch
	cmd.Stderr = ch.Stderr()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("stdin: %w", err)
	}
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		return nil, errors.New("machine is going down")
	}
	err = cmd.Start()
	h.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("start command: %w", err)
	}
	command := ""
	if len(args) == 2 {
		command = args[1]
	}
	h.pool.record(Event{Server: h.m.id, Kind: EventExec, Detail: command})

	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		io.Copy(stdin, ch) // until the client's EOF or the channel's close
		stdin.Close()
	}()
	done := make(chan exitInfo, 1)
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		// A write error (the client went away) still leaves ProcessState.
		err := cmd.Wait()
		var e exitInfo
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.signal = ws.Signal()
		} else {
			e.status = cmd.ProcessState.ExitCode()
		}
		var exitErr *exec.ExitError
		if err != nil && !errors.As(err, &exitErr) {
			h.pool.log.Debug("rescue command output", "id", h.m.id, "err", err)
		}
		status := e.status
		if e.signal != 0 {
			status = -1
		}
		h.pool.record(Event{Server: h.m.id, Kind: EventExit, Detail: command, Status: status})
		h.pool.keepDiskSize(h.m.id, h.m.disk)
		done <- e
	}()
	return done, nil
}

// sshConnection is the SSH_CONNECTION value: client address and port,
// server address and port.
func sshConnection(sc *ssh.ServerConn) string {
	r, _ := sc.RemoteAddr().(*net.TCPAddr)
	l, _ := sc.LocalAddr().(*net.TCPAddr)
	if r == nil || l == nil {
		return ""
	}
	return fmt.Sprintf("%s %d %s %d", r.IP, r.Port, l.IP, l.Port)
}
