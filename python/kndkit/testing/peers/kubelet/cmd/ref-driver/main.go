// Command ref-driver is a minimal DRA driver built on the upstream helper
// k8s.io/dynamic-resource-allocation/kubeletplugin. It exists to prove the
// kubelet harness against the real upstream plugin side: it registers in a
// registry directory, prepares one device per allocation result of each
// claim (the helper GETs the claim from the API server first), unprepares
// without complaint, and optionally streams device health.
package main

import (
	"context"
	"encoding/json"
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

	"google.golang.org/grpc"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
)

type driver struct {
	name       string
	cdiVendor  string
	mu         sync.Mutex
	prepared   map[types.UID][]kubeletplugin.Device
	cancelMain context.CancelCauseFunc

	health         bool
	healthPool     string
	healthDevices  []string
	unhealthy      map[string]bool
	healthInterval time.Duration

	// Timing of the claim lookups (--timing): when the current
	// NodePrepareResources call entered the gRPC server, and for each call
	// how long it took until PrepareResourceClaims was called, which is the
	// helper's GET of every claim (plus its lock and request conversion).
	timingMu  sync.Mutex
	timing    bool
	callStart time.Time
	getNS     []int64
}

// intercept notes when each NodePrepareResources call (v1 or v1beta1)
// arrives; the helper serialises calls, so one field is enough.
func (d *driver) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if strings.HasSuffix(info.FullMethod, "/NodePrepareResources") {
		d.timingMu.Lock()
		d.callStart = time.Now()
		d.timingMu.Unlock()
	}
	return handler(ctx, req)
}

// dumpTimings prints the collected lookup durations and forgets them.
func (d *driver) dumpTimings() {
	d.timingMu.Lock()
	got := d.getNS
	d.getNS = nil
	d.timingMu.Unlock()
	b, _ := json.Marshal(map[string]any{"event": "timings", "get_ns": got})
	fmt.Println(string(b))
}

func (d *driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	if d.timing {
		d.timingMu.Lock()
		if !d.callStart.IsZero() {
			d.getNS = append(d.getNS, time.Since(d.callStart).Nanoseconds())
			d.callStart = time.Time{}
		}
		d.timingMu.Unlock()
	}
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

// WatchHealthStatus implements the helper's version-neutral health API; the
// helper serves it as v1.DRAResourceHealth and v1alpha1.DRAResourceHealth.
func (d *driver) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	if !d.health {
		return kubeletplugin.ErrHealthNotSupported
	}
	t := time.NewTicker(d.healthInterval)
	defer t.Stop()
	for {
		report := kubeletplugin.DeviceHealthReport{}
		for _, name := range d.healthDevices {
			h := kubeletplugin.HealthStatusHealthy
			msg := "ok"
			if d.unhealthy[name] {
				h, msg = kubeletplugin.HealthStatusUnhealthy, "reported unhealthy by --health-unhealthy"
			}
			report.Devices = append(report.Devices, kubeletplugin.DeviceHealth{
				PoolName: d.healthPool, DeviceName: name, Health: h,
				LastUpdated: time.Now(), HealthCheckTimeout: 30 * time.Second, Message: msg,
			})
		}
		select {
		case <-ctx.Done():
			return nil
		case reports <- report:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func kubeClient(kubeconfig string, qps float64, burst int) (kubernetes.Interface, error) {
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
	// client-go's defaults (5 QPS, burst 10) throttle a benchmark's loop of
	// claim GETs to one per 200 ms; the benchmark lifts them.
	if qps > 0 {
		cfg.QPS = float32(qps)
	}
	if burst > 0 {
		cfg.Burst = burst
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
	health := flag.Bool("health", false, "advertise and serve DRAResourceHealth")
	healthVersions := flag.String("health-versions", "v1,v1alpha1", "DRAResourceHealth versions to serve: v1, v1alpha1")
	healthPool := flag.String("health-pool", "", "pool reported by the health stream (default: node name)")
	healthDevices := flag.String("health-devices", "dev-0", "comma-separated devices reported by the health stream")
	healthBad := flag.String("health-unhealthy", "", "comma-separated devices reported UNHEALTHY")
	healthInterval := flag.Duration("health-interval", 500*time.Millisecond, "interval between health messages")
	rollingUID := flag.String("rolling-update-uid", "", "enable rolling updates with this instance UID")
	regSocket := flag.String("registrar-socket", "", "registration socket file name (default <driver>-reg.sock)")
	publishDevices := flag.Int("publish-devices", 0, "publish this many devices (pool = node name) through the helper's PublishResources; SIGUSR1 publishes the same set again")
	perSlice := flag.Int("publish-per-slice", 128, "devices per ResourceSlice when publishing")
	kubeQPS := flag.Float64("kube-api-qps", 0, "client-side rate limit of API requests (0: client-go's default, 5)")
	kubeBurst := flag.Int("kube-api-burst", 0, "client-side burst of API requests (0: client-go's default, 10)")
	timing := flag.Bool("timing", false, "time the helper's claim lookups; SIGUSR2 prints them as a timings event")
	flag.Parse()

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sigCtx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	client, err := kubeClient(*kubeconfig, *kubeQPS, *kubeBurst)
	if err != nil {
		klog.ErrorS(err, "kube client")
		os.Exit(1)
	}

	d := &driver{name: *driverName, cdiVendor: "kndkit.test", prepared: map[types.UID][]kubeletplugin.Device{}, cancelMain: cancel}
	if *health {
		d.health = true
		d.healthPool = *healthPool
		if d.healthPool == "" {
			d.healthPool = *nodeName
		}
		d.healthDevices = splitList(*healthDevices)
		sort.Strings(d.healthDevices)
		d.unhealthy = map[string]bool{}
		for _, s := range splitList(*healthBad) {
			d.unhealthy[s] = true
		}
		d.healthInterval = *healthInterval
	}

	opts := []kubeletplugin.Option{
		kubeletplugin.DriverName(*driverName),
		kubeletplugin.NodeName(*nodeName),
		kubeletplugin.KubeClient(client),
		kubeletplugin.RegistrarDirectoryPath(*registryDir),
		kubeletplugin.HealthService(*health),
	}
	hv1, hv1alpha1 := false, false
	for _, v := range splitList(*healthVersions) {
		switch v {
		case "v1":
			hv1 = true
		case "v1alpha1":
			hv1alpha1 = true
		default:
			klog.ErrorS(nil, "unknown version in --health-versions", "version", v)
			os.Exit(2)
		}
	}
	opts = append(opts, kubeletplugin.HealthV1(hv1), kubeletplugin.HealthV1alpha1(hv1alpha1))
	if *dataDir != "" {
		opts = append(opts, kubeletplugin.PluginDataDirectoryPath(*dataDir))
	}
	if *rollingUID != "" {
		opts = append(opts, kubeletplugin.RollingUpdate(types.UID(*rollingUID)))
	}
	if *timing {
		d.timing = true
		opts = append(opts, kubeletplugin.GRPCInterceptor(d.intercept))
		usr2 := make(chan os.Signal, 1)
		signal.Notify(usr2, syscall.SIGUSR2)
		go func() {
			for range usr2 {
				d.dumpTimings()
			}
		}()
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

	helper, err := kubeletplugin.Start(ctx, d, opts...)
	if err != nil {
		klog.ErrorS(err, "start kubelet plugin helper")
		os.Exit(1)
	}
	fmt.Printf("{\"event\":\"ready\",\"driver\":%q,\"pid\":%d}\n", *driverName, os.Getpid())

	if *publishDevices > 0 {
		res := deviceResources(*nodeName, *publishDevices, *perSlice)
		publish := func() {
			// time_ns (CLOCK_REALTIME) lets the test measure from here to
			// the moment its watch sees the whole pool.
			fmt.Printf("{\"event\":\"publishing\",\"devices\":%d,\"time_ns\":%d}\n", *publishDevices, time.Now().UnixNano())
			if err := helper.PublishResources(ctx, res); err != nil {
				klog.ErrorS(err, "publish resources")
				cancel(err)
			}
		}
		publish()
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		go func() {
			for {
				select {
				case <-sigCtx.Done():
					return
				case <-usr1:
					publish()
				}
			}
		}()
	}

	<-sigCtx.Done()
	helper.Stop()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		klog.ErrorS(cause, "stopped on error")
		os.Exit(1)
	}
	klog.Info("stopped")
}

// deviceResources lays n devices named dev-NNNN out in one pool named after
// the node, perSlice devices per slice, each with a few attributes and a
// capacity (the shape of a NIC as kndkit publishes it).
func deviceResources(pool string, n, perSlice int) resourceslice.DriverResources {
	if perSlice <= 0 {
		perSlice = 128
	}
	var slices []resourceslice.Slice
	for start := 0; start < n; start += perSlice {
		var devs []resourceapi.Device
		for i := start; i < n && i < start+perSlice; i++ {
			devs = append(devs, resourceapi.Device{
				Name: fmt.Sprintf("dev-%04d", i),
				Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
					"ifName": {StringValue: ptr.To(fmt.Sprintf("eth%d", i))},
					"index":  {IntValue: ptr.To(int64(i))},
					"sriov":  {BoolValue: ptr.To(false)},
				},
				Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
					"mtu": {Value: resource.MustParse("9000")},
				},
			})
		}
		slices = append(slices, resourceslice.Slice{Devices: devs})
	}
	return resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{pool: {Slices: slices}}}
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
