// Command allocator stands in for the kube-scheduler's DRA plugin in tests: it
// runs the scheduler's own allocator (k8s.io/dynamic-resource-allocation/structured)
// over the ResourceSlices, DeviceClasses and ResourceClaims of a cluster (or of
// a JSON document), for one Node, and writes the allocation and reservedFor
// into the claims' status like the scheduler does.
//
// Output: one JSON document on stdout:
//
//	{"node": "n1", "allocated": true, "results": [{"claim": "ns/c", "allocation": {...}}]}
//	{"node": "n1", "allocated": false, "reason": "cannot allocate: ..."}
//	{"error": "...", "kind": "bad-input"}
//
// Exit codes: 0 allocated; 3 cannot allocate; 2 bad input (flags, missing
// objects, CEL errors reported by the allocator); 1 any other failure.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"
	"k8s.io/klog/v2"
)

const (
	exitOK          = 0
	exitFailure     = 1
	exitBadInput    = 2
	exitUnallocated = 3
)

// badInput marks errors caused by what the caller asked for or fed in.
type badInput struct{ err error }

func (b badInput) Error() string { return b.err.Error() }
func (b badInput) Unwrap() error { return b.err }

func badf(format string, args ...any) error { return badInput{fmt.Errorf(format, args...)} }

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

type options struct {
	kubeconfig string
	node       string
	claims     stringList
	podName    string
	podUID     string
	features   string
	dryRun     bool
	fromJSON   string
	timeout    time.Duration
}

// jsonInput is the document read by --from-json.
type jsonInput struct {
	// Node is a full Node object; when absent a bare Node named --node is used.
	Node    *corev1.Node                `json:"node,omitempty"`
	Slices  []resourceapi.ResourceSlice `json:"slices"`
	Classes []resourceapi.DeviceClass   `json:"classes"`
	// Claims to allocate, in order.
	Claims []resourceapi.ResourceClaim `json:"claims"`
	// AllocatedClaims hold devices that are already in use.
	AllocatedClaims []resourceapi.ResourceClaim `json:"allocatedClaims,omitempty"`
}

type claimResult struct {
	Claim      string                        `json:"claim"`
	Allocation *resourceapi.AllocationResult `json:"allocation,omitempty"`
	Status     string                        `json:"status"`
}

type output struct {
	Node      string        `json:"node,omitempty"`
	Allocated bool          `json:"allocated"`
	Reason    string        `json:"reason,omitempty"`
	Results   []claimResult `json:"results,omitempty"`
	Written   bool          `json:"written"`
	Error     string        `json:"error,omitempty"`
	Kind      string        `json:"kind,omitempty"`
}

type classList []*resourceapi.DeviceClass

func (c classList) List() ([]*resourceapi.DeviceClass, error) { return c, nil }

func (c classList) Get(name string) (*resourceapi.DeviceClass, error) {
	for _, cl := range c {
		if cl.Name == name {
			return cl, nil
		}
	}
	return nil, apierrors.NewNotFound(resourceapi.Resource("deviceclasses"), name)
}

// schedulerDefaults are the allocator features the kube-scheduler of the same
// release (v1.37) turns on with its default feature gates.
var schedulerDefaults = structured.Features{
	AdminAccess:             true,
	ConsumableCapacity:      true,
	DeviceBindingAndStatus:  true,
	DeviceTaints:            true,
	FractionalCapacityRange: true,
	PartitionableDevices:    true,
	PrioritizedList:         true,
}

func parseFeatures(spec string) (structured.Features, error) {
	var f structured.Features
	switch spec = strings.TrimSpace(spec); spec {
	case "", "default":
		return schedulerDefaults, nil
	case "none":
		return f, nil
	}
	v := reflect.ValueOf(&f).Elem()
	if spec == "all" {
		for i := 0; i < v.NumField(); i++ {
			if v.Field(i).Kind() == reflect.Bool {
				v.Field(i).SetBool(true)
			}
		}
		return f, nil
	}
	for _, name := range strings.Split(spec, ",") {
		field := v.FieldByName(strings.TrimSpace(name))
		if !field.IsValid() || field.Kind() != reflect.Bool {
			var known []string
			for i := 0; i < v.NumField(); i++ {
				known = append(known, v.Type().Field(i).Name)
			}
			return f, badf("unknown allocator feature %q (known: %s; or default, none, all)", name, strings.Join(known, ", "))
		}
		field.SetBool(true)
	}
	return f, nil
}

func splitClaim(ref string) (string, string, error) {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", "", badf("--claim %q: want namespace/name", ref)
	}
	return ns, name, nil
}

func claimKey(c *resourceapi.ResourceClaim) string { return c.Namespace + "/" + c.Name }

// allocatedState collects the devices held by already-allocated claims.
func allocatedState(claims []*resourceapi.ResourceClaim) structured.AllocatedState {
	st := structured.AllocatedState{
		AllocatedDevices:         sets.New[structured.DeviceID](),
		AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
		AggregatedCapacity:       structured.NewConsumedCapacityCollection(),
	}
	for _, c := range claims {
		if c.Status.Allocation == nil {
			continue
		}
		for _, r := range c.Status.Allocation.Devices.Results {
			id := structured.MakeDeviceID(r.Driver, r.Pool, r.Device)
			if r.ShareID != nil {
				st.AllocatedSharedDeviceIDs.Insert(structured.MakeSharedDeviceID(id, r.ShareID))
				if r.ConsumedCapacity != nil {
					st.AggregatedCapacity.Insert(structured.NewDeviceConsumedCapacity(id, r.ConsumedCapacity))
				}
				continue
			}
			st.AllocatedDevices.Insert(id)
		}
	}
	return st
}

type inputs struct {
	node      *corev1.Node
	slices    []*resourceapi.ResourceSlice
	classes   classList
	toAlloc   []*resourceapi.ResourceClaim
	allClaims []*resourceapi.ResourceClaim
}

// defaultClaim applies the apiserver's defaults for count modes, which objects
// read from JSON have not been through.
func defaultClaim(c *resourceapi.ResourceClaim) {
	def := func(mode *resourceapi.DeviceAllocationMode, count *int64) {
		if *mode == "" {
			*mode = resourceapi.DeviceAllocationModeExactCount
		}
		if *mode == resourceapi.DeviceAllocationModeExactCount && *count == 0 {
			*count = 1
		}
	}
	for i := range c.Spec.Devices.Requests {
		r := &c.Spec.Devices.Requests[i]
		if r.Exactly != nil {
			def(&r.Exactly.AllocationMode, &r.Exactly.Count)
		}
		for j := range r.FirstAvailable {
			def(&r.FirstAvailable[j].AllocationMode, &r.FirstAvailable[j].Count)
		}
	}
}

func loadJSON(path, nodeName string) (*inputs, error) {
	var r io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, badf("--from-json: %v", err)
		}
		defer f.Close()
		r = f
	}
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var doc jsonInput
	if err := dec.Decode(&doc); err != nil {
		return nil, badf("--from-json: %v", err)
	}
	in := &inputs{node: doc.Node}
	if in.node == nil {
		if nodeName == "" {
			return nil, badf("--node is required when the JSON has no node")
		}
		in.node = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}
	}
	for i := range doc.Slices {
		in.slices = append(in.slices, &doc.Slices[i])
	}
	for i := range doc.Classes {
		in.classes = append(in.classes, &doc.Classes[i])
	}
	for i := range doc.Claims {
		defaultClaim(&doc.Claims[i])
		in.toAlloc = append(in.toAlloc, &doc.Claims[i])
	}
	in.allClaims = append(in.allClaims, in.toAlloc...)
	for i := range doc.AllocatedClaims {
		in.allClaims = append(in.allClaims, &doc.AllocatedClaims[i])
	}
	if len(in.toAlloc) == 0 {
		return nil, badf("--from-json: no claims to allocate")
	}
	return in, nil
}

func loadCluster(ctx context.Context, cs kubernetes.Interface, o *options) (*inputs, error) {
	in := &inputs{}
	node, err := cs.CoreV1().Nodes().Get(ctx, o.node, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, badf("node %q not found", o.node)
	case err != nil:
		return nil, fmt.Errorf("get node %q: %w", o.node, err)
	}
	in.node = node

	slices, err := cs.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list resourceslices: %w", err)
	}
	for i := range slices.Items {
		in.slices = append(in.slices, &slices.Items[i])
	}
	classes, err := cs.ResourceV1().DeviceClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list deviceclasses: %w", err)
	}
	for i := range classes.Items {
		in.classes = append(in.classes, &classes.Items[i])
	}
	claims, err := cs.ResourceV1().ResourceClaims(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list resourceclaims: %w", err)
	}
	byKey := map[string]*resourceapi.ResourceClaim{}
	for i := range claims.Items {
		c := &claims.Items[i]
		in.allClaims = append(in.allClaims, c)
		byKey[claimKey(c)] = c
	}
	for _, ref := range o.claims {
		ns, name, err := splitClaim(ref)
		if err != nil {
			return nil, err
		}
		c, ok := byKey[ns+"/"+name]
		if !ok {
			return nil, badf("resourceclaim %s/%s not found", ns, name)
		}
		in.toAlloc = append(in.toAlloc, c)
	}
	return in, nil
}

// persist writes what the scheduler writes: the delete-protection finalizer,
// then status.allocation and status.reservedFor.
func persist(ctx context.Context, cs kubernetes.Interface, claim *resourceapi.ResourceClaim,
	alloc resourceapi.AllocationResult, o *options,
) error {
	api := cs.ResourceV1().ResourceClaims(claim.Namespace)
	c := claim.DeepCopy()
	if !sets.New(c.Finalizers...).Has(resourceapi.Finalizer) {
		c.Finalizers = append(c.Finalizers, resourceapi.Finalizer)
		updated, err := api.Update(ctx, c, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("add finalizer to %s: %w", claimKey(c), err)
		}
		c = updated
	}
	c.Status.Allocation = &alloc
	if o.podName != "" {
		c.Status.ReservedFor = append(c.Status.ReservedFor, resourceapi.ResourceClaimConsumerReference{
			Resource: "pods",
			Name:     o.podName,
			UID:      types.UID(o.podUID),
		})
	}
	if _, err := api.UpdateStatus(ctx, c, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of %s: %w", claimKey(c), err)
	}
	return nil
}

func run(ctx context.Context, o *options) (output, error) {
	out := output{Node: o.node}
	features, err := parseFeatures(o.features)
	if err != nil {
		return out, err
	}
	if (o.podName == "") != (o.podUID == "") {
		return out, badf("--pod-name and --pod-uid go together")
	}

	var in *inputs
	var cs kubernetes.Interface
	switch {
	case o.fromJSON != "":
		if len(o.claims) > 0 {
			return out, badf("--claim is not used with --from-json (the JSON lists the claims)")
		}
		in, err = loadJSON(o.fromJSON, o.node)
		o.dryRun = true
	default:
		if o.node == "" {
			return out, badf("--node is required")
		}
		if len(o.claims) == 0 {
			return out, badf("at least one --claim namespace/name is required")
		}
		if o.kubeconfig == "" {
			return out, badf("--kubeconfig is required (or use --from-json)")
		}
		cfg, cerr := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
		if cerr != nil {
			return out, badf("kubeconfig: %v", cerr)
		}
		cfg.UserAgent = "kndkit-test-allocator"
		cs, err = kubernetes.NewForConfig(cfg)
		if err != nil {
			return out, badf("client: %v", err)
		}
		in, err = loadCluster(ctx, cs, o)
	}
	if err != nil {
		return out, err
	}
	out.Node = in.node.Name

	var pending []*resourceapi.ResourceClaim
	for _, c := range in.toAlloc {
		if c.Status.Allocation != nil {
			out.Results = append(out.Results, claimResult{
				Claim: claimKey(c), Allocation: c.Status.Allocation, Status: "already-allocated",
			})
			continue
		}
		pending = append(pending, c)
	}
	if len(pending) == 0 {
		out.Allocated = true
		return out, nil
	}

	celCache := cel.NewCache(64, cel.Features{
		EnableConsumableCapacity: features.ConsumableCapacity,
		EnableListTypeAttributes: features.ListTypeAttributes,
	})
	alloc, err := structured.NewAllocator(ctx, features, allocatedState(in.allClaims), in.classes, in.slices, celCache)
	if err != nil {
		return out, badInput{fmt.Errorf("allocator: %w", err)}
	}
	results, err := alloc.Allocate(ctx, in.node, pending)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return out, err
		}
		return out, badInput{fmt.Errorf("allocate: %w", err)}
	}
	if results == nil {
		var names []string
		for _, c := range pending {
			names = append(names, claimKey(c))
		}
		sort.Strings(names)
		out.Reason = fmt.Sprintf("cannot allocate %s on node %s", strings.Join(names, ", "), in.node.Name)
		return out, nil
	}
	if len(results) != len(pending) {
		return out, fmt.Errorf("allocator returned %d results for %d claims", len(results), len(pending))
	}
	out.Allocated = true
	for i, c := range pending {
		out.Results = append(out.Results, claimResult{Claim: claimKey(c), Allocation: &results[i], Status: "allocated"})
	}
	if o.dryRun {
		return out, nil
	}
	for i, c := range pending {
		if err := persist(ctx, cs, c, results[i], o); err != nil {
			return out, err
		}
	}
	out.Written = true
	return out, nil
}

func main() {
	klogFlags := flag.NewFlagSet("klog", flag.ExitOnError)
	klog.InitFlags(klogFlags)

	o := &options{}
	fs := flag.NewFlagSet("allocator", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig of the cluster to read and write")
	fs.StringVar(&o.node, "node", "", "node to allocate for")
	fs.Var(&o.claims, "claim", "namespace/name of a claim to allocate (repeatable; allocated together)")
	fs.StringVar(&o.podName, "pod-name", "", "pod to put into status.reservedFor")
	fs.StringVar(&o.podUID, "pod-uid", "", "UID of --pod-name")
	fs.StringVar(&o.features, "features", "default", "allocator features: default (those the v1.37 scheduler enables by default), none (the stable allocator), all, or a comma-separated list of structured.Features field names")
	fs.BoolVar(&o.dryRun, "dry-run", false, "compute the allocation but do not write it")
	fs.StringVar(&o.fromJSON, "from-json", "", "read node, slices, classes and claims from this JSON file (- for stdin) instead of a cluster; implies --dry-run")
	fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "overall time limit")
	verbosity := fs.String("v", "0", "klog verbosity of the allocator's own logging (stderr)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(exitBadInput)
	}
	_ = klogFlags.Set("v", *verbosity)
	_ = klogFlags.Set("logtostderr", "true")
	if fs.NArg() > 0 {
		emit(output{Error: fmt.Sprintf("unexpected arguments: %v", fs.Args()), Kind: "bad-input"})
		os.Exit(exitBadInput)
	}

	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	ctx = klog.NewContext(ctx, klog.Background())

	out, err := run(ctx, o)
	if err != nil {
		out.Error = err.Error()
		out.Kind = "failure"
		code := exitFailure
		var bad badInput
		if errors.As(err, &bad) {
			out.Kind = "bad-input"
			code = exitBadInput
		}
		emit(out)
		fmt.Fprintln(os.Stderr, "allocator:", err)
		os.Exit(code)
	}
	emit(out)
	if !out.Allocated {
		fmt.Fprintln(os.Stderr, "allocator:", out.Reason)
		os.Exit(exitUnallocated)
	}
	os.Exit(exitOK)
}

func emit(o output) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(o); err != nil {
		fmt.Fprintln(os.Stderr, "allocator: encode output:", err)
	}
}
