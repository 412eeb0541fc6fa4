"""The example drivers bundled with kndkit.

:data:`BUNDLED` maps the names ``kndkit run`` accepts to ``module:Class``.
Each module is also runnable on its own (``python -m kndkit.examples.hello``)
and short enough to read as documentation.
"""

from __future__ import annotations

__all__ = ["BUNDLED"]

#: Bundled driver name -> ``module:Class``.
BUNDLED: dict[str, str] = {
    "hello": "kndkit.examples.hello:Hello",
    "netdev": "kndkit.examples.netdev:Netdev",
    "macvlan": "kndkit.examples.macvlan:Macvlan",
    "rdma": "kndkit.examples.rdma:Rdma",
}
