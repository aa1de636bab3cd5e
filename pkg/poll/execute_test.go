package poll

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/label"
)

// fakeDeleter records deletions in order and fails those in fail.
type fakeDeleter struct {
	calls []string
	fail  map[string]error
}

func (f *fakeDeleter) do(call string) error {
	f.calls = append(f.calls, call)
	return f.fail[call]
}

func (f *fakeDeleter) DeleteServer(_ context.Context, s *hcloud.Server) error {
	return f.do(fmt.Sprintf("server %d %s", s.ID, s.Name))
}
func (f *fakeDeleter) DeleteImage(_ context.Context, img *hcloud.Image) error {
	return f.do(fmt.Sprintf("image %d", img.ID))
}
func (f *fakeDeleter) DeleteSSHKey(_ context.Context, k *hcloud.SSHKey) error {
	return f.do(fmt.Sprintf("key %d %s", k.ID, k.Name))
}
func (f *fakeDeleter) SetImageLabels(_ context.Context, img *hcloud.Image, l map[string]string) error {
	return f.do(fmt.Sprintf("label image %d %d", img.ID, len(l)))
}
func (f *fakeDeleter) CreateSSHKey(_ context.Context, name, _ string, l map[string]string) (*hcloud.SSHKey, error) {
	return &hcloud.SSHKey{Name: name, Labels: l}, f.do("create key " + name + " failures=" + l[label.Failures])
}
func (f *fakeDeleter) SSHKeyByName(context.Context, string) (*hcloud.SSHKey, error) {
	return nil, f.do("get key")
}
func (f *fakeDeleter) SetSSHKeyLabels(_ context.Context, k *hcloud.SSHKey, l map[string]string) error {
	return f.do(fmt.Sprintf("label key %d failures=%s", k.ID, l[label.Failures]))
}

func TestExecutor(t *testing.T) {
	plan := func() *Plan {
		return &Plan{
			Builds: []Item{{Target: tgt("v1.13.9/amd64"), Force: true, Reason: "r"}, {Target: tgt("v1.13.9/arm64"), Reason: "r"},
				{Target: tgt("v1.13.10/amd64"), After: "v1.13.9", Reason: "r"}, {Target: tgt("v1.13.10/arm64"), After: "v1.13.9", Reason: "r"},
				{Target: tgt("v1.13.10/amd64"), Force: true, After: "v1.13.10", Reason: "r"}},
			Redrives:       []Item{{Target: tgt("v1.12.8/amd64"), Server: "s", Reason: "r"}},
			Deferred:       []Item{{Target: tgt("v1.12.8/arm64"), Reason: "r"}},
			CollectServers: []Resource{{ID: 1, Name: "old-server", Reason: "r"}},
			CollectKeys:    []Resource{{ID: 2, Name: "old-key", Reason: "r"}},
			Prune:          []Resource{{ID: 3, Reason: "r"}, {ID: 4, Reason: "r"}},
		}
	}
	var invoked []string
	var builder InvokerFunc = func(_ context.Context, r build.Request) error {
		invoked = append(invoked, fmt.Sprintf("%s/%s force=%v queue=%v", r.Version, r.Arch, r.Force, r.Queue))
		if r.Arch == "arm64" && r.Version == "v1.13.9" {
			return errors.New("throttled")
		}
		if r.Schematic != qga {
			return fmt.Errorf("unexpected request %+v", r)
		}
		return nil
	}
	cloud := &fakeDeleter{fail: map[string]error{"image 3": errors.New("image 3: boom")}}
	p := plan()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	e := Executor{Cloud: cloud, Builder: builder, Logger: log}
	err := errors.Join(e.Cleanup(context.Background(), p), e.Start(context.Background(), p))

	wantCalls := []string{"server 1 old-server", "key 2 old-key", "image 3", "image 4"}
	if !slices.Equal(cloud.calls, wantCalls) {
		t.Errorf("deletions %v, want %v", cloud.calls, wantCalls)
	}
	// One invocation per architecture and schematic, the others queued.
	want := []string{"v1.12.8/amd64 force=false queue=[]", "v1.13.9/amd64 force=true queue=[{v1.13.10 false} {v1.13.10 true}]",
		"v1.13.9/arm64 force=false queue=[{v1.13.10 false}]"}
	if !slices.Equal(invoked, want) {
		t.Errorf("invoked %v, want re-drives then builds, forced and queued as planned: %v", invoked, want)
	}
	if err == nil || !strings.Contains(err.Error(), "image 3") || !strings.Contains(err.Error(), "throttled") {
		t.Errorf("err = %v, want both failures", err)
	}
	var failed []string
	for _, it := range p.Builds {
		if it.Error != "" {
			failed = append(failed, it.Version+"/"+it.Arch)
		}
	}
	if p.Prune[0].Error == "" || p.Prune[1].Error != "" || !slices.Equal(failed, []string{"v1.13.9/arm64", "v1.13.10/arm64"}) {
		t.Errorf("errors not recorded on the failed items only: %+v %+v", p.Prune, p.Builds)
	}

	// Without a Builder, deletions still happen and invocations fail.
	cloud = &fakeDeleter{}
	p = plan()
	e = Executor{Cloud: cloud, Logger: log}
	err = errors.Join(e.Cleanup(context.Background(), p), e.Start(context.Background(), p))
	if len(cloud.calls) != 4 || !errors.Is(err, errNoBuilder) || p.Redrives[0].Error == "" {
		t.Errorf("without a builder: calls %v, err %v", cloud.calls, err)
	}
}

func TestParsePayload(t *testing.T) {
	tests := []struct {
		payload string
		dryRun  bool
		err     bool
	}{
		{``, false, false},
		{`null`, false, false},
		{`{}`, false, false},
		{`{"dry_run":true}`, true, false},
		{`{"dry_run":false}`, false, false},
		{`{"version":"0","id":"53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa","detail-type":"Scheduled Event","source":"aws.events",` +
			`"time":"2026-11-10T12:00:00Z","resources":["arn:aws:events:eu-central-1:123456789012:rule/poll"],"detail":{}}`, false, false},
		{`{"dry_run":"yes"}`, false, true},
		{`[true]`, false, true},
		{`{"dry_run":tru`, false, true},
	}
	for _, tt := range tests {
		dry, err := ParsePayload([]byte(tt.payload))
		if dry != tt.dryRun || (err != nil) != tt.err {
			t.Errorf("ParsePayload(%s) = %v, %v; want %v, error %v", tt.payload, dry, err, tt.dryRun, tt.err)
		}
	}
}

// TestExecutorAppliesFailures: a failed snapshot is marked and deleted and
// its target's failure recorded (a new record, or the existing one
// relabelled); records that no longer apply are deleted; a snapshot still
// locked by its action stays marked without failing the poll.
func TestExecutorAppliesFailures(t *testing.T) {
	pol := build.FailurePolicy{Config: "cfg"}
	first := pol.Record(nil, tgt("v1.13.9/amd64"), "", "snapshot-timeout", build.StepWait, failureOrigin, time.Now())
	prev := pol.Record(nil, tgt("v1.13.9/arm64"), "", "download", build.StepInstall, "req", time.Now())
	prev.Key = &hcloud.SSHKey{ID: 9, Name: prev.Name(), Labels: prev.Labels()}
	second := pol.Record(&prev, tgt("v1.13.9/arm64"), "", "snapshot-timeout", build.StepWait, failureOrigin, time.Now())
	img := func(id int64) *hcloud.Image {
		return &hcloud.Image{ID: id, Labels: map[string]string{label.Managed: label.ManagedValue, label.OS: "talos"}}
	}
	p := &Plan{FailurePlan: FailurePlan{
		FailSnapshots: []FailedSnapshot{
			{Resource: Resource{ID: 1}, img: img(1), why: "timeout", record: &first},
			{Resource: Resource{ID: 2}, img: img(2), why: "timeout", record: &second},
			{Resource: Resource{ID: 3}, img: img(3), why: "status-unavailable"},
		},
		DeleteRecords: []Resource{{ID: 4, Name: "failed-old", Reason: "r"}},
	}}
	cloud := &fakeDeleter{fail: map[string]error{"image 2": hcloud.Error{Code: hcloud.ErrorCodeLocked, Message: "locked"}}}
	err := Executor{Cloud: cloud, Logger: slog.New(slog.DiscardHandler)}.Cleanup(context.Background(), p)
	want := []string{
		"label image 1 2", "image 1", "create key " + first.Name() + " failures=1",
		"label image 2 2", "image 2", "label key 9 failures=2",
		"label image 3 2", "image 3",
		"key 4 failed-old",
	}
	if !slices.Equal(cloud.calls, want) {
		t.Errorf("calls:\n got %v\nwant %v", cloud.calls, want)
	}
	if err != nil || p.FailSnapshots[1].Error == "" || p.FailSnapshots[0].Error != "" {
		t.Errorf("err = %v, items %+v", err, p.FailSnapshots)
	}
}
