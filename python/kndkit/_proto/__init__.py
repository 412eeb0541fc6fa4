"""Generated protobuf and gRPC modules (scripts/gen-proto.sh); do not edit."""
