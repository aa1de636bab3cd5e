// Package fakeevents stands in for Amazon EventBridge's PutEvents: AWS's
// JSON 1.1 protocol (X-Amz-Target AWSEvents.PutEvents) on a loopback port,
// the entries checked as EventBridge checks them, and the events it accepts
// on the account's default bus recorded. Point aws-sdk-go-v2 at it with
// AWS_ENDPOINT_URL_EVENTBRIDGE. It answers nothing else: no rules, no
// targets, no other bus.
package fakeevents

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// EventBridge's limits (API Reference, PutEvents and "Calculating PutEvents
// event entry size"): 1 to 10 entries a request, their total size less
// than 256 KB. EventBridge raised the size to 1 MB in January 2026; the
// stand-in keeps the smaller one, which real EventBridge accepts either way.
// How EventBridge refuses a request beyond them is not documented: here
// with ValidationException.
// A detail type has at most 128 characters (PutEventsRequestEntry).
const (
	MaxEntries    = 10
	MaxEntrySize  = 256 * 1024
	MaxDetailType = 128
)

// DefaultBus is the account's default event bus, the only one here.
const DefaultBus = "default"

// Event is an event the bus accepted.
type Event struct {
	ID         string
	Time       time.Time
	Bus        string
	Source     string
	DetailType string
	Detail     json.RawMessage
	Resources  []string
}

// Bus records the events put on the default event bus.
type Bus struct {
	mu     sync.Mutex
	events []Event
	// refusal is the error code every entry fails with, "" none.
	refusal, refusalMsg string
	srv                 *http.Server
}

// New returns an empty bus.
func New() *Bus { return &Bus{} }

// Start serves on 127.0.0.1 with a random port and returns the URL.
func (b *Bus) Start() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	b.srv = &http.Server{Handler: b}
	go b.srv.Serve(ln)
	return "http://" + ln.Addr().String(), nil
}

// Close stops the server.
func (b *Bus) Close() error {
	if b.srv == nil {
		return nil
	}
	return b.srv.Close()
}

// Events returns the events accepted so far, oldest first.
func (b *Bus) Events() []Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Event(nil), b.events...)
}

// Refuse fails every entry from now on with code (InternalFailure and
// ThrottlingException are EventBridge's retryable entry errors), as the
// request itself succeeds; "" accepts entries again.
func (b *Bus) Refuse(code, message string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refusal, b.refusalMsg = code, message
}

// entry is a PutEventsRequestEntry as the JSON protocol sends it; Time is
// seconds since the epoch.
type entry struct {
	Source       string   `json:"Source"`
	DetailType   string   `json:"DetailType"`
	Detail       string   `json:"Detail"`
	EventBusName string   `json:"EventBusName"`
	Resources    []string `json:"Resources"`
	Time         *float64 `json:"Time"`
}

// size is the entry's size as EventBridge counts it.
func (e entry) size() int {
	n := len(e.Source) + len(e.DetailType) + len(e.Detail)
	if e.Time != nil {
		n += 14
	}
	for _, r := range e.Resources {
		n += len(r)
	}
	return n
}

type result struct {
	EventID      string `json:"EventId,omitempty"`
	ErrorCode    string `json:"ErrorCode,omitempty"`
	ErrorMessage string `json:"ErrorMessage,omitempty"`
}

func (b *Bus) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if target := r.Header.Get("X-Amz-Target"); target != "AWSEvents.PutEvents" {
		awsError(w, "UnknownOperationException", fmt.Sprintf("operation %q is not emulated", target))
		return
	}
	var in struct {
		Entries []entry `json:"Entries"`
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 4*MaxEntrySize))
	if r.Method != http.MethodPost || err != nil || json.Unmarshal(body, &in) != nil {
		awsError(w, "SerializationException", "expected a JSON POST")
		return
	}
	if n := len(in.Entries); n < 1 || n > MaxEntries {
		awsError(w, "ValidationException", fmt.Sprintf("1 validation error detected: Value at 'entries' failed to satisfy "+
			"constraint: Member must have length between 1 and %d (got %d)", MaxEntries, n))
		return
	}
	total, complete := 0, false
	for _, e := range in.Entries {
		total += e.size()
		complete = complete || e.Source != "" && e.DetailType != "" && e.Detail != ""
	}
	if !complete {
		awsError(w, "ValidationException", "no entry has Detail, DetailType and Source")
		return
	}
	if total >= MaxEntrySize {
		awsError(w, "ValidationException", fmt.Sprintf("Total size of the entries in the request is over the limit: %d bytes, "+
			"less than %d allowed", total, MaxEntrySize))
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	out := struct {
		FailedEntryCount int      `json:"FailedEntryCount"`
		Entries          []result `json:"Entries"`
	}{Entries: []result{}}
	for _, e := range in.Entries {
		res := b.put(e)
		if res.ErrorCode != "" {
			out.FailedEntryCount++
		}
		out.Entries = append(out.Entries, res)
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	json.NewEncoder(w).Encode(out)
}

// put checks one entry and records its event; b.mu must be held.
func (b *Bus) put(e entry) result {
	fail := func(code, msg string) result { return result{ErrorCode: code, ErrorMessage: msg} }
	for _, f := range []struct{ name, value string }{{"Source", e.Source}, {"DetailType", e.DetailType}, {"Detail", e.Detail}} {
		if f.value == "" {
			return fail("InvalidArgument", fmt.Sprintf("Parameter %s is not valid. Reason: %s is a required argument.", f.name, f.name))
		}
	}
	if n := utf8.RuneCountInString(e.DetailType); n > MaxDetailType {
		return fail("InvalidArgument", fmt.Sprintf("Parameter DetailType is not valid. Reason: %d characters, at most %d.", n, MaxDetailType))
	}
	// The detail is a JSON object (EventBridge User Guide, "Amazon
	// EventBridge events": detail is "a JSON object").
	var detail map[string]any
	if json.Unmarshal([]byte(e.Detail), &detail) != nil || detail == nil {
		return fail("MalformedDetail", "Detail is malformed.")
	}
	if bus := busName(e.EventBusName); bus != DefaultBus {
		return fail("ResourceNotFoundException", fmt.Sprintf("Event bus %s does not exist.", bus))
	}
	if b.refusal != "" {
		return fail(b.refusal, b.refusalMsg)
	}
	at := time.Now().UTC()
	if e.Time != nil {
		sec, frac := math.Modf(*e.Time)
		at = time.Unix(int64(sec), int64(frac*1e9)).UTC()
	}
	var compact bytes.Buffer
	json.Compact(&compact, []byte(e.Detail))
	ev := Event{ID: eventID(), Time: at, Bus: DefaultBus, Source: e.Source, DetailType: e.DetailType,
		Detail: compact.Bytes(), Resources: e.Resources}
	b.events = append(b.events, ev)
	return result{EventID: ev.ID}
}

// busName is the name of a bus given by name or ARN; none is the default.
func busName(s string) string {
	if s == "" {
		return DefaultBus
	}
	if i := strings.LastIndex(s, ":event-bus/"); strings.HasPrefix(s, "arn:") && i >= 0 {
		return s[i+len(":event-bus/"):]
	}
	return s
}

// eventID is a random UUID, the form of EventBridge's event IDs.
func eventID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func awsError(w http.ResponseWriter, typ, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-ErrorType", typ)
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(map[string]string{"__type": typ, "message": msg})
}
