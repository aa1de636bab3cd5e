package stack

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"

	"github.com/hcloud-k8s/hcloud-k8s/infra/testenv"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/ssh"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// TestManualBuildWalk walks one build by hand through the emulators, with
// the real hcloud-go client and a real SSH session, the way the Talos docs
// do it: create a server, boot it into rescue, write the image, snapshot,
// delete. The snapshot's recorded disk digest must equal the image's.
func TestManualBuildWalk(t *testing.T) {
	testenv.NeedLocalWorld(t)
	st, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := hcloud.NewClient(hcloud.WithEndpoint(st.HCloudURL), hcloud.WithToken(st.Token),
		hcloud.WithPollOpts(hcloud.PollOpts{BackoffFunc: hcloud.ConstantBackoff(20 * time.Millisecond)}))
	const version, arch = "v1.13.9", "amd64"
	schematic := talos.VanillaSchematic

	key, err := ssh.NewKey()
	must(t, err)
	hkey, _, err := c.SSHKey.Create(ctx, hcloud.SSHKeyCreateOpts{Name: "walk", PublicKey: key.AuthorizedKey()})
	must(t, err)
	res, _, err := c.Server.Create(ctx, hcloud.ServerCreateOpts{
		Name: "walk", ServerType: &hcloud.ServerType{Name: "cx23"}, Image: &hcloud.Image{Name: "debian-12"},
		Location: &hcloud.Location{Name: "fsn1"}, StartAfterCreate: hcloud.Ptr(false),
	})
	must(t, err)
	must(t, c.Action.WaitFor(ctx, res.Action))
	srv := res.Server
	rescue, _, err := c.Server.EnableRescue(ctx, srv, hcloud.ServerEnableRescueOpts{
		Type: hcloud.ServerRescueTypeLinux64, SSHKeys: []*hcloud.SSHKey{hkey}})
	must(t, err)
	must(t, c.Action.WaitFor(ctx, rescue.Action))
	on, _, err := c.Server.Poweron(ctx, srv)
	must(t, err)
	must(t, c.Action.WaitFor(ctx, on))

	addr := net.JoinHostPort(srv.PublicNet.IPv4.IP.String(), "22")
	if !strings.HasPrefix(addr, "127.") {
		t.Fatalf("server address %s is not loopback", addr)
	}
	remote, err := (&ssh.Dialer{Key: key, Addr: addr}).Dial(ctx)
	must(t, err)
	url := st.FactoryURL + "/image/" + schematic + "/" + version + "/hcloud-" + arch + ".raw.xz"
	// The Talos docs' pipeline, verbatim but for the URL.
	must(t, remote.Run(ctx, fmt.Sprintf("set -euo pipefail; wget -q -O /tmp/talos.raw.xz '%s'; xz -d -c /tmp/talos.raw.xz | dd of=/dev/sda && sync", url), nil))
	var out bytes.Buffer
	must(t, remote.Run(ctx, "sfdisk --json /dev/sda; ls /dev", &out))
	for _, want := range []string{`"label": "gpt"`, `"name": "META"`, "sda"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("rescue output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "vda") {
		t.Errorf("the host's disk is visible in rescue:\n%s", out.String())
	}
	remote.Close()

	off, _, err := c.Server.Poweroff(ctx, srv)
	must(t, err)
	must(t, c.Action.WaitFor(ctx, off))
	img, _, err := c.Server.CreateImage(ctx, srv, &hcloud.ServerCreateImageOpts{
		Type: hcloud.ImageTypeSnapshot, Description: hcloud.Ptr("walk"), Labels: map[string]string{"os": "talos"}})
	must(t, err)
	must(t, c.Action.WaitFor(ctx, img.Action))
	snap, _, err := c.Image.GetByID(ctx, img.Image.ID)
	must(t, err)
	if snap.Status != hcloud.ImageStatusAvailable || snap.Labels["os"] != "talos" {
		t.Errorf("snapshot = %+v", snap)
	}
	del, _, err := c.Server.DeleteWithResult(ctx, srv)
	must(t, err)
	must(t, c.Action.WaitFor(ctx, del.Action))
	_, err = c.SSHKey.Delete(ctx, hkey)
	must(t, err)

	_, want, err := st.Factory.Image(schematic, version, arch)
	must(t, err)
	got, ok := st.Cloud.Image(snap.ID)
	if !ok || got.Digest != want {
		t.Errorf("snapshot digest %q, want the image's %q", got.Digest, want)
	}
	if n := len(st.Cloud.Servers()); n != 0 {
		t.Errorf("%d servers left", n)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
