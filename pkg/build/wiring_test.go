package build

import (
	"context"
	"reflect"
	"testing"

	"github.com/sethvargo/go-envconfig"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/config"
)

func TestOptionsFrom(t *testing.T) {
	c, err := config.LoadFrom(context.Background(), envconfig.MapLookuper(map[string]string{
		"HCLOUD_TOKEN": "tok", "SERVER_IMAGE": "ubuntu-24.04", "SERVER_TYPES_AMD64": "cpx11", "LOCATIONS": "ash",
		"MIN_VERSION": "v1.12.0", "TRACK_PRERELEASES": "true",
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	o := OptionsFrom(c, []string{target.Schematic})
	if o.ServerImage != "ubuntu-24.04" || !reflect.DeepEqual(o.ServerTypes["amd64"], []string{"cpx11"}) ||
		!reflect.DeepEqual(o.ServerTypes["arm64"], []string{"cax11"}) || !reflect.DeepEqual(o.Locations, []string{"ash"}) ||
		o.MinVersion != "v1.12.0" || !o.Prereleases {
		t.Errorf("options = %+v", o)
	}
}
