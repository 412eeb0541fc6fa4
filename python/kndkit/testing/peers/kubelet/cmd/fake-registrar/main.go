// Command fake-registrar serves only the plugin registration service with
// whatever PluginInfo it is told to, so tests can feed the kubelet harness
// invalid or conflicting registrations. Each NotifyRegistrationStatus it
// receives is printed to stdout as one JSON line.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"google.golang.org/grpc"

	regapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type server struct {
	info *regapi.PluginInfo
	mu   sync.Mutex
	regapi.UnimplementedRegistrationServer
}

func (s *server) GetInfo(context.Context, *regapi.InfoRequest) (*regapi.PluginInfo, error) {
	return s.info, nil
}

func (s *server) NotifyRegistrationStatus(_ context.Context, st *regapi.RegistrationStatus) (*regapi.RegistrationStatusResponse, error) {
	b, _ := json.Marshal(map[string]any{"event": "notified", "registered": st.PluginRegistered, "error": st.Error})
	s.mu.Lock()
	fmt.Println(string(b))
	s.mu.Unlock()
	return &regapi.RegistrationStatusResponse{}, nil
}

func main() {
	socket := flag.String("socket", "", "registration socket to serve (required)")
	typ := flag.String("type", regapi.DRAPlugin, "PluginInfo.type")
	name := flag.String("name", "", "PluginInfo.name")
	endpoint := flag.String("endpoint", "", "PluginInfo.endpoint")
	versions := flag.String("versions", "v1.DRAPlugin", "comma-separated PluginInfo.supported_versions (empty: none)")
	flag.Parse()
	if *socket == "" {
		fmt.Fprintln(os.Stderr, "fake-registrar: --socket is required")
		os.Exit(2)
	}
	info := &regapi.PluginInfo{Type: *typ, Name: *name, Endpoint: *endpoint}
	for _, v := range strings.Split(*versions, ",") {
		if v = strings.TrimSpace(v); v != "" {
			info.SupportedVersions = append(info.SupportedVersions, v)
		}
	}
	_ = os.Remove(*socket)
	l, err := net.Listen("unix", *socket)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake-registrar: %v\n", err)
		os.Exit(1)
	}
	srv := grpc.NewServer()
	regapi.RegisterRegistrationServer(srv, &server{info: info})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	fmt.Println(`{"event":"ready"}`)
	if err := srv.Serve(l); err != nil {
		fmt.Fprintf(os.Stderr, "fake-registrar: %v\n", err)
	}
	_ = os.Remove(*socket)
}
