// Command bench-plugin is the Go anchor of kndkit's NRI round-trip benchmark:
// a plugin on the upstream plugin stub (github.com/containerd/nri/pkg/stub)
// that does the same work as the Python plugin it is compared with.
//
//   - RunPodSandbox: nothing (the cost is the round trip alone);
//   - CreateContainer: adds 4 Linux devices, /dev/infiniband/uverbs0..3,
//     character devices 231:192+i with file mode 0666, built afresh for
//     every request.
//
// It subscribes to those two events only (the stub derives the subscription
// from the methods a plugin implements) and exits when the runtime closes the
// connection.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
)

const (
	// Devices added to every created container.
	deviceCount = 4
	// uverbs character devices: major 231, minors from 192.
	uverbsMajor     = 231
	uverbsMinorBase = 192
	deviceMode      = os.FileMode(0o666)
)

type plugin struct{}

// RunPodSandbox answers at once: the benchmark measures the round trip.
func (plugin) RunPodSandbox(context.Context, *api.PodSandbox) error {
	return nil
}

// CreateContainer returns the 4 device adjustments.
func (plugin) CreateContainer(_ context.Context, _ *api.PodSandbox, _ *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	adjust := &api.ContainerAdjustment{}
	for i := 0; i < deviceCount; i++ {
		adjust.AddDevice(&api.LinuxDevice{
			Path:     "/dev/infiniband/uverbs" + strconv.Itoa(i),
			Type:     "c",
			Major:    uverbsMajor,
			Minor:    int64(uverbsMinorBase + i),
			FileMode: api.FileMode(deviceMode),
		})
	}
	return adjust, nil, nil
}

func main() {
	var (
		idx    = flag.String("idx", "", "plugin index to register with (two digits)")
		name   = flag.String("name", "", "plugin name to register with (default: the binary's name)")
		socket = flag.String("socket", "", "NRI socket to dial (default: the upstream default)")
	)
	flag.Parse()

	var opts []stub.Option
	if *idx != "" {
		opts = append(opts, stub.WithPluginIdx(*idx))
	}
	if *name != "" {
		opts = append(opts, stub.WithPluginName(*name))
	}
	if *socket != "" {
		opts = append(opts, stub.WithSocketPath(*socket))
	}
	s, err := stub.New(plugin{}, opts...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench-plugin: create stub: %v\n", err)
		os.Exit(1)
	}
	if err := s.Run(context.Background()); err != nil {
		fmt.Fprintf(os.Stderr, "bench-plugin: plugin exited: %v\n", err)
		os.Exit(1)
	}
}
