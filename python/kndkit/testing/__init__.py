"""Test helpers for driver authors: fake sysfs trees (and fake ``/dev/infiniband``).

See :mod:`kndkit.testing.sysfs`. Nothing here touches the real node.
"""

from __future__ import annotations

from kndkit.testing.sysfs import (
    GPU_VM_CAPTURE,
    SysfsBuilder,
    build_from_capture,
    build_synthetic,
)

__all__ = ["GPU_VM_CAPTURE", "SysfsBuilder", "build_from_capture", "build_synthetic"]
