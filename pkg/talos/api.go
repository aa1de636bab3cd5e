package talos

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// APIPort is the Talos API's port: apid on a configured node, the
// maintenance service on one booted without configuration (infra/README.md,
// Talos images).
const APIPort = 50000

// ProbeAPI tells whether Talos booted and serves its API at addr
// (host:port), and the version it reports when it does. A node booted
// from an hcloud image without user data waits in maintenance mode; from
// v1.13.0-beta.0 it answers Version to anyone, before that it answers
// every method with Unimplemented, which over TLS still shows the API up
// (infra/README.md, Talos images): then the version is "".
func ProbeAPI(ctx context.Context, addr string) (version string, err error) {
	v, err := APIVersion(ctx, addr)
	if status.Code(err) == codes.Unimplemented {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return v.Tag, nil
}

// APIVersionMethod is the gRPC method of `talosctl version`: service
// MachineService of proto package machine (api/machine/machine.proto).
const APIVersionMethod = "/machine.MachineService/Version"

// VersionInfo is what a node answers to Version.
type VersionInfo struct {
	Tag, OS, Arch  string // machine.VersionInfo tag, os, arch
	Platform, Mode string // machine.PlatformInfo name, mode
}

// APIVersion asks the Talos API at addr for its version as `talosctl
// version --insecure` does: gRPC over TLS that accepts any server certificate
// (cmd/talosctl/pkg/talos/global/client.go WithClientMaintenance). A node
// that refuses answers a gRPC status error (status.Code), e.g. Unimplemented
// before Talos v1.13.0-beta.0.
func APIVersion(ctx context.Context, addr string) (VersionInfo, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})))
	if err != nil {
		return VersionInfo{}, fmt.Errorf("talos api %s: %w", addr, err)
	}
	defer conn.Close()
	var resp []byte
	if err := conn.Invoke(ctx, APIVersionMethod, []byte{}, &resp, grpc.ForceCodec(BytesCodec{})); err != nil {
		return VersionInfo{}, fmt.Errorf("talos api %s: %w", addr, err)
	}
	return decodeVersion(resp)
}

// decodeVersion reads the first message of a machine.VersionResponse by the
// field numbers of api/machine/machine.proto.
func decodeVersion(b []byte) (VersionInfo, error) {
	resp, err := fields(b)
	if err != nil {
		return VersionInfo{}, err
	}
	msg, ok := resp[1]
	if !ok {
		return VersionInfo{}, errors.New("version response without messages")
	}
	m, err := fields(msg)
	if err != nil {
		return VersionInfo{}, err
	}
	info, err := fields(m[2])
	if err != nil {
		return VersionInfo{}, err
	}
	platform, err := fields(m[3])
	if err != nil {
		return VersionInfo{}, err
	}
	return VersionInfo{
		Tag: string(info[1]), OS: string(info[5]), Arch: string(info[6]),
		Platform: string(platform[1]), Mode: string(platform[2]),
	}, nil
}

// fields returns the first value of each length-delimited field of a
// message, skipping fields of other wire types.
func fields(b []byte) (map[protowire.Number][]byte, error) {
	out := map[protowire.Number][]byte{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, fmt.Errorf("decode: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m >= 0 {
				if _, seen := out[num]; !seen {
					out[num] = v
				}
			}
			n = m
		} else {
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return nil, fmt.Errorf("decode field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
	}
	return out, nil
}

// BytesCodec passes messages through as bytes: the Talos API client (and its
// stand-in) encode their one
// answer with protowire instead of generated code.
type BytesCodec struct{}

func (BytesCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("raw codec: cannot marshal %T", v)
	}
	return b, nil
}

func (BytesCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return errors.New("raw codec: can only unmarshal into *[]byte")
	}
	*p = append((*p)[:0], data...)
	return nil
}

func (BytesCodec) Name() string { return "proto" }
