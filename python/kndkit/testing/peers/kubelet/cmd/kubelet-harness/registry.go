package main

// The kubelet's plugin registration, as a test peer: watch a registry
// directory, and for each new socket call GetInfo, validate the answer,
// keep the plugin and tell it the outcome with NotifyRegistrationStatus.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	drahealthv1 "k8s.io/kubelet/pkg/apis/dra-health/v1"
	drahealthv1alpha1 "k8s.io/kubelet/pkg/apis/dra-health/v1alpha1"
	drav1 "k8s.io/kubelet/pkg/apis/dra/v1"
	drav1beta1 "k8s.io/kubelet/pkg/apis/dra/v1beta1"
	regapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// callTimeout is what the kubelet gives each plugin call.
const callTimeout = 45 * time.Second

// Names of the optional health service's versions in supported_versions.
const (
	healthV1       = drahealthv1.DRAResourceHealthService
	healthV1alpha1 = drahealthv1alpha1.DRAResourceHealthService
)

// plugin is one registered endpoint of a driver.
type plugin struct {
	Driver            string    `json:"driver"`
	Endpoint          string    `json:"endpoint"`
	Socket            string    `json:"socket"`
	Version           string    `json:"version"`
	SupportedVersions []string  `json:"supported_versions"`
	Health            bool      `json:"health"`
	HealthVersion     string    `json:"health_version"`
	RegisteredAt      time.Time `json:"registered_at"`
	seq               uint64
	conn              *grpc.ClientConn
}

type registry struct {
	mu sync.Mutex
	// byDriver holds every registered endpoint of a driver, oldest first.
	byDriver map[string][]*plugin
	// bySocket maps a registration socket path to what it registered.
	bySocket map[string]*plugin
	// attempts counts registrations in flight per socket, so a socket
	// deleted during its registration is not registered afterwards.
	gen     map[string]uint64
	seq     uint64
	changed chan struct{}

	supported       []string // the DRA service versions this harness accepts
	healthSupported []string // the health service versions it accepts
	out             *output
}

func newRegistry(supported, healthSupported []string, out *output) *registry {
	return &registry{
		healthSupported: healthSupported,
		byDriver:        map[string][]*plugin{},
		bySocket:        map[string]*plugin{},
		gen:             map[string]uint64{},
		changed:         make(chan struct{}),
		supported:       supported,
		out:             out,
	}
}

// notifyLocked wakes every waiter; r.mu must be held.
func (r *registry) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// current returns the newest registered endpoint of a driver.
func (r *registry) current(driver string) (*plugin, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ps := r.byDriver[driver]
	if len(ps) == 0 {
		return nil, r.changed
	}
	return ps[len(ps)-1], r.changed
}

func (r *registry) list() []*plugin {
	r.mu.Lock()
	defer r.mu.Unlock()
	var all []*plugin
	for _, ps := range r.byDriver {
		all = append(all, ps...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].seq < all[j].seq })
	return all
}

// chooseVersion walks the plugin's list in the plugin's order and returns
// the first DRA service version this harness supports.
func (r *registry) chooseVersion(versions []string) (string, error) {
	if len(versions) == 0 {
		return "", errors.New("empty list of supported gRPC services")
	}
	for _, v := range versions {
		for _, s := range r.supported {
			if v == s {
				return v, nil
			}
		}
	}
	return "", fmt.Errorf("none of the plugin's services %q is supported (harness supports %q)", versions, r.supported)
}

func validateInfo(info *regapi.PluginInfo) error {
	if info.Type != regapi.DRAPlugin {
		return fmt.Errorf("no handler registered for plugin type %q", info.Type)
	}
	if info.Name == "" {
		return errors.New("plugin name is empty")
	}
	if info.Endpoint == "" || !filepath.IsAbs(info.Endpoint) {
		return fmt.Errorf("endpoint %q is not an absolute path", info.Endpoint)
	}
	return nil
}

// register performs one registration attempt of the socket at path.
func (r *registry) register(path string) {
	r.mu.Lock()
	r.gen[path]++
	gen := r.gen[path]
	old := r.bySocket[path]
	r.mu.Unlock()
	if old != nil {
		// The socket was re-created: the previous instance is gone.
		r.deregister(path, "socket re-created")
		r.mu.Lock()
		r.gen[path] = gen
		r.mu.Unlock()
	}

	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	conn, err := dialUnix(path)
	if err != nil {
		r.out.event("registration_failed", map[string]any{"socket": path, "stage": "dial", "error": err.Error()})
		return
	}
	defer func() { _ = conn.Close() }()
	client := regapi.NewRegistrationClient(conn)

	// The socket exists before its server is serving for a moment:
	// retry the first call for transport errors only, as the kubelet's
	// reconciler would, within the call timeout.
	var info *regapi.PluginInfo
	for delay := 20 * time.Millisecond; ; delay *= 2 {
		info, err = client.GetInfo(ctx, &regapi.InfoRequest{})
		if err == nil || ctx.Err() != nil || !r.stillWanted(path, gen) {
			break
		}
		if delay > time.Second {
			delay = time.Second
		}
		time.Sleep(delay)
	}
	if err != nil {
		r.out.event("registration_failed", map[string]any{"socket": path, "stage": "GetInfo", "error": err.Error()})
		return
	}

	fail := func(reason error) {
		r.out.event("registration_failed", map[string]any{
			"socket": path, "stage": "validate", "driver": info.Name, "endpoint": info.Endpoint,
			"supported_versions": info.SupportedVersions, "error": reason.Error(),
		})
		_, nerr := client.NotifyRegistrationStatus(ctx, &regapi.RegistrationStatus{PluginRegistered: false, Error: reason.Error()})
		if nerr != nil {
			r.out.logf("NotifyRegistrationStatus(false) to %s: %v", path, nerr)
		}
	}
	if err := validateInfo(info); err != nil {
		fail(err)
		return
	}
	version, err := r.chooseVersion(info.SupportedVersions)
	if err != nil {
		fail(err)
		return
	}
	p := &plugin{
		Driver:            info.Name,
		Endpoint:          info.Endpoint,
		Socket:            path,
		Version:           version,
		SupportedVersions: append([]string(nil), info.SupportedVersions...),
		RegisteredAt:      time.Now().UTC(),
	}
	// The health service is optional: the first version in the plugin's
	// list that the harness accepts, if any.
health:
	for _, v := range info.SupportedVersions {
		for _, s := range r.healthSupported {
			if v == s {
				p.Health, p.HealthVersion = true, v
				break health
			}
		}
	}
	dra, err := dialUnix(p.Endpoint)
	if err != nil {
		fail(fmt.Errorf("connect to DRA endpoint: %w", err))
		return
	}
	p.conn = dra

	r.mu.Lock()
	if r.gen[path] != gen {
		r.mu.Unlock()
		_ = dra.Close()
		fail(errors.New("registration socket went away during registration"))
		return
	}
	for _, other := range r.byDriver[p.Driver] {
		if other.Endpoint == p.Endpoint {
			r.mu.Unlock()
			_ = dra.Close()
			fail(fmt.Errorf("driver %s, endpoint %s already registered", p.Driver, p.Endpoint))
			return
		}
	}
	r.seq++
	p.seq = r.seq
	r.byDriver[p.Driver] = append(r.byDriver[p.Driver], p)
	r.bySocket[path] = p
	r.mu.Unlock()

	if _, err := client.NotifyRegistrationStatus(ctx, &regapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		// The kubelet logs this and keeps the plugin registered.
		r.out.logf("NotifyRegistrationStatus(true) to %s: %v", path, err)
	}
	r.out.event("registered", map[string]any{
		"socket": path, "driver": p.Driver, "endpoint": p.Endpoint, "version": p.Version,
		"supported_versions": p.SupportedVersions, "health": p.Health, "health_version": p.HealthVersion,
	})
	r.mu.Lock()
	r.notifyLocked()
	r.mu.Unlock()
}

func (r *registry) stillWanted(path string, gen uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gen[path] == gen
}

// deregister forgets what the socket at path registered.
func (r *registry) deregister(path, reason string) {
	r.mu.Lock()
	r.gen[path]++
	p := r.bySocket[path]
	if p == nil {
		r.mu.Unlock()
		return
	}
	delete(r.bySocket, path)
	ps := r.byDriver[p.Driver]
	for i, other := range ps {
		if other == p {
			ps = append(ps[:i:i], ps[i+1:]...)
			break
		}
	}
	if len(ps) == 0 {
		delete(r.byDriver, p.Driver)
	} else {
		r.byDriver[p.Driver] = ps
	}
	r.notifyLocked()
	r.mu.Unlock()
	_ = p.conn.Close()
	r.out.event("deregistered", map[string]any{"socket": path, "driver": p.Driver, "endpoint": p.Endpoint, "reason": reason})
}

func (r *registry) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.bySocket {
		_ = p.conn.Close()
	}
}

func dialUnix(path string) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// The kubelet's messages can be large; match its generous limit.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16*1024*1024)),
	)
}

// ignored reports whether the kubelet's watcher skips this name.
func ignored(path string) bool {
	return strings.HasPrefix(filepath.Base(path), ".")
}

func isSocket(path string) bool {
	st, err := os.Lstat(path)
	return err == nil && st.Mode()&os.ModeSocket != 0
}

// watch runs the directory watcher until ctx ends.
func (r *registry) watch(ctx context.Context, dir string, ready func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer func() { _ = w.Close() }()

	// Add the watches first, then walk what already exists, so nothing
	// created in between is missed (a duplicate Create only re-registers).
	var existing []string
	walkErr := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if path != dir && ignored(path) {
			if info.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if info.IsDir() {
			return w.Add(path)
		}
		if info.Mode()&os.ModeSocket != 0 {
			existing = append(existing, path)
		}
		return nil
	})
	if walkErr != nil {
		return walkErr
	}
	for _, path := range existing {
		go r.register(path)
	}
	ready()

	for {
		select {
		case <-ctx.Done():
			return nil
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			r.out.logf("watcher error: %v", err)
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ignored(ev.Name) {
				continue
			}
			switch {
			case ev.Has(fsnotify.Create):
				st, err := os.Lstat(ev.Name)
				if err != nil {
					continue
				}
				if st.IsDir() {
					if err := w.Add(ev.Name); err != nil {
						r.out.logf("watch %s: %v", ev.Name, err)
					}
					continue
				}
				if isSocket(ev.Name) {
					go r.register(ev.Name)
				}
			case ev.Has(fsnotify.Remove), ev.Has(fsnotify.Rename):
				r.deregister(ev.Name, "socket removed")
			}
		}
	}
}

// DRA clients for the chosen version of a plugin.
func (p *plugin) v1() drav1.DRAPluginClient { return drav1.NewDRAPluginClient(p.conn) }
func (p *plugin) v1beta1() drav1beta1.DRAPluginClient {
	return drav1beta1.NewDRAPluginClient(p.conn)
}
func (p *plugin) healthV1() drahealthv1.DRAResourceHealthClient {
	return drahealthv1.NewDRAResourceHealthClient(p.conn)
}
func (p *plugin) healthV1alpha1() drahealthv1alpha1.DRAResourceHealthClient {
	return drahealthv1alpha1.NewDRAResourceHealthClient(p.conn)
}
