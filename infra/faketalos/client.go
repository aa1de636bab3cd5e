package faketalos

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protowire"
)

// VersionInfo is what a node answers to Version.
type VersionInfo struct {
	Tag, OS, Arch  string // machine.VersionInfo tag, os, arch
	Platform, Mode string // machine.PlatformInfo name, mode
}

// Version asks the Talos API at addr for its version as `talosctl version
// --insecure` does: gRPC over TLS that accepts any server certificate
// (cmd/talosctl/pkg/talos/global/client.go WithClientMaintenance). A node
// that refuses answers a gRPC status error (status.Code), e.g. Unimplemented
// before Talos v1.13.0-beta.0.
func Version(ctx context.Context, addr string) (VersionInfo, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})))
	if err != nil {
		return VersionInfo{}, fmt.Errorf("talos api %s: %w", addr, err)
	}
	defer conn.Close()
	var resp []byte
	if err := conn.Invoke(ctx, VersionMethod, []byte{}, &resp, grpc.ForceCodec(rawCodec{})); err != nil {
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
