// Command kubelet-harness plays the kubelet's side of Dynamic Resource
// Allocation for tests: plugin registration through a watched directory,
// NodePrepareResources / NodeUnprepareResources (v1 or v1beta1) and the
// NodeWatchResources health stream.
//
// It is driven by newline-delimited JSON on stdin and answers on stdout;
// see ../../README.md for the protocol.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	drahealthv1 "k8s.io/kubelet/pkg/apis/dra-health/v1"
	drahealthv1alpha1 "k8s.io/kubelet/pkg/apis/dra-health/v1alpha1"
	drav1 "k8s.io/kubelet/pkg/apis/dra/v1"
	drav1beta1 "k8s.io/kubelet/pkg/apis/dra/v1beta1"
)

// output serialises everything written to stdout (one JSON object a line)
// and sends diagnostics to stderr.
type output struct {
	mu sync.Mutex
	w  io.Writer
}

func (o *output) write(v map[string]any) {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(map[string]any{"event": "internal_error", "error": err.Error()})
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	_, _ = o.w.Write(append(b, '\n'))
}

func (o *output) event(name string, fields map[string]any) {
	m := map[string]any{"event": name, "time": time.Now().UTC().Format(time.RFC3339Nano)}
	for k, v := range fields {
		m[k] = v
	}
	o.write(m)
}

func (o *output) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kubelet-harness: "+format+"\n", args...)
}

// request is one command line. Unknown fields are rejected.
type request struct {
	ID        json.RawMessage `json:"id,omitempty"`
	Cmd       string          `json:"cmd"`
	Driver    string          `json:"driver,omitempty"`
	TimeoutMS int64           `json:"timeout_ms,omitempty"`
	Claims    []claim         `json:"claims,omitempty"`
	API       string          `json:"api,omitempty"`
	Count     int             `json:"count,omitempty"`
	Warmup    int             `json:"warmup,omitempty"`
}

type claim struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

// cmdError is a failed command; code is a short machine-readable word.
type cmdError struct {
	code string
	msg  string
}

func (e *cmdError) Error() string { return e.msg }

func fail(code, format string, args ...any) error {
	return &cmdError{code: code, msg: fmt.Sprintf(format, args...)}
}

type harness struct {
	reg      *registry
	out      *output
	nodeName string
	shutdown context.CancelFunc
}

var jsonOut = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// protoMap renders a protobuf message as a generic JSON object.
func protoMap(m proto.Message) (any, error) {
	b, err := jsonOut.Marshal(m)
	if err != nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, err
	}
	return v, nil
}

func grpcError(err error) error {
	if st, ok := status.FromError(err); ok {
		return fail("grpc_"+strings.ToLower(st.Code().String()), "%s", st.Message())
	}
	return fail("grpc", "%v", err)
}

func (h *harness) timeout(req *request, def time.Duration) time.Duration {
	if req.TimeoutMS > 0 {
		return time.Duration(req.TimeoutMS) * time.Millisecond
	}
	return def
}

// waitFor blocks until cond (evaluated under the registry's change
// notifications) holds or the timeout passes.
func (h *harness) waitFor(ctx context.Context, driver string, want bool) (*plugin, error) {
	for {
		p, changed := h.reg.current(driver)
		if (p != nil) == want {
			return p, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			if want {
				return nil, fail("timeout", "driver %q did not register in time", driver)
			}
			return nil, fail("timeout", "driver %q is still registered", driver)
		}
	}
}

// pluginFor picks the newest endpoint of the driver and the API version
// to call it with: the one chosen at registration unless the request
// names another that the plugin listed.
func (h *harness) pluginFor(req *request) (*plugin, string, error) {
	if req.Driver == "" {
		return nil, "", fail("invalid", "driver is required")
	}
	p, _ := h.reg.current(req.Driver)
	if p == nil {
		return nil, "", fail("not_registered", "driver %q is not registered", req.Driver)
	}
	version := p.Version
	if req.API != "" {
		want := req.API
		if !strings.Contains(want, ".") {
			want += ".DRAPlugin"
		}
		if want != drav1.DRAPluginService && want != drav1beta1.DRAPluginService {
			return nil, "", fail("invalid", "unknown api %q", req.API)
		}
		listed := false
		for _, v := range p.SupportedVersions {
			listed = listed || v == want
		}
		if !listed {
			return nil, "", fail("unsupported", "plugin %q does not offer %s (offers %q)", req.Driver, want, p.SupportedVersions)
		}
		version = want
	}
	return p, version, nil
}

func (h *harness) claims(req *request) ([]claim, error) {
	if len(req.Claims) == 0 {
		return nil, fail("invalid", "claims must not be empty")
	}
	for i, c := range req.Claims {
		if c.Namespace == "" || c.Name == "" || c.UID == "" {
			return nil, fail("invalid", "claims[%d] needs namespace, name and uid", i)
		}
	}
	return req.Claims, nil
}

func (h *harness) prepare(ctx context.Context, req *request) (map[string]any, error) {
	claims, err := h.claims(req)
	if err != nil {
		return nil, err
	}
	p, version, err := h.pluginFor(req)
	if err != nil {
		return nil, err
	}
	var resp proto.Message
	switch version {
	case drav1.DRAPluginService:
		in := &drav1.NodePrepareResourcesRequest{}
		for _, c := range claims {
			in.Claims = append(in.Claims, &drav1.Claim{Namespace: c.Namespace, Name: c.Name, Uid: c.UID})
		}
		resp, err = p.v1().NodePrepareResources(ctx, in)
	default:
		in := &drav1beta1.NodePrepareResourcesRequest{}
		for _, c := range claims {
			in.Claims = append(in.Claims, &drav1beta1.Claim{Namespace: c.Namespace, Name: c.Name, Uid: c.UID})
		}
		resp, err = p.v1beta1().NodePrepareResources(ctx, in)
	}
	return h.dra(p, version, resp, err)
}

func (h *harness) unprepare(ctx context.Context, req *request) (map[string]any, error) {
	claims, err := h.claims(req)
	if err != nil {
		return nil, err
	}
	p, version, err := h.pluginFor(req)
	if err != nil {
		return nil, err
	}
	var resp proto.Message
	switch version {
	case drav1.DRAPluginService:
		in := &drav1.NodeUnprepareResourcesRequest{}
		for _, c := range claims {
			in.Claims = append(in.Claims, &drav1.Claim{Namespace: c.Namespace, Name: c.Name, Uid: c.UID})
		}
		resp, err = p.v1().NodeUnprepareResources(ctx, in)
	default:
		in := &drav1beta1.NodeUnprepareResourcesRequest{}
		for _, c := range claims {
			in.Claims = append(in.Claims, &drav1beta1.Claim{Namespace: c.Namespace, Name: c.Name, Uid: c.UID})
		}
		resp, err = p.v1beta1().NodeUnprepareResources(ctx, in)
	}
	return h.dra(p, version, resp, err)
}

func (h *harness) dra(p *plugin, version string, resp proto.Message, err error) (map[string]any, error) {
	if err != nil {
		e := grpcError(err).(*cmdError)
		e.msg = fmt.Sprintf("%s (api %s, endpoint %s)", e.msg, version, p.Endpoint)
		return nil, e
	}
	m, err := protoMap(resp)
	if err != nil {
		return nil, fail("internal", "render response: %v", err)
	}
	return map[string]any{"api": version, "endpoint": p.Endpoint, "response": m}, nil
}

// bench issues count NodePrepareResources + NodeUnprepareResources pairs
// for the same claims, one after the other, and reports how long each gRPC
// call took in nanoseconds, measured here around the call: the JSON protocol
// between the test and the harness is not in the numbers. Any per-claim
// error fails the command (a benchmark of failures would be meaningless).
// warmup pairs run first and are not reported.
func (h *harness) bench(ctx context.Context, req *request) (map[string]any, error) {
	claims, err := h.claims(req)
	if err != nil {
		return nil, err
	}
	if req.Count <= 0 {
		return nil, fail("invalid", "count must be positive")
	}
	if req.Warmup < 0 {
		return nil, fail("invalid", "warmup must not be negative")
	}
	p, version, err := h.pluginFor(req)
	if err != nil {
		return nil, err
	}
	prep, unprep := h.benchCalls(p, version, claims)
	prepareNS := make([]int64, 0, req.Count)
	unprepareNS := make([]int64, 0, req.Count)
	for i := 0; i < req.Warmup+req.Count; i++ {
		t0 := time.Now()
		err := prep(ctx)
		d := time.Since(t0)
		if err != nil {
			return nil, benchError(p, version, "prepare", i, err)
		}
		t1 := time.Now()
		err = unprep(ctx)
		d2 := time.Since(t1)
		if err != nil {
			return nil, benchError(p, version, "unprepare", i, err)
		}
		if i >= req.Warmup {
			prepareNS = append(prepareNS, d.Nanoseconds())
			unprepareNS = append(unprepareNS, d2.Nanoseconds())
		}
	}
	return map[string]any{
		"api": version, "endpoint": p.Endpoint, "claims": len(claims),
		"prepare_ns": prepareNS, "unprepare_ns": unprepareNS,
	}, nil
}

func benchError(p *plugin, version, call string, i int, err error) error {
	var ce *cmdError
	if !errors.As(err, &ce) {
		ce = grpcError(err).(*cmdError)
	}
	ce.msg = fmt.Sprintf("%s #%d: %s (api %s, endpoint %s)", call, i, ce.msg, version, p.Endpoint)
	return ce
}

// benchCalls builds the two calls once, so the loop measures only the RPCs
// and the check of their answers.
func (h *harness) benchCalls(p *plugin, version string, claims []claim) (prep, unprep func(context.Context) error) {
	if version == drav1.DRAPluginService {
		c := p.v1()
		var cl []*drav1.Claim
		for _, x := range claims {
			cl = append(cl, &drav1.Claim{Namespace: x.Namespace, Name: x.Name, Uid: x.UID})
		}
		prepIn := &drav1.NodePrepareResourcesRequest{Claims: cl}
		unprepIn := &drav1.NodeUnprepareResourcesRequest{Claims: cl}
		prep = func(ctx context.Context) error {
			resp, err := c.NodePrepareResources(ctx, prepIn)
			if err != nil {
				return err
			}
			for _, x := range claims {
				r, ok := resp.Claims[x.UID]
				if !ok || r.Error != "" || len(r.Devices) == 0 {
					return fail("claim_error", "claim %s: missing, failed or without devices: %v", x.UID, r)
				}
			}
			return nil
		}
		unprep = func(ctx context.Context) error {
			resp, err := c.NodeUnprepareResources(ctx, unprepIn)
			if err != nil {
				return err
			}
			for _, x := range claims {
				r, ok := resp.Claims[x.UID]
				if !ok || r.Error != "" {
					return fail("claim_error", "claim %s: missing or failed: %v", x.UID, r)
				}
			}
			return nil
		}
		return prep, unprep
	}
	c := p.v1beta1()
	var cl []*drav1beta1.Claim
	for _, x := range claims {
		cl = append(cl, &drav1beta1.Claim{Namespace: x.Namespace, Name: x.Name, Uid: x.UID})
	}
	prepIn := &drav1beta1.NodePrepareResourcesRequest{Claims: cl}
	unprepIn := &drav1beta1.NodeUnprepareResourcesRequest{Claims: cl}
	prep = func(ctx context.Context) error {
		resp, err := c.NodePrepareResources(ctx, prepIn)
		if err != nil {
			return err
		}
		for _, x := range claims {
			r, ok := resp.Claims[x.UID]
			if !ok || r.Error != "" || len(r.Devices) == 0 {
				return fail("claim_error", "claim %s: missing, failed or without devices: %v", x.UID, r)
			}
		}
		return nil
	}
	unprep = func(ctx context.Context) error {
		resp, err := c.NodeUnprepareResources(ctx, unprepIn)
		if err != nil {
			return err
		}
		for _, x := range claims {
			r, ok := resp.Claims[x.UID]
			if !ok || r.Error != "" {
				return fail("claim_error", "claim %s: missing or failed: %v", x.UID, r)
			}
		}
		return nil
	}
	return prep, unprep
}

func (h *harness) watchHealth(ctx context.Context, req *request) (map[string]any, error) {
	if req.Count <= 0 {
		return nil, fail("invalid", "count must be positive")
	}
	if req.Driver == "" {
		return nil, fail("invalid", "driver is required")
	}
	p, _ := h.reg.current(req.Driver)
	if p == nil {
		return nil, fail("not_registered", "driver %q is not registered", req.Driver)
	}
	version := p.HealthVersion
	if req.API != "" {
		want := req.API
		if !strings.Contains(want, ".") {
			want += ".DRAResourceHealth"
		}
		if want != healthV1 && want != healthV1alpha1 {
			return nil, fail("invalid", "unknown health api %q", req.API)
		}
		listed := false
		for _, v := range p.SupportedVersions {
			listed = listed || v == want
		}
		if !listed {
			return nil, fail("unsupported", "plugin %q does not offer %s (offers %q)", req.Driver, want, p.SupportedVersions)
		}
		version = want
	}
	if version == "" {
		return nil, fail("unsupported", "plugin %q offers no DRAResourceHealth version the harness accepts (offers %q)", req.Driver, p.SupportedVersions)
	}

	var recv func() (proto.Message, error)
	switch version {
	case healthV1:
		stream, err := p.healthV1().NodeWatchResources(ctx, &drahealthv1.NodeWatchResourcesRequest{})
		if err != nil {
			return nil, grpcError(err)
		}
		recv = func() (proto.Message, error) { return stream.Recv() }
	default:
		stream, err := p.healthV1alpha1().NodeWatchResources(ctx, &drahealthv1alpha1.NodeWatchResourcesRequest{})
		if err != nil {
			return nil, grpcError(err)
		}
		recv = func() (proto.Message, error) { return stream.Recv() }
	}
	var msgs []any
	for len(msgs) < req.Count {
		msg, err := recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fail("eof", "health stream ended after %d messages", len(msgs))
			}
			if ctx.Err() != nil {
				return nil, fail("timeout", "got %d of %d health messages in time", len(msgs), req.Count)
			}
			return nil, grpcError(err)
		}
		m, err := protoMap(msg)
		if err != nil {
			return nil, fail("internal", "render health message: %v", err)
		}
		msgs = append(msgs, m)
	}
	return map[string]any{"api": version, "endpoint": p.Endpoint, "messages": msgs}, nil
}

func (h *harness) handle(req *request) (map[string]any, error) {
	switch req.Cmd {
	case "ping":
		return map[string]any{"node_name": h.nodeName, "supported_versions": h.reg.supported, "health_versions": h.reg.healthSupported}, nil
	case "wait_registered", "wait_deregistered":
		if req.Driver == "" {
			return nil, fail("invalid", "driver is required")
		}
		ctx, cancel := context.WithTimeout(context.Background(), h.timeout(req, 30*time.Second))
		defer cancel()
		p, err := h.waitFor(ctx, req.Driver, req.Cmd == "wait_registered")
		if err != nil {
			return nil, err
		}
		if p == nil {
			return map[string]any{}, nil
		}
		return map[string]any{"plugin": p}, nil
	case "list_plugins":
		ps := h.reg.list()
		if ps == nil {
			ps = []*plugin{}
		}
		return map[string]any{"plugins": ps}, nil
	case "prepare", "unprepare", "watch_health", "bench":
		ctx, cancel := context.WithTimeout(context.Background(), h.timeout(req, callTimeout))
		defer cancel()
		switch req.Cmd {
		case "prepare":
			return h.prepare(ctx, req)
		case "unprepare":
			return h.unprepare(ctx, req)
		case "bench":
			return h.bench(ctx, req)
		default:
			return h.watchHealth(ctx, req)
		}
	}
	return nil, fail("invalid", "unknown cmd %q", req.Cmd)
}

func (h *harness) serve(in io.Reader, wg *sync.WaitGroup) {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		req := &request{}
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(req); err != nil {
			h.reply(req, nil, fail("invalid", "bad request line: %v", err))
			continue
		}
		if req.Cmd == "shutdown" {
			h.reply(req, map[string]any{}, nil)
			h.shutdown()
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := h.handle(req)
			h.reply(req, res, err)
		}()
	}
	// stdin closed: the test is gone, stop too.
	h.shutdown()
}

func (h *harness) reply(req *request, res map[string]any, err error) {
	m := map[string]any{"ok": err == nil}
	if req.ID != nil {
		m["id"] = req.ID
	}
	m["cmd"] = req.Cmd
	if err != nil {
		var ce *cmdError
		if errors.As(err, &ce) {
			m["code"] = ce.code
		} else {
			m["code"] = "error"
		}
		m["error"] = err.Error()
	}
	for k, v := range res {
		m[k] = v
	}
	h.out.write(m)
}

func main() {
	registryDir := flag.String("registry-dir", "", "directory to watch for plugin registration sockets (required)")
	nodeName := flag.String("node-name", "", "name of the node this kubelet pretends to run (reported only)")
	versions := flag.String("supported-versions", drav1.DRAPluginService+","+drav1beta1.DRAPluginService,
		"comma-separated DRA services the harness accepts at registration")
	healthVersions := flag.String("health-versions", healthV1+","+healthV1alpha1,
		"comma-separated DRAResourceHealth services the harness accepts (empty: none)")
	forceV1beta1 := flag.Bool("force-v1beta1", false, "accept only "+drav1beta1.DRAPluginService+" (like a 1.32/1.33 kubelet)")
	flag.Parse()

	if *registryDir == "" {
		fmt.Fprintln(os.Stderr, "kubelet-harness: --registry-dir is required")
		os.Exit(2)
	}
	st, err := os.Stat(*registryDir)
	if err != nil || !st.IsDir() {
		fmt.Fprintf(os.Stderr, "kubelet-harness: --registry-dir %q is not a directory\n", *registryDir)
		os.Exit(2)
	}
	var supported []string
	for _, v := range strings.Split(*versions, ",") {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		if v != drav1.DRAPluginService && v != drav1beta1.DRAPluginService {
			fmt.Fprintf(os.Stderr, "kubelet-harness: unknown version %q in --supported-versions\n", v)
			os.Exit(2)
		}
		supported = append(supported, v)
	}
	if *forceV1beta1 {
		supported = []string{drav1beta1.DRAPluginService}
	}
	if len(supported) == 0 {
		fmt.Fprintln(os.Stderr, "kubelet-harness: no supported versions")
		os.Exit(2)
	}

	var healthSupported []string
	for _, v := range strings.Split(*healthVersions, ",") {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		if v != healthV1 && v != healthV1alpha1 {
			fmt.Fprintf(os.Stderr, "kubelet-harness: unknown version %q in --health-versions\n", v)
			os.Exit(2)
		}
		healthSupported = append(healthSupported, v)
	}

	out := &output{w: os.Stdout}
	reg := newRegistry(supported, healthSupported, out)
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	h := &harness{reg: reg, out: out, nodeName: *nodeName, shutdown: cancel}

	watchErr := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		watchErr <- reg.watch(ctx, *registryDir, func() { close(ready) })
	}()
	select {
	case err := <-watchErr:
		fmt.Fprintf(os.Stderr, "kubelet-harness: watch %s: %v\n", *registryDir, err)
		os.Exit(1)
	case <-ready:
	}
	out.event("ready", map[string]any{
		"registry_dir": *registryDir, "node_name": *nodeName, "supported_versions": supported,
		"health_versions": healthSupported, "pid": os.Getpid(),
	})

	var wg sync.WaitGroup
	go h.serve(os.Stdin, &wg)
	<-ctx.Done()
	// In-flight commands get a moment to answer; blocking calls end
	// with their own timeouts.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	reg.closeAll()
	if err := <-watchErr; err != nil {
		fmt.Fprintf(os.Stderr, "kubelet-harness: %v\n", err)
		os.Exit(1)
	}
}
