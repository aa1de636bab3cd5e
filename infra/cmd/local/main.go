// Command local runs the main job on the local stack: it starts the local
// cloud, deploys the Builder's real bootstrap under the Lambda emulator,
// asks it for snapshots of a Talos release for every architecture, shows
// each step as the function logs it and prints the snapshots it made.
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
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"

	"github.com/hcloud-k8s/hcloud-k8s/infra/lambda"
	"github.com/hcloud-k8s/hcloud-k8s/infra/stack"
)

func main() {
	version := flag.String("version", "v1.13.9", "Talos release to build")
	boot := flag.Duration("boot-delay", time.Second, "time a rescue system takes to accept SSH (Hetzner: ~80s)")
	snapshot := flag.Duration("snapshot-time", 3*time.Second, "time Hetzner takes to create a snapshot")
	flag.Parse()
	if err := run(*version, *boot, *snapshot); err != nil {
		fmt.Fprintln(os.Stderr, "local:", err)
		os.Exit(1)
	}
}

func run(version string, boot, snapshot time.Duration) error {
	out := &progress{w: os.Stdout, start: time.Now()}
	st, err := stack.Start(stack.Options{
		BootDelay: boot, ActionDuration: 200 * time.Millisecond,
		ActionDurations: map[string]time.Duration{"create_image": snapshot},
		Logger:          slog.New(out),
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
	out.printf("building the Builder's bootstrap\n")
	bootstrap, err := stack.BuildBootstrap("./functions/builder", dir)
	if err != nil {
		return err
	}
	emu, err := st.StartLambda(map[string]lambda.Function{"builder": {
		Bootstrap: bootstrap, Timeout: 5 * time.Minute, PoolSize: 4,
		// Budgets for the emulated delays; Hetzner's real ones are the defaults.
		Env: map[string]string{"INSTALL_TIMEOUT": "1m", "STEP_TIMEOUT": "20s", "SNAPSHOT_WAIT": "30s"},
	}})
	if err != nil {
		return err
	}
	defer emu.Close()
	out.printf("Lambda emulator %s runs function %q\n\n", emu.URL(), "builder")

	api := awslambda.New(awslambda.Options{Region: "eu-central-1", BaseEndpoint: aws.String(emu.URL()),
		Credentials: credentials.NewStaticCredentialsProvider("local", "local", "")})
	payload := fmt.Sprintf(`{"version":%q}`, version)
	out.printf("invoke builder %s\n", payload)
	res, err := api.Invoke(context.Background(), &awslambda.InvokeInput{
		FunctionName: aws.String("builder"), Payload: []byte(payload)})
	if err != nil {
		return err
	}
	out.printf("\nresult:\n%s\n", indent(res.Payload))
	// Builds that continue in new invocations of the Builder finish there.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := emu.WaitIdle(ctx); err != nil {
		return err
	}

	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nSNAPSHOT\tSTATUS\tARCH\tTALOS\tSCHEMATIC\tDISK = IMAGE")
	for _, img := range st.Cloud.Images() {
		if img.Type != "snapshot" {
			continue
		}
		l := img.Labels
		_, want, err := st.Factory.Image(l["talos_schematic_id"]+l["hcloud-k8s.io/schematic-rest"], l["talos_version"], l["arch"])
		same := err == nil && want == img.Digest
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s…\t%v\n", img.ID, img.Status, l["arch"], l["talos_version"], l["talos_schematic_id"][:8], same)
	}
	tw.Flush()
	fmt.Printf("\nservers left: %d, ssh keys left: %d, Hetzner API requests: %d, Lambda invocations: %d\n",
		len(st.Cloud.Servers()), len(st.Cloud.SSHKeys()), len(st.Cloud.Requests()), len(emu.Invocations("")))
	if res.FunctionError != nil {
		return fmt.Errorf("the builder failed")
	}
	return nil
}

func indent(b []byte) string {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return string(b)
	}
	out, _ := json.MarshalIndent(v, "", "  ")
	return string(out)
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
	p.printf("%6.1fs  %-24s %-9s %s %s\n", time.Since(p.start).Seconds(), target, step, msg, strings.Join(extra, " "))
	return nil
}
