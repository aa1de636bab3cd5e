package function

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestLocalRun(t *testing.T) {
	for _, tt := range []struct {
		runtimeAPI, samLocal string
		want                 bool
	}{
		{"127.0.0.1:9001", "true", true},
		{"127.0.0.1:9001", "", false},
		{"127.0.0.1:9001", "false", false},
		{"", "true", false}, // the command line is no Lambda run at all
	} {
		t.Setenv("AWS_LAMBDA_RUNTIME_API", tt.runtimeAPI)
		t.Setenv("AWS_SAM_LOCAL", tt.samLocal)
		if got := LocalRun(); got != tt.want {
			t.Errorf("AWS_LAMBDA_RUNTIME_API=%q AWS_SAM_LOCAL=%q: LocalRun() = %v, want %v", tt.runtimeAPI, tt.samLocal, got, tt.want)
		}
	}
}

type key struct{}

func TestWithoutDeadline(t *testing.T) {
	t.Run("ends margin before the deadline", func(t *testing.T) {
		parent, cancel := context.WithTimeout(context.WithValue(context.Background(), key{}, "request"), 400*time.Millisecond)
		defer cancel()
		deadline, _ := parent.Deadline()
		ctx, stop := WithoutDeadline(parent, 300*time.Millisecond)
		defer stop()
		if _, ok := ctx.Deadline(); ok {
			t.Error("the context reports a deadline")
		}
		if ctx.Value(key{}) != "request" {
			t.Error("the context lost the parent's values")
		}
		<-ctx.Done()
		if left := time.Until(deadline); left < 200*time.Millisecond {
			t.Errorf("ended %v before the deadline, want about the margin (300ms)", left)
		}
		if !errors.Is(context.Cause(ctx), ErrLocalTimeUp) || parent.Err() != nil {
			t.Errorf("cause %v, parent %v; want ErrLocalTimeUp before the parent ends", context.Cause(ctx), parent.Err())
		}
	})
	t.Run("ends with its parent", func(t *testing.T) {
		parent, cancel := context.WithCancelCause(context.Background())
		ctx, stop := WithoutDeadline(parent, time.Second)
		defer stop()
		boom := errors.New("signal")
		cancel(boom)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
			t.Fatal("not canceled with its parent")
		}
		if !errors.Is(context.Cause(ctx), boom) {
			t.Errorf("cause %v, want the parent's", context.Cause(ctx))
		}
	})
}
