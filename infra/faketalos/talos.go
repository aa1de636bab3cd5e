// Package faketalos stands in for the Talos API of a node booted from a
// Talos hcloud image without user data, which puts it in maintenance mode:
// gRPC over TLS on port 50000 with a server certificate from a CA the node
// makes at boot, so that clients must skip verification (talosctl
// --insecure). Of that API it answers MachineService/Version as the real
// node of the image's version does; it does not implement any other method
// (apply-config, COSI resources, disks), SideroLink, a configured node's
// mutual TLS, or the node's own boot: starting a Server is the API coming up.
package faketalos

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/talos"
)

// Port is the Talos API port (siderolabs/talos pkg/machinery/constants:
// ApidPort), where maintenance mode listens too.
const Port = 50000

// commonName is the maintenance certificate's subject (siderolabs/talos
// pkg/machinery/constants: MaintenanceServiceCommonName).
const commonName = "maintenance-service.talos.dev"

// Options configure a Server.
type Options struct {
	// Addr is the host:port to listen on; it must be a loopback address.
	Addr string
	// Version is the Talos version of the booted image, e.g. "v1.13.0": the
	// tag the Version method answers.
	Version string
	// Arch is the image's architecture, amd64 or arm64.
	Arch string
}

// Server is a running Talos API in maintenance mode.
type Server struct {
	opts    Options
	answers bool // whether Version answers in maintenance mode
	ln      net.Listener
	grpc    *grpc.Server
	done    chan struct{}
}

// Start listens on opts.Addr and serves until Close.
func Start(opts Options) (*Server, error) {
	v, ok := parseVersion(opts.Version)
	if !ok {
		return nil, fmt.Errorf("talos api: version %q is not vMAJOR.MINOR.PATCH[-PRERELEASE]", opts.Version)
	}
	if opts.Arch != "amd64" && opts.Arch != "arm64" {
		return nil, fmt.Errorf("talos api: architecture %q is not amd64 or arm64", opts.Arch)
	}
	host, _, err := net.SplitHostPort(opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("talos api: address %s: %w", opts.Addr, err)
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("talos api: address %s is not a loopback IP", opts.Addr)
	}
	cert, err := maintenanceCert(ip)
	if err != nil {
		return nil, fmt.Errorf("talos api: %w", err)
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("talos api: %w", err)
	}
	s := &Server{opts: opts, answers: v.answersVersion(), ln: ln, done: make(chan struct{})}
	s.grpc = grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsConfig(cert))),
		grpc.ForceServerCodec(talos.BytesCodec{}),
	)
	s.grpc.RegisterService(&grpc.ServiceDesc{
		ServiceName: "machine.MachineService",
		HandlerType: (*any)(nil),
		Methods:     []grpc.MethodDesc{{MethodName: "Version", Handler: s.version}},
		Metadata:    "machine/machine.proto",
	}, s)
	go func() {
		defer close(s.done)
		s.grpc.Serve(ln) //nolint:errcheck // returns when stopped
	}()
	return s, nil
}

// Addr returns the address the API listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops listening and drops every connection at once, as a server
// that is powered off does.
func (s *Server) Close() {
	s.grpc.Stop()
	<-s.done
}

// version answers MachineService/Version. Before v1.13.0-beta.0 Talos ran a
// separate maintenance service whose Version demanded the admin role, which
// only SideroLink peers get: everyone else is answered Unimplemented
// (internal/app/maintenance/server.go assertAdminRole; the injector mode
// authz.ReadOnlyWithAdminOnSiderolink in internal/app/machined/pkg/
// controllers/runtime/maintenance_service.go). From v1.13.0-beta.0 apid
// serves maintenance mode and grants Version to the reader role
// (commit b7d70cf "feat: unify maintenance and regular APIs";
// internal/app/machined/pkg/system/services/machined.go).
func (s *Server) version(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	var req []byte // google.protobuf.Empty
	if err := dec(&req); err != nil {
		return nil, err
	}
	if !s.answers {
		return nil, status.Error(codes.Unimplemented, "API is not implemented in maintenance mode")
	}
	return versionResponse(s.opts.Version, s.opts.Arch), nil
}

// versionResponse encodes machine.VersionResponse{messages: [Version{version:
// VersionInfo{tag, os, arch}, platform: PlatformInfo{name, mode}}]} with the
// field numbers of api/machine/machine.proto: VersionResponse.messages 1;
// Version.version 2, .platform 3 (metadata 1 and features 4 stay unset, as
// in maintenance mode without a config); VersionInfo.tag 1, .os 5, .arch 6
// (sha 2, built 3, go_version 4 are left out here); PlatformInfo.name 1,
// .mode 2. The hcloud platform's name is "hcloud", its mode "cloud".
func versionResponse(tag, arch string) []byte {
	info := protowire.AppendTag(nil, 1, protowire.BytesType)
	info = protowire.AppendString(info, tag)
	info = protowire.AppendTag(info, 5, protowire.BytesType)
	info = protowire.AppendString(info, "linux")
	info = protowire.AppendTag(info, 6, protowire.BytesType)
	info = protowire.AppendString(info, arch)

	platform := protowire.AppendTag(nil, 1, protowire.BytesType)
	platform = protowire.AppendString(platform, "hcloud")
	platform = protowire.AppendTag(platform, 2, protowire.BytesType)
	platform = protowire.AppendString(platform, "cloud")

	msg := protowire.AppendTag(nil, 2, protowire.BytesType)
	msg = protowire.AppendBytes(msg, info)
	msg = protowire.AppendTag(msg, 3, protowire.BytesType)
	msg = protowire.AppendBytes(msg, platform)

	resp := protowire.AppendTag(nil, 1, protowire.BytesType)
	return protowire.AppendBytes(resp, msg)
}

var versionRE = regexp.MustCompile(`^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?$`)

// version is a parsed Talos version.
type version struct {
	major, minor, patch int
	pre                 string // prerelease, e.g. "alpha.0"; empty for a release
}

func parseVersion(v string) (version, bool) {
	m := versionRE.FindStringSubmatch(v)
	if m == nil {
		return version{}, false
	}
	var n [3]int
	for i := range n {
		var err error
		if n[i], err = strconv.Atoi(m[i+1]); err != nil {
			return version{}, false
		}
	}
	return version{n[0], n[1], n[2], m[4]}, true
}

// answersVersion tells whether a node of this version answers Version in
// maintenance mode: from v1.13.0-beta.0 on (the alphas of v1.13.0 predate
// the change).
func (v version) answersVersion() bool {
	switch {
	case v.major != 1:
		return v.major > 1
	case v.minor != 13:
		return v.minor > 13
	default:
		return v.patch > 0 || !strings.HasPrefix(v.pre, "alpha")
	}
}

// maintenanceCert makes what a node makes at every boot in maintenance
// mode: a self-signed Ed25519 CA, the library's default, and a server
// certificate from it for the node's address, 127.0.0.1 and ::1
// (internal/app/machined/pkg/controllers/secrets/maintenance_root.go,
// maintenance.go, maintenance_cert_sans.go; siderolabs/crypto
// x509.NewSelfSignedCertificateAuthority, x509.NewDefaultOptions).
func maintenanceCert(ip net.IP) (tls.Certificate, error) {
	now := time.Now()
	_, caKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca key: %w", err)
	}
	ca := &x509.Certificate{
		SerialNumber: serial(), NotBefore: now, NotAfter: now.AddDate(1, 0, 0),
		BasicConstraintsValid: true, IsCA: true,
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, caKey.Public(), caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca certificate: %w", err)
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		return tls.Certificate{}, fmt.Errorf("ca certificate: %w", err)
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("server key: %w", err)
	}
	leaf := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: commonName},
		NotBefore: now, NotAfter: now.AddDate(1, 0, 0),
		IPAddresses: []net.IP{ip, net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, key.Public(), caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("server certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// tlsConfig is siderolabs/crypto tls.New with tls.ServerOnly, as the
// maintenance service uses it (internal/app/maintenance/provider.go): TLS
// 1.2 or later, X25519 only, h2, no client certificate.
func tlsConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates:           []tls.Certificate{cert},
		CurvePreferences:       []tls.CurveID{tls.X25519},
		SessionTicketsDisabled: true,
		CipherSuites:           []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384},
		MinVersion:             tls.VersionTLS12,
		NextProtos:             []string{"h2"},
		ClientAuth:             tls.NoClientCert,
	}
}
