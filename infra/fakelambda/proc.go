package fakelambda

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// reapTimeout bounds the wait for RIE to reap its killed runtime.
const reapTimeout = 200 * time.Millisecond

// procInfo is what /proc/<pid>/stat tells about one process.
type procInfo struct {
	pid, ppid, pgid int
	state           byte
}

// readProc parses /proc/<pid>/stat. The command name may contain spaces and
// parentheses, so fields are counted from the last ')'.
func readProc(pid int) (procInfo, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procInfo{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat: no command field", pid)
	}
	f := bytes.Fields(b[i+1:]) // state ppid pgrp ...
	if len(f) < 3 || len(f[0]) != 1 {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat: short record", pid)
	}
	ppid, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat ppid: %w", pid, err)
	}
	pgid, err := strconv.Atoi(string(f[2]))
	if err != nil {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat pgrp: %w", pid, err)
	}
	return procInfo{pid: pid, ppid: ppid, pgid: pgid, state: f[0][0]}, nil
}

// descendants lists every live process below root. RIE starts the runtime in
// a process group of its own, so killing RIE's group alone would leave the
// function running.
func descendants(root int) []procInfo {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]procInfo{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := readProc(pid)
		if err != nil {
			continue // exited meanwhile
		}
		children[p.ppid] = append(children[p.ppid], p)
	}
	var out []procInfo
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			out = append(out, c)
			queue = append(queue, c.pid)
		}
	}
	return out
}

// killTree SIGKILLs the processes below leader (a process this package
// started with Setpgid), their process groups, and then leader's group. It
// never signals the caller's own group.
func killTree(leader int) {
	own := syscall.Getpgrp()
	desc := descendants(leader) // before any kill: orphans get reparented
	for _, p := range desc {
		signalGroup(p.pgid, own)
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
	// Give RIE a moment to reap its runtime: once RIE is gone too, the dead
	// runtime would be left to an init that may never reap zombies.
	deadline := time.Now().Add(reapTimeout)
	for !reaped(desc, leader) && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	signalGroup(leader, own)
}

// reaped reports whether none of procs is still a child of parent.
func reaped(procs []procInfo, parent int) bool {
	for _, p := range procs {
		if cur, err := readProc(p.pid); err == nil && cur.ppid == parent {
			return false
		}
	}
	return true
}

func signalGroup(pgid, own int) {
	if pgid <= 1 || pgid == own {
		return
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}
