package faketalos_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/hcloud-k8s/hcloud-k8s/infra/faketalos"
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

// versionInfo is what a client reads from a VersionResponse.
type versionInfo struct {
	tag, os, arch, platform, mode string
}

// callVersion asks addr for its version as `talosctl version --insecure`
// does: gRPC over TLS without verifying the server's certificate.
func callVersion(ctx context.Context, addr string) (versionInfo, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})))
	if err != nil {
		return versionInfo{}, err
	}
	defer conn.Close()
	var resp []byte
	if err := conn.Invoke(ctx, faketalos.VersionMethod, []byte{}, &resp, grpc.ForceCodec(bytesCodec{})); err != nil {
		return versionInfo{}, err
	}
	return decodeVersionResponse(resp)
}

// decodeVersionResponse reads the first message of a machine.VersionResponse
// by the field numbers of api/machine/machine.proto.
func decodeVersionResponse(b []byte) (versionInfo, error) {
	var v versionInfo
	msgs := fields(b)
	msg, ok := msgs[1]
	if !ok {
		return v, errors.New("no messages in VersionResponse")
	}
	ver, plat := fields(msg)[2], fields(msg)[3]
	info, p := fields(ver), fields(plat)
	v.tag, v.os, v.arch = string(info[1]), string(info[5]), string(info[6])
	v.platform, v.mode = string(p[1]), string(p[2])
	return v, nil
}

// fields returns the first value of each length-delimited field of b.
func fields(b []byte) map[protowire.Number][]byte {
	out := map[protowire.Number][]byte{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return out
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
		} else {
			var val []byte
			val, n = protowire.ConsumeBytes(b)
			if _, seen := out[num]; !seen && n >= 0 {
				out[num] = val
			}
		}
		if n < 0 {
			return out
		}
		b = b[n:]
	}
	return out
}

type bytesCodec struct{}

func (bytesCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (bytesCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}
func (bytesCodec) Name() string { return "proto" }

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
			got, err := callVersion(ctx, s.Addr())
			if !tt.answers {
				if status.Code(err) != codes.Unimplemented || status.Convert(err).Message() != "API is not implemented in maintenance mode" {
					t.Fatalf("Version = %+v, %v; want Unimplemented", got, err)
				}
				return
			}
			want := versionInfo{tag: tt.version, os: "linux", arch: tt.arch, platform: "hcloud", mode: "cloud"}
			if err != nil || got != want {
				t.Fatalf("Version = %+v, %v; want %+v", got, err, want)
			}
		})
	}
}

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
