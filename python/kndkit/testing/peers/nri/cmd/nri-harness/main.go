// Command nri-harness plays containerd's side of NRI for kndkit's tests.
//
// It embeds the upstream runtime adaptation (github.com/containerd/nri/pkg/adaptation),
// listens on a socket for external plugins and is driven over stdin/stdout with
// newline-delimited JSON. See ../../README.md for the protocol.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	nrilog "github.com/containerd/nri/pkg/log"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// protocolVersion is bumped on incompatible changes of the stdin/stdout protocol.
const protocolVersion = 1

var (
	unmarshal = protojson.UnmarshalOptions{DiscardUnknown: false}
	marshal   = protojson.MarshalOptions{UseProtoNames: true}
)

// request is one command line read from stdin.
type request struct {
	ID  json.RawMessage `json:"id,omitempty"`
	Cmd string          `json:"cmd"`
}

// reply is one answer line written to stdout.
type reply struct {
	ID     json.RawMessage `json:"id,omitempty"`
	OK     bool            `json:"ok"`
	Result any             `json:"result,omitempty"`
	Error  *string         `json:"error,omitempty"`
}

// out serialises every line written to stdout.
type out struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (o *out) write(v any) {
	buf, err := json.Marshal(v)
	if err != nil {
		buf, _ = json.Marshal(map[string]any{"event": "internal_error", "error": err.Error()})
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	_, _ = o.w.Write(buf)
	_ = o.w.WriteByte('\n')
	_ = o.w.Flush()
}

func (o *out) event(name string, fields map[string]any) {
	m := map[string]any{"event": name}
	for k, v := range fields {
		m[k] = v
	}
	o.write(m)
}

// pluginInfo is what the harness knows about one plugin, learnt from the
// adaptation's own log lines (the adaptation exposes no plugin list).
type pluginInfo struct {
	Name       string `json:"name"`
	Qualified  string `json:"qualified,omitempty"`
	Registered bool   `json:"registered"`
	Synced     bool   `json:"synchronized"`
	Closed     bool   `json:"closed"`
}

// syncRecord is the outcome of one Synchronize round with one plugin.
type syncRecord struct {
	// Phase is "startup" for the round with pre-installed plugins during
	// Start, "connect" for an external plugin that connected later.
	Phase      string            `json:"phase"`
	Pods       int               `json:"pods"`
	Containers int               `json:"containers"`
	Updates    []json.RawMessage `json:"updates"`
	Error      *string           `json:"error,omitempty"`
}

type harness struct {
	out   *out
	nri   *adaptation.Adaptation
	mu    sync.Mutex
	cond  *sync.Cond
	pods  []*api.PodSandbox
	ctrs  []*api.Container
	syncs []syncRecord
	// unsolicited updates requested by plugins through UpdateContainers
	updates  []json.RawMessage
	failNext []string // container ids whose next unsolicited update is reported failed
	plugins  map[string]*pluginInfo
	order    []string
	syncErrs []string
	started  bool
}

func newHarness(o *out) *harness {
	h := &harness{out: o, plugins: map[string]*pluginInfo{}}
	h.cond = sync.NewCond(&h.mu)
	return h
}

func (h *harness) plugin(name string) *pluginInfo {
	p, ok := h.plugins[name]
	if !ok {
		p = &pluginInfo{Name: name}
		h.plugins[name] = p
		h.order = append(h.order, name)
	}
	return p
}

// observe learns plugin state changes from the adaptation's log calls.
func (h *harness) observe(format string, args []any) {
	arg := func(i int) string {
		if i < len(args) {
			return fmt.Sprint(args[i])
		}
		return ""
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case strings.HasPrefix(format, "plugin %q registered as %q"):
		p := h.plugin(arg(1))
		// a reconnecting plugin reuses its name: start afresh
		*p = pluginInfo{Name: p.Name, Qualified: arg(0), Registered: true}
		h.out.event("plugin_registered", map[string]any{"name": p.Name, "qualified": p.Qualified})
	case format == "plugin %q connected and synchronized",
		format == "pre-installed NRI plugin %q synchronization success":
		p := h.plugin(arg(0))
		p.Synced = true
		h.out.event("plugin_synchronized", map[string]any{"name": p.Name})
	case format == "connection to plugin %q closed":
		p := h.plugin(arg(0))
		p.Closed = true
		h.out.event("plugin_closed", map[string]any{"name": p.Name})
	case format == "failed to synchronize plugin: %v",
		format == "failed to start external plugin: %v",
		format == "failed to create external plugin: %v":
		msg := fmt.Sprintf(format, args...)
		h.syncErrs = append(h.syncErrs, msg)
		h.out.event("plugin_failed", map[string]any{"error": msg})
	default:
		return
	}
	h.cond.Broadcast()
}

// logger forwards the adaptation's log to stderr and lets the harness observe it.
type logger struct{ h *harness }

func (l logger) logf(level, format string, args []any) {
	fmt.Fprintf(os.Stderr, "%s nri-harness %s: %s\n",
		time.Now().Format("15:04:05.000"), level, fmt.Sprintf(format, args...))
	l.h.observe(format, args)
}

func (l logger) Debugf(_ context.Context, format string, args ...any) { l.logf("debug", format, args) }
func (l logger) Infof(_ context.Context, format string, args ...any)  { l.logf("info", format, args) }
func (l logger) Warnf(_ context.Context, format string, args ...any)  { l.logf("warn", format, args) }
func (l logger) Errorf(_ context.Context, format string, args ...any) { l.logf("error", format, args) }

func (h *harness) live() []string {
	var names []string
	for _, n := range h.order {
		if p := h.plugins[n]; p.Synced && !p.Closed {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

// syncFn serves the state set with set_state to each connecting plugin.
func (h *harness) syncFn(ctx context.Context, cb adaptation.SyncCB) error {
	h.mu.Lock()
	pods := cloneAll(h.pods)
	ctrs := cloneAll(h.ctrs)
	h.mu.Unlock()

	updates, err := cb(ctx, pods, ctrs)

	h.mu.Lock()
	phase := "startup"
	if h.started {
		phase = "connect"
	}
	h.mu.Unlock()
	rec := syncRecord{Phase: phase, Pods: len(pods), Containers: len(ctrs), Updates: []json.RawMessage{}}
	for _, u := range updates {
		rec.Updates = append(rec.Updates, mustMarshal(u))
	}
	if err != nil {
		msg := err.Error()
		rec.Error = &msg
	}
	h.mu.Lock()
	h.syncs = append(h.syncs, rec)
	h.mu.Unlock()
	return err
}

// updateFn records container updates that plugins request on their own.
func (h *harness) updateFn(_ context.Context, updates []*api.ContainerUpdate) ([]*api.ContainerUpdate, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var failed []*api.ContainerUpdate
	for _, u := range updates {
		h.updates = append(h.updates, mustMarshal(u))
		for i, id := range h.failNext {
			if id == u.GetContainerId() {
				failed = append(failed, u)
				h.failNext = append(h.failNext[:i], h.failNext[i+1:]...)
				break
			}
		}
	}
	h.out.event("container_updates", map[string]any{"count": len(updates)})
	return failed, nil
}

func cloneAll[T proto.Message](in []T) []T {
	out := make([]T, 0, len(in))
	for _, m := range in {
		out = append(out, proto.Clone(m).(T))
	}
	return out
}

func mustMarshal(m proto.Message) json.RawMessage {
	if m == nil {
		return json.RawMessage("null")
	}
	buf, err := marshal.Marshal(m)
	if err != nil {
		return json.RawMessage(fmt.Sprintf("{\"marshal_error\":%q}", err.Error()))
	}
	if len(buf) == 0 {
		return json.RawMessage("{}")
	}
	return json.RawMessage(buf)
}

// decodeInto fills msg from the command's fields, minus "id" and "cmd".
func decodeInto(line []byte, msg proto.Message, keep ...string) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(line, &fields); err != nil {
		return err
	}
	delete(fields, "id")
	delete(fields, "cmd")
	if len(keep) > 0 {
		kept := map[string]json.RawMessage{}
		for _, k := range keep {
			if v, ok := fields[k]; ok {
				kept[k] = v
			}
		}
		fields = kept
	}
	buf, err := json.Marshal(fields)
	if err != nil {
		return err
	}
	if err := unmarshal.Unmarshal(buf, msg); err != nil {
		return fmt.Errorf("bad %s: %w", msg.ProtoReflect().Descriptor().Name(), err)
	}
	return nil
}

func decodeList[T proto.Message](raw json.RawMessage, mk func() T) ([]T, error) {
	var items []json.RawMessage
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, err
		}
	}
	out := make([]T, 0, len(items))
	for i, it := range items {
		m := mk()
		if err := unmarshal.Unmarshal(it, m); err != nil {
			return nil, fmt.Errorf("item %d: bad %s: %w", i, m.ProtoReflect().Descriptor().Name(), err)
		}
		out = append(out, m)
	}
	return out, nil
}

func nriModuleVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/containerd/nri" {
				if d.Replace != nil {
					return d.Replace.Version
				}
				return d.Version
			}
		}
	}
	return "unknown"
}

func (h *harness) handle(ctx context.Context, line []byte) (result any, err error, stop bool) {
	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		return nil, fmt.Errorf("bad command line: %w", err), false
	}
	switch req.Cmd {
	case "ping":
		return map[string]any{"nri_version": nriModuleVersion(), "api": apiLevel}, nil, false
	case "set_state":
		var body struct {
			Pods       json.RawMessage `json:"pods"`
			Containers json.RawMessage `json:"containers"`
		}
		if err := json.Unmarshal(line, &body); err != nil {
			return nil, err, false
		}
		pods, err := decodeList(body.Pods, func() *api.PodSandbox { return &api.PodSandbox{} })
		if err != nil {
			return nil, fmt.Errorf("pods: %w", err), false
		}
		ctrs, err := decodeList(body.Containers, func() *api.Container { return &api.Container{} })
		if err != nil {
			return nil, fmt.Errorf("containers: %w", err), false
		}
		h.mu.Lock()
		h.pods, h.ctrs = pods, ctrs
		h.mu.Unlock()
		return map[string]any{"pods": len(pods), "containers": len(ctrs)}, nil, false
	case "wait_plugins":
		var body struct {
			Count     int `json:"count"`
			TimeoutMs int `json:"timeout_ms"`
		}
		body.Count, body.TimeoutMs = 1, 5000
		if err := json.Unmarshal(line, &body); err != nil {
			return nil, err, false
		}
		return h.waitPlugins(body.Count, time.Duration(body.TimeoutMs)*time.Millisecond)
	case "list_plugins":
		h.mu.Lock()
		defer h.mu.Unlock()
		all := []pluginInfo{}
		for _, n := range h.order {
			all = append(all, *h.plugins[n])
		}
		return map[string]any{"live": nonNil(h.live()), "all": all, "failures": nonNil(h.syncErrs)}, nil, false
	case "sync_results":
		h.mu.Lock()
		defer h.mu.Unlock()
		return map[string]any{"syncs": append([]syncRecord{}, h.syncs...)}, nil, false
	case "container_updates":
		var body struct {
			Clear    bool     `json:"clear"`
			FailNext []string `json:"fail_next"`
		}
		if err := json.Unmarshal(line, &body); err != nil {
			return nil, err, false
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		got := append([]json.RawMessage{}, h.updates...)
		if body.Clear {
			h.updates = nil
		}
		h.failNext = append(h.failNext, body.FailNext...)
		return map[string]any{"updates": got}, nil, false
	case "bench":
		return h.bench(ctx, line)
	case "shutdown":
		h.nri.Stop()
		return map[string]any{}, nil, true
	}
	ev, ok := events[req.Cmd]
	if !ok {
		return nil, fmt.Errorf("unknown command %q", req.Cmd), false
	}
	res, err := ev(ctx, h.nri, line)
	if err != nil {
		return nil, err, false
	}
	if res == nil {
		return map[string]any{}, nil, false
	}
	return mustMarshal(res), nil, false
}

// benchCall is one prepared round trip: the request is already decoded and
// cloned, so only the adaptation call itself remains to be timed.
type benchCall func(context.Context) (proto.Message, error)

// benchEvent makes a fresh benchCall for each call from a decoded request;
// the version-specific files provide benchEvents (event name -> factory).
type benchEvent func(r *adaptation.Adaptation, line []byte) (func() benchCall, error)

// bench relays the same event `warmup` + `count` times through the
// adaptation and reports the duration of each counted call, measured around
// the adaptation call only (no JSON, no stdin/stdout in the timed part).
func (h *harness) bench(ctx context.Context, line []byte) (any, error, bool) {
	var body struct {
		ID        json.RawMessage `json:"id"`
		Cmd       string          `json:"cmd"`
		Event     string          `json:"event"`
		Count     int             `json:"count"`
		Warmup    int             `json:"warmup"`
		Pod       json.RawMessage `json:"pod"`
		Container json.RawMessage `json:"container"`
	}
	body.Count = 1000
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		return nil, fmt.Errorf("bench: %w", err), false
	}
	if body.Count < 1 || body.Count > 1_000_000 || body.Warmup < 0 || body.Warmup > 1_000_000 {
		return nil, fmt.Errorf("bench: count must be 1..1000000 and warmup 0..1000000, got %d and %d",
			body.Count, body.Warmup), false
	}
	mk, ok := benchEvents[body.Event]
	if !ok {
		names := make([]string, 0, len(benchEvents))
		for n := range benchEvents {
			names = append(names, n)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("bench: unknown event %q (have %v)", body.Event, names), false
	}
	fresh, err := mk(h.nri, line)
	if err != nil {
		return nil, err, false
	}
	h.mu.Lock()
	before := h.live()
	h.mu.Unlock()

	var last proto.Message
	replies := make([]proto.Message, 0, body.Warmup+body.Count)
	ns := make([]int64, 0, body.Count)
	for i := 0; i < body.Warmup+body.Count; i++ {
		if i == body.Warmup {
			// start the counted calls without garbage left from the warm-up
			runtime.GC()
		}
		call := fresh()
		start := time.Now()
		res, err := call(ctx)
		elapsed := time.Since(start)
		if err != nil {
			return nil, fmt.Errorf("bench: call %d of %d (warm-up %d): %w",
				i+1, body.Warmup+body.Count, body.Warmup, err), false
		}
		if i >= body.Warmup {
			ns = append(ns, elapsed.Nanoseconds())
		}
		replies = append(replies, res)
		last = res
	}
	// every reply should equal the last one: a plugin dropped mid-run would
	// show as replies without its adjustments
	differing := 0
	for _, r := range replies {
		if !proto.Equal(r, last) {
			differing++
		}
	}

	h.mu.Lock()
	after := h.live()
	h.mu.Unlock()
	result := map[string]any{
		"event":             body.Event,
		"count":             body.Count,
		"warmup":            body.Warmup,
		"ns":                ns,
		"live_before":       nonNil(before),
		"live_after":        nonNil(after),
		"last_reply":        json.RawMessage("{}"),
		"differing_replies": differing,
		"go_max_procs":      runtime.GOMAXPROCS(0),
	}
	if last != nil {
		result["last_reply"] = mustMarshal(last)
	}
	return result, nil, false
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func (h *harness) waitPlugins(n int, timeout time.Duration) (any, error, bool) {
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() {
		h.mu.Lock()
		h.cond.Broadcast()
		h.mu.Unlock()
	})
	defer timer.Stop()
	h.mu.Lock()
	defer h.mu.Unlock()
	for {
		live := h.live()
		if len(live) >= n {
			return map[string]any{"live": nonNil(live)}, nil, false
		}
		if !time.Now().Before(deadline) {
			return nil, fmt.Errorf("timed out after %s waiting for %d plugin(s); live: %v; failures: %v",
				timeout, n, live, h.syncErrs), false
		}
		h.cond.Wait()
	}
}

func main() {
	var (
		socket     = flag.String("socket", "", "socket to listen on for plugins (default: <tmpdir>/nri.sock)")
		pluginPath = flag.String("plugin-path", "", "directory of pre-installed plugins (default: an empty temp dir)")
		configPath = flag.String("plugin-config-path", "", "directory of plugin drop-in configs (default: an empty temp dir)")
		regTimeout = flag.Duration("registration-timeout", 0, "plugin registration timeout (0: upstream default)")
		reqTimeout = flag.Duration("request-timeout", 0, "plugin request timeout (0: upstream default)")
		rtName     = flag.String("runtime-name", "kndkit-nri-harness", "runtime name told to plugins")
		rtVersion  = flag.String("runtime-version", "0.0.1", "runtime version told to plugins")
	)
	flag.Parse()

	if err := run(*socket, *pluginPath, *configPath, *regTimeout, *reqTimeout, *rtName, *rtVersion); err != nil {
		fmt.Fprintf(os.Stderr, "nri-harness: %v\n", err)
		os.Exit(1)
	}
}

func run(socket, pluginPath, configPath string, regTimeout, reqTimeout time.Duration, rtName, rtVersion string) error {
	tmp, err := os.MkdirTemp("", "nri-harness-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if socket == "" {
		socket = filepath.Join(tmp, "nri.sock")
	}
	if pluginPath == "" {
		pluginPath = filepath.Join(tmp, "plugins")
	}
	if configPath == "" {
		configPath = filepath.Join(tmp, "conf.d")
	}
	for _, d := range []string{pluginPath, configPath} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if regTimeout > 0 {
		adaptation.SetPluginRegistrationTimeout(regTimeout)
	}
	if reqTimeout > 0 {
		adaptation.SetPluginRequestTimeout(reqTimeout)
	}

	o := &out{w: bufio.NewWriter(os.Stdout)}
	h := newHarness(o)
	nrilog.Set(logger{h})

	h.nri, err = adaptation.New(rtName, rtVersion, h.syncFn, h.updateFn,
		adaptation.WithSocketPath(socket),
		adaptation.WithPluginPath(pluginPath),
		adaptation.WithPluginConfigPath(configPath),
	)
	if err != nil {
		return err
	}
	if err := h.nri.Start(); err != nil {
		return err
	}
	h.mu.Lock()
	h.started = true
	h.mu.Unlock()
	o.event("ready", map[string]any{
		"socket":           socket,
		"plugin_path":      pluginPath,
		"nri_version":      nriModuleVersion(),
		"api":              apiLevel,
		"protocol":         protocolVersion,
		"pid":              os.Getpid(),
		"runtime_name":     rtName,
		"runtime_version":  rtVersion,
		"request_timeout":  reqTimeout.String(),
		"register_timeout": regTimeout.String(),
	})

	ctx := context.Background()
	in := bufio.NewReader(os.Stdin)
	for {
		line, err := in.ReadBytes('\n')
		if len(strings.TrimSpace(string(line))) > 0 {
			res, cmdErr, stop := h.handle(ctx, line)
			var id json.RawMessage
			var req request
			if json.Unmarshal(line, &req) == nil {
				id = req.ID
			}
			if cmdErr != nil {
				msg := cmdErr.Error()
				o.write(reply{ID: id, OK: false, Error: &msg})
			} else {
				o.write(reply{ID: id, OK: true, Result: res})
			}
			if stop {
				return nil
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				fmt.Fprintln(os.Stderr, "nri-harness: stdin closed, stopping")
				h.nri.Stop()
				return nil
			}
			return err
		}
	}
}
