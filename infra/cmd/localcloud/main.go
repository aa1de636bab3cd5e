// Command localcloud runs the local world (Hetzner Cloud API with rescue
// hosts, Talos Image Factory, GitHub releases) until interrupted and prints
// the environment that points the functions at it:
//
//	go run ./infra/cmd/localcloud > /tmp/local.env &   # needs root
//	. /tmp/local.env && go run ./functions/builder -version v1.13.9
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"time"

	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
)

func main() {
	boot := flag.Duration("boot-delay", 2*time.Second, "time a rescue system takes to accept SSH")
	action := flag.Duration("action", 300*time.Millisecond, "time a Hetzner action takes")
	verbose := flag.Bool("v", false, "log the emulators' activity to stderr")
	flag.Parse()
	logger := slog.New(slog.DiscardHandler)
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	st, err := stack.Start(stack.Options{BootDelay: *boot, ActionDuration: *action, Logger: logger})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start local cloud:", err)
		os.Exit(1)
	}
	defer st.Close()
	env := st.Env()
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("export %s=%q\n", k, env[k])
	}
	fmt.Fprintln(os.Stderr, "local cloud running; Ctrl-C to stop")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
}
