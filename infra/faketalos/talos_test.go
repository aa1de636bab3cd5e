package faketalos_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/hcloud-k8s/hcloud-k8s/infra/faketalos"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

func start(t *testing.T, version, arch string) *faketalos.Server {
	t.Helper()
	s, err := faketalos.Start(faketalos.Options{Addr: "127.0.0.1:0", Version: version, Arch: arch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestVersion(t *testing.T) {
	tests := []struct {
		version, arch string
		answers       bool
	}{
		{"v1.10.7", "amd64", false},
		{"v1.12.6", "arm64", false},
		{"v1.13.0-alpha.2", "amd64", false},
		{"v1.13.0-beta.0", "amd64", true},
		{"v1.13.0", "arm64", true},
		{"v1.13.9", "amd64", true},
		{"v1.14.0-alpha.0", "amd64", true},
		{"v2.0.0", "arm64", true},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			s := start(t, tt.version, tt.arch)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			got, err := talos.APIVersion(ctx, s.Addr())
			if !tt.answers {
				if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "API is not implemented in maintenance mode") {
					t.Fatalf("Version = %+v, %v; want Unimplemented", got, err)
				}
				return
			}
			want := talos.VersionInfo{Tag: tt.version, OS: "linux", Arch: tt.arch, Platform: "hcloud", Mode: "cloud"}
			if err != nil || got != want {
				t.Fatalf("Version = %+v, %v; want %+v", got, err, want)
			}
		})
	}
}

// bytesCodec sends and receives messages as bytes.
type bytesCodec struct{}

func (bytesCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (bytesCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}
func (bytesCodec) Name() string { return "proto" }

func TestOtherMethodsAreUnimplemented(t *testing.T) {
	s := start(t, "v1.13.0", "amd64")
	conn, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var resp []byte
	err = conn.Invoke(context.Background(), "/machine.MachineService/Reboot", []byte{}, &resp, grpc.ForceCodec(bytesCodec{}))
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("Reboot = %v, want Unimplemented", err)
	}
}

func TestSelfSignedCertificate(t *testing.T) {
	s := start(t, "v1.13.0", "amd64")
	// A client that verifies does not know the CA the node made at boot.
	_, err := tls.Dial("tcp", s.Addr(), &tls.Config{NextProtos: []string{"h2"}, ServerName: "127.0.0.1"})
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("verified handshake = %v, want unknown authority", err)
	}

	conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("insecure handshake: %v", err)
	}
	defer conn.Close()
	st := conn.ConnectionState()
	leaf := st.PeerCertificates[0]
	if st.NegotiatedProtocol != "h2" || leaf.Subject.CommonName != "maintenance-service.talos.dev" ||
		leaf.PublicKeyAlgorithm != x509.Ed25519 || leaf.IsCA {
		t.Fatalf("protocol %q, certificate %q %v CA=%v", st.NegotiatedProtocol, leaf.Subject.CommonName, leaf.PublicKeyAlgorithm, leaf.IsCA)
	}
	if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Errorf("certificate does not name the node's address: %v", err)
	}

	// siderolabs/crypto's defaults: TLS 1.2 still works (with an Ed25519 certificate), X25519 only.
	for _, tt := range []struct {
		name string
		cfg  *tls.Config
		ok   bool
	}{
		{"TLS 1.2", &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}, true},
		{"P-256 only", &tls.Config{InsecureSkipVerify: true, CurvePreferences: []tls.CurveID{tls.CurveP256}}, false},
	} {
		c, err := tls.Dial("tcp", s.Addr(), tt.cfg)
		if err == nil {
			c.Close()
		}
		if (err == nil) != tt.ok {
			t.Errorf("%s: handshake error %v, want success %v", tt.name, err, tt.ok)
		}
	}
}

func TestCloseStopsListening(t *testing.T) {
	s, err := faketalos.Start(faketalos.Options{Addr: "127.0.0.1:0", Version: "v1.13.0", Arch: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s.Close()
	if _, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		t.Error("still listening after Close")
	}
	// An open connection drops as well.
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("read after Close = %v, want the connection closed", err)
	}
}

func TestStartRejects(t *testing.T) {
	tests := []faketalos.Options{
		{Addr: "0.0.0.0:0", Version: "v1.13.0", Arch: "amd64"},
		{Addr: "127.0.0.1:0", Version: "1.13.0", Arch: "amd64"},
		{Addr: "127.0.0.1:0", Version: "v1.13.0", Arch: "x86"},
	}
	for _, o := range tests {
		if s, err := faketalos.Start(o); err == nil {
			s.Close()
			t.Errorf("Start(%+v) succeeded", o)
		}
	}
}
