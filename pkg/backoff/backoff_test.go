package backoff

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

const ms = time.Millisecond

func TestNext(t *testing.T) {
	for _, tt := range []struct {
		name string
		e    Exponential
		want []time.Duration
	}{
		{"ssh dial", Exponential{Initial: 100 * ms, Factor: 1.5, Max: 2 * time.Second}, []time.Duration{
			100 * ms, 150 * ms, 225 * ms, 337500 * time.Microsecond, 506250 * time.Microsecond,
			759375 * time.Microsecond, 1139062500, 1708593750, 2 * time.Second, 2 * time.Second}},
		{"snapshot wait", Exponential{Initial: 250 * ms, Factor: 1.5, Max: 10 * time.Second}, []time.Duration{
			250 * ms, 375 * ms, 562500 * time.Microsecond, 843750 * time.Microsecond, 1265625 * time.Microsecond,
			1898437500, 2847656250, 4271484375, 6407226562, 9610839843, 10 * time.Second, 10 * time.Second}},
		{"api retry", Exponential{Initial: time.Second, Factor: 2, Max: 16 * time.Second}, []time.Duration{
			time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 16 * time.Second}},
		{"initial above the cap", Exponential{Initial: time.Second, Factor: 2, Max: 300 * ms}, []time.Duration{
			300 * ms, 300 * ms}},
		{"constant", Exponential{Initial: 50 * ms, Factor: 1, Max: time.Second}, []time.Duration{50 * ms, 50 * ms, 50 * ms}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got []time.Duration
			for range tt.want {
				got = append(got, tt.e.Next())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("delays = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestNextAsIntegers: the delays are those of the loops the package
// replaced, which computed them in integers (d*3/2, 2*d).
func TestNextAsIntegers(t *testing.T) {
	for _, tt := range []struct {
		initial, max time.Duration
		factor       float64
		grow         func(time.Duration) time.Duration
	}{
		{100 * ms, 2 * time.Second, 1.5, func(d time.Duration) time.Duration { return d * 3 / 2 }},
		{250 * ms, 10 * time.Second, 1.5, func(d time.Duration) time.Duration { return d * 3 / 2 }},
		{7 * ms, 16 * 7 * ms, 2, func(d time.Duration) time.Duration { return 2 * d }},
	} {
		e := Exponential{Initial: tt.initial, Factor: tt.factor, Max: tt.max}
		want := tt.initial
		for i := range 30 {
			if got := e.Next(); got != want {
				t.Fatalf("%v ×%v up to %v: delay %d = %v, want %v", tt.initial, tt.factor, tt.max, i, got, want)
			}
			want = min(tt.grow(want), tt.max)
		}
	}
}

func TestWait(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tt := range []struct {
		name    string
		ctx     func(t *testing.T) context.Context
		initial time.Duration
		want    error
		atLeast time.Duration
		atMost  time.Duration
	}{
		{"waits the delay", func(*testing.T) context.Context { return context.Background() }, 50 * ms, nil, 50 * ms, 5 * time.Second},
		{"ends with a canceled context", func(*testing.T) context.Context { return canceled }, time.Hour,
			context.Canceled, 0, 5 * time.Second},
		{"ends at the deadline", func(t *testing.T) context.Context {
			ctx, cancel := context.WithTimeout(context.Background(), 50*ms)
			t.Cleanup(cancel)
			return ctx
		}, time.Hour, context.DeadlineExceeded, 50 * ms, 5 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := Exponential{Initial: tt.initial, Factor: 2, Max: time.Hour}
			start := time.Now() // before the context, whose deadline counts from its making
			ctx := tt.ctx(t)
			err := e.Wait(ctx)
			took := time.Since(start)
			if !errors.Is(err, tt.want) { // errors.Is(err, nil) is err == nil
				t.Errorf("Wait = %v, want %v", err, tt.want)
			}
			if took < tt.atLeast || took > tt.atMost {
				t.Errorf("Wait took %v, want between %v and %v", took, tt.atLeast, tt.atMost)
			}
			if next, want := e.Next(), min(2*tt.initial, time.Hour); next != want {
				t.Errorf("after one wait the next delay is %v, want %v", next, want)
			}
		})
	}
}
