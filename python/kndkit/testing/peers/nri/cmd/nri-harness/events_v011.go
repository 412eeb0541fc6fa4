//go:build nri_v011

package main

import (
	"context"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	"google.golang.org/protobuf/proto"
)

// apiLevel names the adaptation API this binary was built against.
const apiLevel = "v0.11"

type eventFn func(context.Context, *adaptation.Adaptation, []byte) (proto.Message, error)

// stateChange adapts a v0.11 event that travels as a StateChangeEvent{pod, container};
// the adaptation fills in the event kind itself.
func stateChange(call func(*adaptation.Adaptation, context.Context, *api.StateChangeEvent) error) eventFn {
	return func(ctx context.Context, r *adaptation.Adaptation, line []byte) (proto.Message, error) {
		evt := &api.StateChangeEvent{}
		if err := decodeInto(line, evt, "pod", "container"); err != nil {
			return nil, err
		}
		return nil, call(r, ctx, evt)
	}
}

// withReply adapts an event that has its own request and response types.
func withReply[T, R proto.Message](mk func() T, call func(*adaptation.Adaptation, context.Context, T) (R, error)) eventFn {
	return func(ctx context.Context, r *adaptation.Adaptation, line []byte) (proto.Message, error) {
		req := mk()
		if err := decodeInto(line, req); err != nil {
			return nil, err
		}
		rsp, err := call(r, ctx, req)
		if err != nil {
			return nil, err
		}
		return rsp, nil
	}
}

// v0.11 sends pod events and post-events to plugins as StateChange only.
var events = map[string]eventFn{
	"run_pod_sandbox": stateChange((*adaptation.Adaptation).RunPodSandbox),
	"update_pod_sandbox": withReply(func() *api.UpdatePodSandboxRequest { return &api.UpdatePodSandboxRequest{} },
		(*adaptation.Adaptation).UpdatePodSandbox),
	"post_update_pod_sandbox": stateChange((*adaptation.Adaptation).PostUpdatePodSandbox),
	"stop_pod_sandbox":        stateChange((*adaptation.Adaptation).StopPodSandbox),
	"remove_pod_sandbox":      stateChange((*adaptation.Adaptation).RemovePodSandbox),
	"create_container": withReply(func() *api.CreateContainerRequest { return &api.CreateContainerRequest{} },
		(*adaptation.Adaptation).CreateContainer),
	"post_create_container": stateChange((*adaptation.Adaptation).PostCreateContainer),
	"start_container":       stateChange((*adaptation.Adaptation).StartContainer),
	"post_start_container":  stateChange((*adaptation.Adaptation).PostStartContainer),
	"update_container": withReply(func() *api.UpdateContainerRequest { return &api.UpdateContainerRequest{} },
		(*adaptation.Adaptation).UpdateContainer),
	"post_update_container": stateChange((*adaptation.Adaptation).PostUpdateContainer),
	"stop_container": withReply(func() *api.StopContainerRequest { return &api.StopContainerRequest{} },
		(*adaptation.Adaptation).StopContainer),
	"remove_container": stateChange((*adaptation.Adaptation).RemoveContainer),
}

// benchEvents are the events the bench command can relay repeatedly. In v0.11
// RunPodSandbox travels as a StateChangeEvent.
var benchEvents = map[string]benchEvent{
	"run_pod_sandbox": func(nri *adaptation.Adaptation, line []byte) (func() benchCall, error) {
		evt := &api.StateChangeEvent{}
		if err := decodeInto(line, evt, "pod"); err != nil {
			return nil, err
		}
		return func() benchCall {
			e := proto.Clone(evt).(*api.StateChangeEvent)
			return func(ctx context.Context) (proto.Message, error) {
				return nil, nri.RunPodSandbox(ctx, e)
			}
		}, nil
	},
	"create_container": func(nri *adaptation.Adaptation, line []byte) (func() benchCall, error) {
		req := &api.CreateContainerRequest{}
		if err := decodeInto(line, req, "pod", "container"); err != nil {
			return nil, err
		}
		return func() benchCall {
			r := proto.Clone(req).(*api.CreateContainerRequest)
			return func(ctx context.Context) (proto.Message, error) {
				return nri.CreateContainer(ctx, r)
			}
		}, nil
	},
}
