//! knd-sysfs (placeholder, being written)
