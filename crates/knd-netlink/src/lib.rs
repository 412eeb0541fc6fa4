//! knd-netlink (placeholder, being written)
