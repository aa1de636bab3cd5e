package fakeevents

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/smithy-go"
)

func start(t *testing.T) (*Bus, *eventbridge.Client) {
	t.Helper()
	b := New()
	url, err := b.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, eventbridge.New(eventbridge.Options{
		Region: "eu-central-1", BaseEndpoint: aws.String(url),
		Credentials: credentials.NewStaticCredentialsProvider("local", "local", ""),
	})
}

func valid() types.PutEventsRequestEntry {
	return types.PutEventsRequestEntry{Source: aws.String("hcloud-k8s"), DetailType: aws.String("Talos Snapshot Available"),
		Detail: aws.String(`{"version": "v1.13.9"}`)}
}

// TestPutEvents: entries are checked one by one as EventBridge checks them;
// the request succeeds, a refused entry has an error code and is counted,
// and only the accepted ones are recorded, each with its own ID.
func TestPutEvents(t *testing.T) {
	with := func(f func(e *types.PutEventsRequestEntry)) types.PutEventsRequestEntry {
		e := valid()
		f(&e)
		return e
	}
	for _, tt := range []struct {
		name  string
		entry types.PutEventsRequestEntry
		code  string // "" accepted
	}{
		{"valid", valid(), ""},
		{"default bus by name", with(func(e *types.PutEventsRequestEntry) { e.EventBusName = aws.String("default") }), ""},
		{"default bus by ARN", with(func(e *types.PutEventsRequestEntry) {
			e.EventBusName = aws.String("arn:aws:events:eu-central-1:123456789012:event-bus/default")
		}), ""},
		{"with time and resources", with(func(e *types.PutEventsRequestEntry) {
			e.Time, e.Resources = aws.Time(time.Unix(1767225600, 0)), []string{"arn:aws:s3:::bucket"}
		}), ""},
		{"no source", with(func(e *types.PutEventsRequestEntry) { e.Source = nil }), "InvalidArgument"},
		{"no detail type", with(func(e *types.PutEventsRequestEntry) { e.DetailType = aws.String("") }), "InvalidArgument"},
		{"no detail", with(func(e *types.PutEventsRequestEntry) { e.Detail = nil }), "InvalidArgument"},
		{"detail type of 128 characters", with(func(e *types.PutEventsRequestEntry) { e.DetailType = aws.String(strings.Repeat("ü", 128)) }), ""},
		{"detail type of 129 characters", with(func(e *types.PutEventsRequestEntry) { e.DetailType = aws.String(strings.Repeat("a", 129)) }), "InvalidArgument"},
		{"detail not JSON", with(func(e *types.PutEventsRequestEntry) { e.Detail = aws.String(`{"version":`) }), "MalformedDetail"},
		{"detail not an object", with(func(e *types.PutEventsRequestEntry) { e.Detail = aws.String(`["v1.13.9"]`) }), "MalformedDetail"},
		{"detail null", with(func(e *types.PutEventsRequestEntry) { e.Detail = aws.String(`null`) }), "MalformedDetail"},
		{"another bus", with(func(e *types.PutEventsRequestEntry) { e.EventBusName = aws.String("builds") }), "ResourceNotFoundException"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// Behind a valid entry: a request of no complete entry fails
			// as a whole (TestPutEventsLimits).
			b, c := start(t)
			out, err := c.PutEvents(context.Background(), &eventbridge.PutEventsInput{Entries: []types.PutEventsRequestEntry{valid(), tt.entry}})
			if err != nil {
				t.Fatal(err)
			}
			if len(out.Entries) != 2 || out.Entries[0].EventId == nil {
				t.Fatalf("result entries %+v, want 2, the first accepted", out.Entries)
			}
			res, events := out.Entries[1], b.Events()
			if got := aws.ToString(res.ErrorCode); got != tt.code {
				t.Fatalf("error code %q (%s), want %q", got, aws.ToString(res.ErrorMessage), tt.code)
			}
			if tt.code != "" {
				if out.FailedEntryCount != 1 || res.EventId != nil || len(events) != 1 {
					t.Errorf("refused entry: %d failed, event id %v, %d events recorded", out.FailedEntryCount, res.EventId, len(events))
				}
				return
			}
			if out.FailedEntryCount != 0 || len(events) != 2 || events[1].ID != aws.ToString(res.EventId) || len(events[1].ID) != 36 ||
				events[0].ID == events[1].ID {
				t.Fatalf("accepted entry: %d failed, id %v, events %+v", out.FailedEntryCount, res.EventId, events)
			}
			ev := events[1]
			if ev.Bus != "default" || ev.Source != "hcloud-k8s" || ev.DetailType != aws.ToString(tt.entry.DetailType) ||
				string(ev.Detail) != `{"version":"v1.13.9"}` {
				t.Errorf("event %+v", ev)
			}
			if tt.entry.Time != nil && !ev.Time.Equal(*tt.entry.Time) {
				t.Errorf("event time %s, want the entry's %s", ev.Time, *tt.entry.Time)
			}
		})
	}
}

// TestPutEventsLimits: more than ten entries, entries of 256 KB and more,
// or none that has a source, detail type and detail fail the whole
// request; within the limits each entry is judged.
func TestPutEventsLimits(t *testing.T) {
	big := func(n int) types.PutEventsRequestEntry {
		e := valid()
		pad := n - len("hcloud-k8s") - len("Talos Snapshot Available") - len(`{"p":""}`)
		e.Detail = aws.String(`{"p":"` + strings.Repeat("x", pad) + `"}`)
		return e
	}
	mixed := []types.PutEventsRequestEntry{valid(), {Source: aws.String("hcloud-k8s")}, valid()}
	for _, tt := range []struct {
		name    string
		entries []types.PutEventsRequestEntry
		err     string // the request's error code; "" none
		failed  int32
	}{
		{"ten entries", repeat(valid(), 10), "", 0},
		{"eleven entries", repeat(valid(), 11), "ValidationException", 0},
		{"no entries", []types.PutEventsRequestEntry{}, "ValidationException", 0},
		{"just under 256 KB", []types.PutEventsRequestEntry{big(MaxEntrySize - 1)}, "", 0},
		{"256 KB", []types.PutEventsRequestEntry{big(MaxEntrySize)}, "ValidationException", 0},
		{"256 KB in two", []types.PutEventsRequestEntry{big(MaxEntrySize / 2), big(MaxEntrySize / 2)}, "ValidationException", 0},
		{"one bad among good", mixed, "", 1},
		{"none complete", mixed[1:2], "ValidationException", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, c := start(t)
			out, err := c.PutEvents(context.Background(), &eventbridge.PutEventsInput{Entries: tt.entries})
			var apiErr smithy.APIError
			switch {
			case tt.err != "":
				if !errors.As(err, &apiErr) || apiErr.ErrorCode() != tt.err {
					t.Fatalf("error %v, want %s", err, tt.err)
				}
				if n := len(b.Events()); n != 0 {
					t.Errorf("%d events recorded from a refused request", n)
				}
			case err != nil:
				t.Fatal(err)
			default:
				if out.FailedEntryCount != tt.failed || len(out.Entries) != len(tt.entries) ||
					len(b.Events()) != len(tt.entries)-int(tt.failed) {
					t.Errorf("%d failed of %d results, %d events; want %d failed of %d", out.FailedEntryCount, len(out.Entries),
						len(b.Events()), tt.failed, len(tt.entries))
				}
			}
		})
	}
}

// TestRefuse: an injected entry error fails every entry, the request
// still succeeding, until it is cleared.
func TestRefuse(t *testing.T) {
	b, c := start(t)
	b.Refuse("ThrottlingException", "Rate exceeded")
	put := func() *eventbridge.PutEventsOutput {
		out, err := c.PutEvents(context.Background(), &eventbridge.PutEventsInput{Entries: []types.PutEventsRequestEntry{valid()}})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if out := put(); out.FailedEntryCount != 1 || aws.ToString(out.Entries[0].ErrorCode) != "ThrottlingException" || len(b.Events()) != 0 {
		t.Errorf("refusing: %d failed, code %v, %d events", out.FailedEntryCount, aws.ToString(out.Entries[0].ErrorCode), len(b.Events()))
	}
	b.Refuse("", "")
	if out := put(); out.FailedEntryCount != 0 || len(b.Events()) != 1 {
		t.Errorf("accepting again: %d failed, %d events", out.FailedEntryCount, len(b.Events()))
	}
}

func TestOtherOperations(t *testing.T) {
	_, c := start(t)
	_, err := c.ListEventBuses(context.Background(), &eventbridge.ListEventBusesInput{})
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode() != "UnknownOperationException" {
		t.Errorf("ListEventBuses: %v, want UnknownOperationException", err)
	}
}

func repeat(e types.PutEventsRequestEntry, n int) []types.PutEventsRequestEntry {
	out := make([]types.PutEventsRequestEntry, n)
	for i := range out {
		out[i] = e
	}
	return out
}
