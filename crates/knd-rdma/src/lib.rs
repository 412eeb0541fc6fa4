//! knd-rdma (placeholder, being written)
