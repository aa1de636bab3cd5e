package fakerescue

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
)

// claimed holds the addresses handed out by all pools of this process: a
// claimed address does not listen before its machine boots, so the probe
// alone would not see it.
var claimed = struct {
	sync.Mutex
	addrs map[string]bool
}{addrs: make(map[string]bool)}

// claimAddr picks a random loopback address 127.R.S.T outside 127.0.0.0/16
// whose ports are free. Random picks keep pools of different processes (test
// binaries running in parallel) apart; the probe catches the rare collision.
func claimAddr(ports ...int) (string, error) {
	claimed.Lock()
	defer claimed.Unlock()
	for range 100 {
		ip := net.IPv4(127, byte(1+rand.IntN(255)), byte(rand.IntN(256)), byte(1+rand.IntN(254))).String()
		if claimed.addrs[ip] {
			continue
		}
		free, err := portsFree(ip, ports)
		if err != nil {
			return "", err
		}
		if free {
			claimed.addrs[ip] = true
			return ip, nil
		}
	}
	return "", fmt.Errorf("no free loopback address for ports %v (does something listen on 0.0.0.0 there?)", ports)
}

// portsFree reports whether each of ports can be listened on at ip.
func portsFree(ip string, ports []int) (bool, error) {
	for _, port := range ports {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
		if err != nil {
			return false, nil
		}
		if err := ln.Close(); err != nil {
			return false, fmt.Errorf("probe %s: %w", ip, err)
		}
	}
	return true, nil
}

func releaseAddr(ip string) {
	claimed.Lock()
	delete(claimed.addrs, ip)
	claimed.Unlock()
}
