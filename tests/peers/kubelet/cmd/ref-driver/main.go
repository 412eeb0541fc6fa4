// Command ref-driver is a minimal DRA driver built on the upstream helper
// k8s.io/dynamic-resource-allocation/kubeletplugin. It exists to prove the
// kubelet harness against the real upstream plugin side: it registers in a
// registry directory, prepares one device per allocation result of each
// claim (the helper GETs the claim from the API server first), unprepares
// without complaint, and optionally streams device health.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"
	drahealth "k8s.io/kubelet/pkg/apis/dra-health/v1alpha1"
)

type driver struct {
	name       string
	cdiVendor  string
	mu         sync.Mutex
	prepared   map[types.UID][]kubeletplugin.Device
	cancelMain context.CancelCauseFunc
}

func (d *driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	logger := klog.FromContext(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	for _, c := range claims {
		var devs []kubeletplugin.Device
		for _, r := range c.Status.Allocation.Devices.Results {
			if r.Driver != d.name {
				continue
			}
			devs = append(devs, kubeletplugin.Device{
				Requests:     []string{r.Request},
				PoolName:     r.Pool,
				DeviceName:   r.Device,
				CDIDeviceIDs: []string{fmt.Sprintf("%s/net=%s-%s", d.cdiVendor, c.UID, r.Device)},
			})
		}
		if len(devs) == 0 {
			out[c.UID] = kubeletplugin.PrepareResult{Err: fmt.Errorf("claim %s/%s has no device of driver %s", c.Namespace, c.Name, d.name)}
			continue
		}
		d.prepared[c.UID] = devs
		out[c.UID] = kubeletplugin.PrepareResult{Devices: devs}
		logger.Info("prepared", "claim", klog.KObj(c), "uid", c.UID, "devices", len(devs))
	}
	return out, nil
}

func (d *driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[types.UID]error, len(claims))
	for _, c := range claims {
		delete(d.prepared, c.UID)
		out[c.UID] = nil
		klog.FromContext(ctx).Info("unprepared", "claim", c.NamespacedName, "uid", c.UID)
	}
	return out, nil
}

func (d *driver) HandleError(ctx context.Context, err error, msg string) {
	klog.FromContext(ctx).Error(err, msg)
	if !errors.Is(err, kubeletplugin.ErrRecoverable) {
		d.cancelMain(fmt.Errorf("%s: %w", msg, err))
	}
}

// healthDriver adds the optional DRAResourceHealth service; the helper
// detects it by type assertion and then lists v1alpha1.DRAResourceHealth.
type healthDriver struct {
	*driver
	pool      string
	devices   []string
	unhealthy map[string]bool
	interval  time.Duration
	drahealth.UnimplementedDRAResourceHealthServer
}

func (h *healthDriver) snapshot() *drahealth.NodeWatchResourcesResponse {
	now := time.Now().Unix()
	resp := &drahealth.NodeWatchResourcesResponse{}
	for _, name := range h.devices {
		health := drahealth.HealthStatus_HEALTHY
		if h.unhealthy[name] {
			health = drahealth.HealthStatus_UNHEALTHY
		}
		resp.Devices = append(resp.Devices, &drahealth.DeviceHealth{
			Device:                    &drahealth.DeviceIdentifier{PoolName: h.pool, DeviceName: name},
			Health:                    health,
			LastUpdatedTime:           now,
			HealthCheckTimeoutSeconds: 30,
		})
	}
	return resp
}

func (h *healthDriver) NodeWatchResources(_ *drahealth.NodeWatchResourcesRequest, stream drahealth.DRAResourceHealth_NodeWatchResourcesServer) error {
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		if err := stream.Send(h.snapshot()); err != nil {
			return err
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-t.C:
		}
	}
}

func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
		}
		cfg = c
	} else {
		// The helper insists on a client; without an API server every
		// claim lookup fails (connection refused), which tests may want.
		cfg = &rest.Config{Host: "http://127.0.0.1:1", Timeout: 5 * time.Second}
	}
	return kubernetes.NewForConfig(cfg)
}

func main() {
	klog.InitFlags(nil)
	registryDir := flag.String("registry-dir", kubeletplugin.KubeletRegistryDir, "kubelet plugin registry directory")
	dataDir := flag.String("plugin-data-dir", "", "plugin data directory holding dra.sock (default /var/lib/kubelet/plugins/<driver>)")
	driverName := flag.String("driver-name", "ref.kndkit.test", "DRA driver name")
	nodeName := flag.String("node-name", "", "node name")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig for claim lookups (empty: an unreachable server)")
	versions := flag.String("versions", "v1,v1beta1", "DRA node services to serve, in order of preference: v1, v1beta1")
	health := flag.Bool("health", false, "serve v1alpha1.DRAResourceHealth")
	healthPool := flag.String("health-pool", "", "pool reported by the health stream (default: node name)")
	healthDevices := flag.String("health-devices", "dev-0", "comma-separated devices reported by the health stream")
	healthBad := flag.String("health-unhealthy", "", "comma-separated devices reported UNHEALTHY")
	healthInterval := flag.Duration("health-interval", 500*time.Millisecond, "interval between health messages")
	rollingUID := flag.String("rolling-update-uid", "", "enable rolling updates with this instance UID")
	regSocket := flag.String("registrar-socket", "", "registration socket file name (default <driver>-reg.sock)")
	flag.Parse()

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sigCtx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	client, err := kubeClient(*kubeconfig)
	if err != nil {
		klog.ErrorS(err, "kube client")
		os.Exit(1)
	}

	d := &driver{name: *driverName, cdiVendor: "kndkit.test", prepared: map[types.UID][]kubeletplugin.Device{}, cancelMain: cancel}
	var impl kubeletplugin.DRAPlugin = d
	if *health {
		pool := *healthPool
		if pool == "" {
			pool = *nodeName
		}
		var devs []string
		for _, s := range strings.Split(*healthDevices, ",") {
			if s = strings.TrimSpace(s); s != "" {
				devs = append(devs, s)
			}
		}
		sort.Strings(devs)
		bad := map[string]bool{}
		for _, s := range strings.Split(*healthBad, ",") {
			if s = strings.TrimSpace(s); s != "" {
				bad[s] = true
			}
		}
		impl = &healthDriver{driver: d, pool: pool, devices: devs, unhealthy: bad, interval: *healthInterval}
	}

	opts := []kubeletplugin.Option{
		kubeletplugin.DriverName(*driverName),
		kubeletplugin.NodeName(*nodeName),
		kubeletplugin.KubeClient(client),
		kubeletplugin.RegistrarDirectoryPath(*registryDir),
	}
	if *dataDir != "" {
		opts = append(opts, kubeletplugin.PluginDataDirectoryPath(*dataDir))
	}
	if *rollingUID != "" {
		opts = append(opts, kubeletplugin.RollingUpdate(types.UID(*rollingUID)))
	}
	if *regSocket != "" {
		opts = append(opts, kubeletplugin.RegistrarSocketFilename(*regSocket))
	}
	v1, v1beta1 := false, false
	for _, v := range strings.Split(*versions, ",") {
		switch strings.TrimSpace(v) {
		case "v1":
			v1 = true
		case "v1beta1":
			v1beta1 = true
		case "":
		default:
			klog.ErrorS(nil, "unknown version in --versions", "version", v)
			os.Exit(2)
		}
	}
	opts = append(opts, kubeletplugin.NodeV1(v1), kubeletplugin.NodeV1beta1(v1beta1))

	helper, err := kubeletplugin.Start(ctx, impl, opts...)
	if err != nil {
		klog.ErrorS(err, "start kubelet plugin helper")
		os.Exit(1)
	}
	fmt.Printf("{\"event\":\"ready\",\"driver\":%q,\"pid\":%d}\n", *driverName, os.Getpid())

	<-sigCtx.Done()
	helper.Stop()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		klog.ErrorS(cause, "stopped on error")
		os.Exit(1)
	}
	klog.Info("stopped")
}
