// Command local runs the main job on the local stack: it starts the local
// cloud (Hetzner API with rescue hosts, Image Factory, GitHub releases of
// siderolabs/talos), deploys the Poller's and the Builder's real bootstraps
// under the Lambda emulator and polls until there is nothing left to do:
// each poll's plan, each build step as the Builder logs it, and at the end
// the snapshots with a check that each one holds its factory image and was
// announced, and the events the Builder put on the EventBridge bus.
// `make local` runs it; it needs root (rescue hosts use mount namespaces).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakelambda"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/announce"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/poll"
)

func main() {
	boot := flag.Duration("boot-delay", time.Second, "time a rescue system takes to accept SSH (Hetzner: ~80s)")
	snapshot := flag.Duration("snapshot-time", 3*time.Second, "time Hetzner takes to create a snapshot")
	flag.Parse()
	if err := run(*boot, *snapshot); err != nil {
		fmt.Fprintln(os.Stderr, "local:", err)
		os.Exit(1)
	}
}

func run(boot, snapshot time.Duration) error {
	out := &progress{w: os.Stdout, start: time.Now()}
	st, err := stack.Start(stack.Options{
		BootDelay: boot, ActionDuration: 200 * time.Millisecond,
		ActionDurations: map[string]time.Duration{"create_image": snapshot},
		// The real Talos images (v1.13 amd64: 4247 MiB raw) on sparse disks
		// as big as those of the smallest server types (cx23, cax11).
		Scale: 1, DiskSize: 40 << 30,
		Logger: slog.New(out),
	})
	if err != nil {
		return err
	}
	defer st.Close()
	out.printf("local cloud: Hetzner API %s, factory %s, GitHub %s\n", st.HCloudURL, st.FactoryURL, st.GitHubURL)

	dir, err := os.MkdirTemp("", "hcloud-k8s-local-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fns := map[string]fakelambda.Function{
		// Budgets for the emulated delays; Hetzner's real ones are the defaults.
		"builder": {Timeout: 5 * time.Minute, PoolSize: 4,
			Env: map[string]string{"INSTALL_TIMEOUT": "1m", "STEP_TIMEOUT": "20s", "SNAPSHOT_WAIT": "30s", "VERIFY_TIMEOUT": "1m"}},
		"poller": {Timeout: time.Minute, PoolSize: 1, Env: map[string]string{"BUILDER_FUNCTION_NAME": "builder"}},
	}
	for name, fn := range fns {
		out.printf("building the %s's bootstrap\n", name)
		if fn.Bootstrap, err = stack.BuildBootstrap("./functions/"+name, filepath.Join(dir, name)); err != nil {
			return err
		}
		fns[name] = fn
	}
	emu, err := st.StartLambda(fns)
	if err != nil {
		return err
	}
	defer emu.Close()
	out.printf("Lambda emulator %s runs the functions \"poller\" and \"builder\"\n", emu.URL())

	api := stack.LambdaClient(emu)
	released := false
	for i := 1; i <= 8; i++ {
		out.printf("\n== poll %d\n", i)
		res, err := api.Invoke(context.Background(), &awslambda.InvokeInput{
			FunctionName: aws.String("poller"), Payload: []byte(`{}`)})
		if err != nil {
			return err
		}
		if res.FunctionError != nil {
			return fmt.Errorf("the poller failed: %s", res.Payload)
		}
		var rep poll.Report
		if err := json.Unmarshal(res.Payload, &rep); err != nil {
			return err
		}
		out.printf("releases seen %d, tracked %v, builds %s, deferred %s, re-driven %s, pruned %s\n",
			rep.ReleasesSeen, rep.Tracked, items(rep.Builds), items(rep.Deferred), items(rep.Redrives), pruned(rep.Prune))
		if rep.Plan.Empty() {
			out.printf("nothing left to do\n")
			if released {
				break
			}
			// Talos publishes the patch it drafted: the next poll builds it.
			const patch = "v1.13.10"
			if _, err := st.GitHub.PublishRelease(patch); err != nil {
				return err
			}
			if err := st.Factory.SetAvailable(patch, true); err != nil {
				return err
			}
			released = true
			out.printf("\n== siderolabs/talos publishes %s\n", patch)
			continue
		}
		// The builds run as asynchronous invocations of the Builder.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		err = emu.WaitIdle(ctx)
		cancel()
		if err != nil {
			return err
		}
	}

	announced := map[int64]bool{}
	for _, ev := range st.Events.Events() {
		var d announce.Available
		if ev.DetailType == announce.SnapshotAvailable && json.Unmarshal(ev.Detail, &d) == nil {
			announced[d.ImageID] = true
		}
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nSNAPSHOT\tSTATUS\tARCH\tTALOS\tSCHEMATIC\tCREATED\tDISK = IMAGE\tANNOUNCED")
	failed := false
	for _, img := range st.Cloud.Images() {
		if img.Type != "snapshot" {
			continue
		}
		l := img.Labels
		_, want, err := st.Factory.Image(l["talos_schematic_id"]+l["hcloud-k8s.io/schematic-rest"], l["talos_version"], l["arch"])
		same := err == nil && want == img.Digest
		failed = failed || !same || !announced[img.ID]
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s…\t%s\t%v\t%v\n", img.ID, img.Status, l["arch"], l["talos_version"],
			l["talos_schematic_id"][:8], img.Created.Format(time.TimeOnly), same, announced[img.ID])
	}
	tw.Flush()
	fmt.Println("\nEVENTS on the default EventBridge bus")
	for _, ev := range st.Events.Events() {
		fmt.Printf("%s  %s  %s  %s\n", ev.Time.Format(time.TimeOnly), ev.Source, ev.DetailType, ev.Detail)
	}
	var billed int64
	for _, inv := range emu.Invocations("") {
		billed += inv.BilledMS
	}
	fmt.Printf("\nservers left: %d, ssh keys left: %d, Hetzner API requests: %d, Lambda invocations: %d (%d ms billed), events: %d\n",
		len(st.Cloud.Servers()), len(st.Cloud.SSHKeys()), len(st.Cloud.Requests()), len(emu.Invocations("")), billed,
		len(st.Events.Events()))
	if failed {
		return fmt.Errorf("a snapshot does not hold its image, or was not announced")
	}
	return nil
}

func pruned(rs []poll.Resource) string {
	var s []string
	for _, r := range rs {
		if r.Target != nil {
			s = append(s, r.Target.Version+"/"+r.Target.Arch)
		}
	}
	return "[" + strings.Join(s, " ") + "]"
}

func items(its []poll.Item) string {
	var s []string
	for _, it := range its {
		s = append(s, it.Version+"/"+it.Arch)
	}
	return "[" + strings.Join(s, " ") + "]"
}

// progress is a slog handler that shows the functions' log lines (which the
// Lambda emulator passes on at debug level) as one readable line per event.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

func (p *progress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, args...)
}

func (p *progress) Enabled(context.Context, slog.Level) bool { return true }
func (p *progress) WithAttrs([]slog.Attr) slog.Handler       { return p }
func (p *progress) WithGroup(string) slog.Handler            { return p }

func (p *progress) Handle(_ context.Context, r slog.Record) error {
	fromFunction := false
	r.Attrs(func(a slog.Attr) bool {
		fromFunction = fromFunction || (a.Key == "source" && a.Value.String() == "function")
		return true
	})
	var line map[string]any
	dec := json.NewDecoder(strings.NewReader(r.Message))
	dec.UseNumber()
	if !fromFunction || dec.Decode(&line) != nil {
		return nil // RIE's own lines and the emulators' chatter
	}
	msg, _ := line["message"].(string)
	target, _ := line["target"].(string)
	step, _ := line["step"].(string)
	var extra []string
	keys := make([]string, 0, len(line))
	for k := range line {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch k {
		case "timestamp", "level", "message", "target", "step", "requestId", "stream":
		default:
			extra = append(extra, fmt.Sprintf("%s=%v", k, line[k]))
		}
	}
	if line["stream"] != nil {
		msg = "  | " + msg // output of the command on the rescue system
	}
	if target == "" {
		return nil // the poller's lines: its report says it better
	}
	p.printf("%6.1fs  %-24s %-9s %s %s\n", time.Since(p.start).Seconds(), target, step, msg, strings.Join(extra, " "))
	return nil
}
