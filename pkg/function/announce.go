package function

import (
	"context"

	"github.com/hcloud-k8s/hcloud-k8s/pkg/announce"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/build"
	"github.com/hcloud-k8s/hcloud-k8s/pkg/config"
)

// Announcer returns what announces the Builder's published snapshots and
// failed builds: events on the bus EVENT_BUS_NAME names, through a client
// configured from the environment; nil when it is empty.
func Announcer(ctx context.Context, c config.Config) (build.Announcer, error) {
	if c.EventBusName == "" {
		return nil, nil
	}
	api, err := announce.NewAPI(ctx)
	if err != nil {
		return nil, err
	}
	return announce.EventBridge{API: api, Bus: c.EventBusName}, nil
}
