package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// RunMake runs make with args in the module's root, as a user would type it
// (see Run), and returns stdout, stderr and make's exit status.
func RunMake(ctx context.Context, env map[string]string, args ...string) (stdout, stderr string, exit int, err error) {
	return Run(ctx, env, "make", append([]string{"-s", "--no-print-directory"}, args...)...)
}

// Run runs name (a command, or a script by its path in the module such as
// scripts/invoke) with args in the module's root, as a user would type it:
// with this process's environment less whatever points at a cloud or a
// function (AWS_*, HCLOUD_*, GITHUB_*, BUILDER_FUNCTION_NAME) and less what a
// calling make passes on (MAKEFLAGS: make test runs these tests), plus env.
// It returns stdout, stderr and the exit status; err only when the command
// could not run to its end.
func Run(ctx context.Context, env map[string]string, name string, args ...string) (stdout, stderr string, exit int, err error) {
	root, err := moduleRoot()
	if err != nil {
		return "", "", 0, err
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = root
	for _, kv := range os.Environ() {
		if !hasAnyPrefix(kv, "AWS_", "HCLOUD_", "GITHUB_", "BUILDER_FUNCTION_NAME=", "MAKE", "MFLAGS=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	// SIGTERM lets scripts/invoke stop the emulator it started.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return out.String(), errOut.String(), ee.ExitCode(), nil
	case err != nil:
		return out.String(), errOut.String(), 0, fmt.Errorf("%s %v: %w", name, args, err)
	}
	return out.String(), errOut.String(), 0, nil
}

func hasAnyPrefix(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
