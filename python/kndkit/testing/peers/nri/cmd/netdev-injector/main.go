// Command netdev-injector is kndkit's stand-in for the upstream NRI sample
// plugin "network-device-injector" (which the Go module proxy does not serve:
// it is a nested module of github.com/containerd/nri without tags of its own).
//
// It is built on the upstream plugin stub (github.com/containerd/nri/pkg/stub)
// of the same NRI version as the harness and follows the sample plugin's
// contract: a pod annotation lists host links by name; on RunPodSandbox each is
// moved into the pod's network namespace (optionally renamed, its host name
// kept as the link alias) and brought up; on StopPodSandbox it is brought down,
// moved back and renamed to its host name again.
//
// Annotation keys, in order of precedence: netdevice.noderesource.dev/pod,
// netdevices.nri.containerd.io/pod, netdevice.noderesource.dev,
// netdevices.nri.containerd.io. Value: a YAML list of
// {name, new_name, address, prefix, mtu}.
//
// For tests it can also record every event it receives as JSON lines (-events)
// and add an environment variable to every container it sees created (-env),
// answer RunPodSandbox late (-run-delay), or request an unsolicited container
// update after PostStartContainer (-request-updates).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"sigs.k8s.io/yaml"
)

var annotationKeys = []string{
	"netdevice.noderesource.dev/pod",
	"netdevices.nri.containerd.io/pod",
	"netdevice.noderesource.dev",
	"netdevices.nri.containerd.io",
}

// netDevice is one entry of the annotation.
type netDevice struct {
	Name    string `json:"name"`
	NewName string `json:"new_name"`
	Address string `json:"address"`
	Prefix  int    `json:"prefix"`
	MTU     int    `json:"mtu"`
}

type plugin struct {
	stub   stub.Stub
	update bool // request an unsolicited update for each started container
	delay  time.Duration
	env    []*api.KeyValue
	events *os.File
	mu     sync.Mutex
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "netdev-injector: "+format+"\n", args...)
}

// record appends one event line to the -events file.
func (p *plugin) record(event string, pods []*api.PodSandbox, ctrs []*api.Container) {
	if p.events == nil {
		return
	}
	line := map[string]any{"event": event}
	var podNames, ctrNames []string
	for _, pod := range pods {
		podNames = append(podNames, pod.GetNamespace()+"/"+pod.GetName())
	}
	for _, c := range ctrs {
		ctrNames = append(ctrNames, c.GetName())
	}
	line["pods"] = podNames
	line["containers"] = ctrNames
	buf, _ := json.Marshal(line)
	p.mu.Lock()
	defer p.mu.Unlock()
	_, _ = p.events.Write(append(buf, '\n'))
}

func parseDevices(annotations map[string]string) ([]netDevice, error) {
	for _, key := range annotationKeys {
		value, ok := annotations[key]
		if !ok {
			continue
		}
		var devs []netDevice
		if err := yaml.Unmarshal([]byte(value), &devs); err != nil {
			return nil, fmt.Errorf("invalid device annotation %q: %w", key, err)
		}
		for i := range devs {
			d := &devs[i]
			if d.Name == "" {
				return nil, fmt.Errorf("invalid device annotation %q: entry %d has no name", key, i)
			}
			if d.NewName == "" {
				d.NewName = d.Name
			}
			if d.Address != "" {
				ip := net.ParseIP(d.Address)
				if ip == nil {
					return nil, fmt.Errorf("invalid device annotation %q: bad address %q", key, d.Address)
				}
				if d.Prefix == 0 {
					d.Prefix = 128
					if ip.To4() != nil {
						d.Prefix = 32
					}
				}
			}
		}
		return devs, nil
	}
	return nil, nil
}

func podNetNS(pod *api.PodSandbox) string {
	for _, ns := range pod.GetLinux().GetNamespaces() {
		if ns.GetType() == "network" {
			return ns.GetPath()
		}
	}
	return ""
}

// moveIn moves host link d.Name into the namespace at nsPath as d.NewName.
func moveIn(d netDevice, nsPath string) error {
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open pod netns %s: %w", nsPath, err)
	}
	defer target.Close()
	inside, err := netlink.NewHandleAt(target)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", nsPath, err)
	}
	defer inside.Close()

	link, err := netlink.LinkByName(d.Name)
	if err != nil {
		return fmt.Errorf("host link %q: %w", d.Name, err)
	}
	if err := netlink.LinkSetDown(link); err != nil {
		return fmt.Errorf("set %q down: %w", d.Name, err)
	}
	if err := netlink.LinkSetNsFd(link, int(target)); err != nil {
		return fmt.Errorf("move %q into %s: %w", d.Name, nsPath, err)
	}
	moved, err := inside.LinkByName(d.Name)
	if err != nil {
		return fmt.Errorf("find %q in %s: %w", d.Name, nsPath, err)
	}
	undo := func() {
		host, herr := netns.Get()
		if herr == nil {
			_ = inside.LinkSetName(moved, d.Name)
			_ = inside.LinkSetNsFd(moved, int(host))
			host.Close()
		}
	}
	if err := inside.LinkSetAlias(moved, d.Name); err != nil {
		undo()
		return fmt.Errorf("set alias of %q: %w", d.Name, err)
	}
	if d.NewName != d.Name {
		if err := inside.LinkSetName(moved, d.NewName); err != nil {
			undo()
			return fmt.Errorf("rename %q to %q: %w", d.Name, d.NewName, err)
		}
	}
	if d.MTU > 0 {
		if err := inside.LinkSetMTU(moved, d.MTU); err != nil {
			undo()
			return fmt.Errorf("set mtu of %q: %w", d.NewName, err)
		}
	}
	if d.Address != "" {
		addr := &netlink.Addr{IPNet: &net.IPNet{
			IP:   net.ParseIP(d.Address),
			Mask: net.CIDRMask(d.Prefix, 8*len(maybeV4(net.ParseIP(d.Address)))),
		}}
		if err := inside.AddrAdd(moved, addr); err != nil {
			undo()
			return fmt.Errorf("add address to %q: %w", d.NewName, err)
		}
	}
	if err := inside.LinkSetUp(moved); err != nil {
		undo()
		return fmt.Errorf("set %q up: %w", d.NewName, err)
	}
	logf("moved %s into %s as %s", d.Name, nsPath, d.NewName)
	return nil
}

func maybeV4(ip net.IP) net.IP {
	if v4 := ip.To4(); v4 != nil {
		return v4
	}
	return ip
}

// moveOut returns d.NewName from the namespace at nsPath to the host as its alias (d.Name).
func moveOut(d netDevice, nsPath string) error {
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open pod netns %s: %w", nsPath, err)
	}
	defer target.Close()
	inside, err := netlink.NewHandleAt(target)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", nsPath, err)
	}
	defer inside.Close()
	host, err := netns.Get()
	if err != nil {
		return fmt.Errorf("open host netns: %w", err)
	}
	defer host.Close()

	link, err := inside.LinkByName(d.NewName)
	if err != nil {
		return fmt.Errorf("find %q in %s: %w", d.NewName, nsPath, err)
	}
	hostName := link.Attrs().Alias
	if hostName == "" {
		hostName = d.Name
	}
	if err := inside.LinkSetDown(link); err != nil {
		return fmt.Errorf("set %q down: %w", d.NewName, err)
	}
	// Take the host name before leaving so that no rename is needed on the host.
	if hostName != d.NewName {
		if err := inside.LinkSetName(link, hostName); err != nil {
			return fmt.Errorf("rename %q to %q: %w", d.NewName, hostName, err)
		}
	}
	if err := inside.LinkSetNsFd(link, int(host)); err != nil {
		_ = inside.LinkSetName(link, d.NewName)
		return fmt.Errorf("move %q to the host: %w", hostName, err)
	}
	logf("moved %s out of %s as %s", d.NewName, nsPath, hostName)
	return nil
}

func (p *plugin) Synchronize(_ context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	p.record("Synchronize", pods, ctrs)
	return nil, nil
}

func (p *plugin) RunPodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.record("RunPodSandbox", []*api.PodSandbox{pod}, nil)
	time.Sleep(p.delay)
	devs, err := parseDevices(pod.GetAnnotations())
	if err != nil || len(devs) == 0 {
		return err
	}
	nsPath := podNetNS(pod)
	if nsPath == "" {
		return fmt.Errorf("pod %s/%s uses the host network: cannot inject network devices",
			pod.GetNamespace(), pod.GetName())
	}
	for i, d := range devs {
		if err := moveIn(d, nsPath); err != nil {
			// give back what was already moved: all or nothing
			for j := i - 1; j >= 0; j-- {
				if uerr := moveOut(devs[j], nsPath); uerr != nil {
					logf("rollback of %s failed: %v", devs[j].Name, uerr)
				}
			}
			return err
		}
	}
	return nil
}

func (p *plugin) StopPodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.record("StopPodSandbox", []*api.PodSandbox{pod}, nil)
	devs, err := parseDevices(pod.GetAnnotations())
	if err != nil || len(devs) == 0 {
		return err
	}
	nsPath := podNetNS(pod)
	if nsPath == "" {
		return nil
	}
	var errs []string
	for _, d := range devs {
		if err := moveOut(d, nsPath); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

func (p *plugin) RemovePodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.record("RemovePodSandbox", []*api.PodSandbox{pod}, nil)
	return nil
}

func (p *plugin) CreateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	p.record("CreateContainer", []*api.PodSandbox{pod}, []*api.Container{ctr})
	if len(p.env) == 0 {
		return nil, nil, nil
	}
	adjust := &api.ContainerAdjustment{}
	for _, kv := range p.env {
		adjust.AddEnv(kv.Key, kv.Value)
	}
	return adjust, nil, nil
}

// The remaining events are only recorded (for tests of the harness itself).

func (p *plugin) UpdatePodSandbox(_ context.Context, pod *api.PodSandbox, _, _ *api.LinuxResources) error {
	p.record("UpdatePodSandbox", []*api.PodSandbox{pod}, nil)
	return nil
}

func (p *plugin) PostUpdatePodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.record("PostUpdatePodSandbox", []*api.PodSandbox{pod}, nil)
	return nil
}

func (p *plugin) PostCreateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p.record("PostCreateContainer", []*api.PodSandbox{pod}, []*api.Container{ctr})
	return nil
}

func (p *plugin) StartContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p.record("StartContainer", []*api.PodSandbox{pod}, []*api.Container{ctr})
	return nil
}

func (p *plugin) PostStartContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p.record("PostStartContainer", []*api.PodSandbox{pod}, []*api.Container{ctr})
	if p.update {
		// Outside the event: the runtime is still waiting for our answer.
		go p.requestUpdate(ctr.GetId())
	}
	return nil
}

// requestUpdate asks the runtime, unsolicited, to set the container's memory
// limit and records which updates the runtime reported failed.
func (p *plugin) requestUpdate(id string) {
	u := &api.ContainerUpdate{ContainerId: id}
	u.SetLinuxMemoryLimit(256 << 20)
	failed, err := p.stub.UpdateContainers([]*api.ContainerUpdate{u})
	var ids []string
	for _, f := range failed {
		ids = append(ids, f.GetContainerId())
	}
	line := map[string]any{"event": "UpdateContainersResult", "failed": ids}
	if err != nil {
		line["error"] = err.Error()
	}
	buf, _ := json.Marshal(line)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.events != nil {
		_, _ = p.events.Write(append(buf, '\n'))
	}
}

func (p *plugin) UpdateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container, _ *api.LinuxResources) ([]*api.ContainerUpdate, error) {
	p.record("UpdateContainer", []*api.PodSandbox{pod}, []*api.Container{ctr})
	return nil, nil
}

func (p *plugin) PostUpdateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p.record("PostUpdateContainer", []*api.PodSandbox{pod}, []*api.Container{ctr})
	return nil
}

func (p *plugin) StopContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	p.record("StopContainer", []*api.PodSandbox{pod}, []*api.Container{ctr})
	return nil, nil
}

func (p *plugin) RemoveContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p.record("RemoveContainer", []*api.PodSandbox{pod}, []*api.Container{ctr})
	return nil
}

type envFlags []*api.KeyValue

func (e *envFlags) String() string { return fmt.Sprint(*e) }
func (e *envFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", s)
	}
	*e = append(*e, &api.KeyValue{Key: k, Value: v})
	return nil
}

func main() {
	var (
		idx    = flag.String("idx", "", "plugin index to register with (two digits)")
		name   = flag.String("name", "", "plugin name to register with (default: the binary's name)")
		socket = flag.String("socket", "", "NRI socket to dial (default: the upstream default)")
		events = flag.String("events", "", "append a JSON line per received event to this file")
		delay  = flag.Duration("run-delay", 0, "sleep this long in RunPodSandbox (to test request timeouts)")
		update = flag.Bool("request-updates", false, "after PostStartContainer, request an unsolicited memory-limit update of that container")
		env    envFlags
	)
	flag.Var(&env, "env", "KEY=VALUE to add to every created container (repeatable)")
	flag.Parse()

	p := &plugin{env: env, delay: *delay, update: *update}
	if *events != "" {
		f, err := os.OpenFile(*events, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			logf("open events file: %v", err)
			os.Exit(2)
		}
		defer f.Close()
		p.events = f
	}

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
	var err error
	if p.stub, err = stub.New(p, opts...); err != nil {
		logf("create stub: %v", err)
		os.Exit(1)
	}
	if err := p.stub.Run(context.Background()); err != nil {
		logf("plugin exited: %v", err)
		os.Exit(1)
	}
}
