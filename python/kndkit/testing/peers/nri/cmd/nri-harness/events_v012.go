//go:build !nri_v011

package main

import (
	"context"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	"google.golang.org/protobuf/proto"
)

// apiLevel names the adaptation API this binary was built against.
const apiLevel = "v0.12"

type eventFn func(context.Context, *adaptation.Adaptation, []byte) (proto.Message, error)

// noReply adapts an event that returns only an error.
func noReply[T proto.Message](mk func() T, call func(*adaptation.Adaptation, context.Context, T) error) eventFn {
	return func(ctx context.Context, r *adaptation.Adaptation, line []byte) (proto.Message, error) {
		req := mk()
		if err := decodeInto(line, req); err != nil {
			return nil, err
		}
		return nil, call(r, ctx, req)
	}
}

// withReply adapts an event that returns a response message.
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

// v0.12 relays every pod and container event with its own request type.
var events = map[string]eventFn{
	"run_pod_sandbox": noReply(func() *api.RunPodSandboxRequest { return &api.RunPodSandboxRequest{} },
		(*adaptation.Adaptation).RunPodSandbox),
	"update_pod_sandbox": withReply(func() *api.UpdatePodSandboxRequest { return &api.UpdatePodSandboxRequest{} },
		(*adaptation.Adaptation).UpdatePodSandbox),
	"post_update_pod_sandbox": noReply(func() *api.PostUpdatePodSandboxRequest { return &api.PostUpdatePodSandboxRequest{} },
		(*adaptation.Adaptation).PostUpdatePodSandbox),
	"stop_pod_sandbox": noReply(func() *api.StopPodSandboxRequest { return &api.StopPodSandboxRequest{} },
		(*adaptation.Adaptation).StopPodSandbox),
	"remove_pod_sandbox": noReply(func() *api.RemovePodSandboxRequest { return &api.RemovePodSandboxRequest{} },
		(*adaptation.Adaptation).RemovePodSandbox),
	"create_container": withReply(func() *api.CreateContainerRequest { return &api.CreateContainerRequest{} },
		(*adaptation.Adaptation).CreateContainer),
	"post_create_container": noReply(func() *api.PostCreateContainerRequest { return &api.PostCreateContainerRequest{} },
		(*adaptation.Adaptation).PostCreateContainer),
	"start_container": noReply(func() *api.StartContainerRequest { return &api.StartContainerRequest{} },
		(*adaptation.Adaptation).StartContainer),
	"post_start_container": noReply(func() *api.PostStartContainerRequest { return &api.PostStartContainerRequest{} },
		(*adaptation.Adaptation).PostStartContainer),
	"update_container": withReply(func() *api.UpdateContainerRequest { return &api.UpdateContainerRequest{} },
		(*adaptation.Adaptation).UpdateContainer),
	"post_update_container": noReply(func() *api.PostUpdateContainerRequest { return &api.PostUpdateContainerRequest{} },
		(*adaptation.Adaptation).PostUpdateContainer),
	"stop_container": withReply(func() *api.StopContainerRequest { return &api.StopContainerRequest{} },
		(*adaptation.Adaptation).StopContainer),
	"remove_container": noReply(func() *api.RemoveContainerRequest { return &api.RemoveContainerRequest{} },
		(*adaptation.Adaptation).RemoveContainer),
}

// benchEvents are the events the bench command can relay repeatedly.
var benchEvents = map[string]benchEvent{
	"run_pod_sandbox": func(nri *adaptation.Adaptation, line []byte) (func() benchCall, error) {
		req := &api.RunPodSandboxRequest{}
		if err := decodeInto(line, req, "pod"); err != nil {
			return nil, err
		}
		return func() benchCall {
			r := proto.Clone(req).(*api.RunPodSandboxRequest)
			return func(ctx context.Context) (proto.Message, error) {
				return nil, nri.RunPodSandbox(ctx, r)
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
