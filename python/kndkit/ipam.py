"""Node-local IP address management in one SQLite file (standard library).

An :class:`Ipam` hands out addresses from configured IPv4 and IPv6 ranges to
*owners* (opaque strings; drivers use ``"<claim uid>/<device>"``). It keeps its
own file (``ipam.sqlite`` in the driver's state directory by convention), apart
from the claim store, so the two schemas evolve independently.

Guarantees:

* **Persisted before returned.** Every allocation and release is one SQLite
  transaction committed with ``synchronous=FULL`` in WAL mode (the log is
  fsynced at commit) before the method returns.
* **Never twice.** An address is the primary key of its lease row, and every
  allocation runs inside ``BEGIN IMMEDIATE``, which serialises writers across
  threads *and processes* sharing the file; an address in use is never chosen.
* **Idempotent.** :meth:`Ipam.allocate` for an owner that already holds a lease
  returns that lease unchanged; :meth:`Ipam.release` of an owner without a lease
  does nothing.
* **Range changes are safe.** Opening the file with other ranges keeps every
  existing lease (an address outside the new ranges stays held until its owner
  releases it); such leases are logged at open and listed by
  :meth:`Ipam.out_of_range`.

Ranges are written as a CIDR (``"10.0.0.0/24"``, ``"fd00::/64"``) or as
``"START-END"`` with an optional ``/PREFIX`` (``"10.0.0.10-10.0.0.50/24"``). The
prefix is the one the leased address carries on the interface; without it, a
``START-END`` range takes the smallest network that holds both ends. In a CIDR
the network address and (IPv4 below /31) the broadcast address are never handed
out; neither are the gateways nor anything in ``exclude`` (addresses or CIDRs).

Addresses are picked round-robin: each range remembers the last address it gave
and continues after it, wrapping around, so a released address is reused as late
as possible (stale ARP/neighbour entries elsewhere have time to expire).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from kndkit import _sqlite
from kndkit.errors import InvalidArgument, KndError

__all__ = [
    "SCHEMA_VERSION",
    "IpRange",
    "Ipam",
    "IpamError",
    "IpamExhausted",
    "Lease",
    "parse_range",
]

log = logging.getLogger("kndkit.ipam")

#: The schema this code writes. A file with a higher version is refused.
SCHEMA_VERSION = 1

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ipam_schema (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ipam_leases (
    family INTEGER NOT NULL CHECK (family IN (4, 6)),
    key TEXT NOT NULL,
    address TEXT NOT NULL,
    prefixlen INTEGER NOT NULL,
    owner TEXT NOT NULL,
    range TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (family, key)
);
CREATE INDEX IF NOT EXISTS ipam_leases_owner ON ipam_leases (owner);
CREATE TABLE IF NOT EXISTS ipam_cursor (
    range TEXT PRIMARY KEY NOT NULL,
    last TEXT NOT NULL
)
"""


class IpamError(KndError):
    """The IPAM file cannot be used: damaged, from a newer kndkit, locked too long."""


class IpamExhausted(IpamError):
    """Every address of a family's ranges is leased or excluded."""


# --------------------------------------------------------------------------- ranges


def _key(addr: IPAddress) -> str:
    """A text key that sorts like the address (32 hex digits, both families)."""
    return f"{int(addr):032x}"


@dataclass(frozen=True)
class IpRange:
    """One range: the addresses ``first``..``last`` (inclusive) of ``network``.

    ``spec`` is the text it was parsed from, normalised (it names the range in
    errors and in the file).
    """

    spec: str
    network: IPNetwork
    first: IPAddress
    last: IPAddress

    @property
    def family(self) -> int:
        """4 or 6."""
        return self.network.version

    @property
    def size(self) -> int:
        """Addresses between ``first`` and ``last`` (exclusions not counted)."""
        return int(self.last) - int(self.first) + 1

    def __contains__(self, addr: object) -> bool:
        if not isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return False
        return addr.version == self.family and int(self.first) <= int(addr) <= int(self.last)


def _addr(text: str, what: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise InvalidArgument(f"IPAM {what} {text!r}: not an IP address") from None


def parse_range(spec: str) -> IpRange:
    """Parse ``"CIDR"`` or ``"START-END[/PREFIX]"`` (see the module docstring).

    Raises :class:`~kndkit.errors.InvalidArgument` naming ``spec`` when it is
    malformed, mixes families, has START after END, or leaves no usable address.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidArgument(f"IPAM range {spec!r}: expected 'CIDR' or 'START-END[/PREFIX]'")
    text = spec.strip()
    if "-" in text:
        body, _, prefix = text.partition("/")
        start_s, _, end_s = body.partition("-")
        start, end = _addr(start_s, f"range {spec!r}: start"), _addr(end_s, f"range {spec!r}: end")
        if start.version != end.version:
            raise InvalidArgument(f"IPAM range {spec!r}: start and end are of different families")
        if int(start) > int(end):
            raise InvalidArgument(f"IPAM range {spec!r}: start {start} is after end {end}")
        bits = start.max_prefixlen
        if prefix:
            try:
                plen = int(prefix)
            except ValueError:
                raise InvalidArgument(
                    f"IPAM range {spec!r}: bad prefix length {prefix!r}"
                ) from None
            if not 0 <= plen <= bits:
                raise InvalidArgument(f"IPAM range {spec!r}: prefix length {plen} out of range")
        else:
            # the smallest network holding both ends
            plen = bits - (int(start) ^ int(end)).bit_length()
        net = ipaddress.ip_network(f"{start}/{plen}", strict=False)
        if end not in net:
            raise InvalidArgument(f"IPAM range {spec!r}: end {end} is outside {net}")
        first, last = start, end
        norm = f"{start}-{end}/{plen}"
    else:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as e:
            raise InvalidArgument(f"IPAM range {spec!r}: not a CIDR: {e}") from None
        first, last = net.network_address, net.broadcast_address
        norm = str(net)
    # the network address (and the IPv4 broadcast) are never handed out
    if net.num_addresses > 2 or (net.version == 6 and net.num_addresses > 1):
        if first == net.network_address:
            first = first + 1
        if net.version == 4 and last == net.broadcast_address:
            last = last - 1
    if int(first) > int(last):
        raise InvalidArgument(f"IPAM range {spec!r}: no usable address")
    return IpRange(norm, net, first, last)


def _blocked_intervals(
    rng: IpRange, networks: Iterable[IPNetwork | IPAddress]
) -> list[tuple[int, int]]:
    """The excluded intervals (as integers) that touch ``rng``."""
    out = []
    for n in networks:
        if n.version != rng.family:
            continue
        if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            lo, hi = int(n.network_address), int(n.broadcast_address)
        else:
            lo = hi = int(n)
        if hi >= int(rng.first) and lo <= int(rng.last):
            out.append((lo, hi))
    return out


# --------------------------------------------------------------------------- leases


@dataclass(frozen=True)
class Lease:
    """The addresses one owner holds.

    ``addresses`` are CIDRs as they go on an interface (``"10.0.0.5/24"``), IPv4
    first, in allocation order. ``gateways`` are the configured gateways of the
    families the lease has addresses in (for a default route). ``ranges`` names,
    per address, the range it came from.
    """

    owner: str
    addresses: tuple[str, ...]
    gateways: tuple[str, ...] = ()
    ranges: tuple[str, ...] = ()
    created_at: float = 0.0

    @property
    def ips(self) -> tuple[str, ...]:
        """The addresses without their prefix length."""
        return tuple(a.split("/", 1)[0] for a in self.addresses)

    def to_json(self) -> dict[str, object]:
        """Plain JSON data (what a driver keeps in ``InterfacePlan.extra``)."""
        return {
            "owner": self.owner,
            "addresses": list(self.addresses),
            "gateways": list(self.gateways),
        }


# --------------------------------------------------------------------------- the allocator


class Ipam:
    """Addresses from ``ranges`` leased to owners; see the module docstring.

    Args:
        path: the SQLite file (created with its directory, mode 0700, if missing).
            Several processes may open the same file at once.
        ranges: one or more ranges, IPv4 and/or IPv6 (tried in the order given
            within a family).
        gateway: a gateway address, or one per family; never handed out.
        exclude: addresses or CIDRs never handed out.
        busy_timeout: seconds a write waits for another process's write.

    Raises :class:`~kndkit.errors.InvalidArgument` for bad ranges, gateways or
    exclusions (nothing is created), :class:`IpamError` for an unusable file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        ranges: Sequence[str],
        *,
        gateway: str | Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        busy_timeout: float = 10.0,
    ) -> None:
        if isinstance(ranges, str):
            ranges = [ranges]
        if not ranges:
            raise InvalidArgument("IPAM: at least one range is needed")
        self.ranges: tuple[IpRange, ...] = tuple(parse_range(r) for r in ranges)
        specs = [r.spec for r in self.ranges]
        for i, r in enumerate(self.ranges):
            for o in self.ranges[:i]:
                if (
                    r.family == o.family
                    and int(r.first) <= int(o.last)
                    and int(o.first) <= int(r.last)
                ):
                    raise InvalidArgument(f"IPAM ranges {o.spec} and {r.spec} overlap")
        gws = [gateway] if isinstance(gateway, str) else list(gateway or ())
        self.gateways: dict[int, IPAddress] = {}
        for g in gws:
            a = _addr(g, "gateway")
            if a.version in self.gateways:
                raise InvalidArgument(
                    f"IPAM: two IPv{a.version} gateways ({self.gateways[a.version]}, {a})"
                )
            if not any(r.family == a.version and a in r.network for r in self.ranges):
                raise InvalidArgument(
                    f"IPAM gateway {a}: outside the network of every IPv{a.version} range "
                    f"({', '.join(specs)})"
                )
            self.gateways[a.version] = a
        self.exclude: tuple[IPNetwork | IPAddress, ...] = ()
        excl: list[IPNetwork | IPAddress] = list(self.gateways.values())
        for e in exclude:
            try:
                excl.append(
                    ipaddress.ip_network(e, strict=False) if "/" in e else ipaddress.ip_address(e)
                )
            except (ValueError, TypeError):
                raise InvalidArgument(f"IPAM exclude {e!r}: not an address or CIDR") from None
        self.exclude = tuple(excl)
        self._specs = specs
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._db = _sqlite.connect(self.path, busy_timeout=busy_timeout, fail=self._error)
        try:
            self._setup()
        except BaseException:
            self._db.close()
            raise
        stale = self.out_of_range()
        for lease in stale:
            log.warning(
                "IPAM lease of %s (%s) is outside the configured ranges %s; kept until released",
                lease.owner,
                ", ".join(lease.addresses),
                ", ".join(specs),
            )

    # ---- opening

    def _setup(self) -> None:
        _sqlite.retry_while_busy(self._setup_once, busy_timeout=self.busy_timeout, fail=self._error)

    def _error(self, message: str) -> IpamError:
        return IpamError(f"IPAM file {self.path}: {message}")

    def _setup_once(self) -> None:
        db = self._db
        try:
            _sqlite.enable_wal(db, busy_timeout=self.busy_timeout, fail=self._error)
            with self._transaction(setup=True):
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                row = db.execute("SELECT version FROM ipam_schema WHERE id = 1").fetchone()
                if row is None:
                    db.execute(
                        "INSERT INTO ipam_schema (id, version) VALUES (1, ?)", (SCHEMA_VERSION,)
                    )
                elif int(row[0]) != SCHEMA_VERSION:
                    raise IpamError(
                        f"IPAM file {self.path} has schema version {row[0]}; this kndkit "
                        f"understands {SCHEMA_VERSION}"
                    )
        except sqlite3.OperationalError as e:
            if _sqlite.is_busy(e):
                raise _sqlite.Busy from None
            raise IpamError(f"IPAM file {self.path} is not usable: {e}") from None
        except sqlite3.DatabaseError as e:
            raise IpamError(f"IPAM file {self.path} is not usable: {e}") from None

    @contextlib.contextmanager
    def _transaction(self, *, setup: bool = False) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error.

        During set-up a busy error at BEGIN propagates (the set-up retries);
        afterwards it is an :class:`IpamError` (``busy_timeout`` already waited).
        """
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            if setup:
                raise
            raise IpamError(f"IPAM file {self.path}: cannot start a write: {e}") from None
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise IpamError(f"IPAM file {self.path}: write failed: {e}") from None
            raise

    # ---- reads

    def _leases_where(self, where: str, args: Sequence[object]) -> list[Lease]:
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT owner, family, key, address, prefixlen, range, created_at "
                    f"FROM ipam_leases {where} ORDER BY owner, family, rowid",
                    args,
                ).fetchall()
            except sqlite3.Error as e:
                raise IpamError(f"IPAM file {self.path}: read failed: {e}") from None
        return self._group(rows)

    def _group(self, rows: Sequence[Sequence[object]]) -> list[Lease]:
        by_owner: dict[str, list[Sequence[object]]] = {}
        for r in rows:
            by_owner.setdefault(str(r[0]), []).append(r)
        out = []
        for owner, rs in by_owner.items():
            fams = {int(str(r[1])) for r in rs}
            out.append(
                Lease(
                    owner=owner,
                    addresses=tuple(f"{r[3]}/{r[4]}" for r in rs),
                    gateways=tuple(
                        str(self.gateways[f]) for f in (4, 6) if f in fams and f in self.gateways
                    ),
                    ranges=tuple(str(r[5]) for r in rs),
                    created_at=min(float(str(r[6])) for r in rs),
                )
            )
        return out

    def get(self, owner: str) -> Lease | None:
        """The lease of ``owner``, or ``None``."""
        found = self._leases_where("WHERE owner = ?", (owner,))
        return found[0] if found else None

    def leases(self) -> list[Lease]:
        """Every lease, by owner."""
        return self._leases_where("", ())

    def out_of_range(self) -> list[Lease]:
        """Leases holding an address outside the configured ranges or now excluded.

        They stay held (they may still be on a running pod) until released.
        """
        return [
            lease
            for lease in self.leases()
            if any(not self._usable(ipaddress.ip_address(ip)) for ip in lease.ips)
        ]

    def _usable(self, addr: IPAddress) -> bool:
        if not any(addr in r for r in self.ranges):
            return False
        for n in self.exclude:
            if n.version != addr.version:
                continue
            if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                if addr in n:
                    return False
            elif n == addr:
                return False
        return True

    def free(self, family: int | None = None) -> int:
        """Addresses still free in the configured ranges (of ``family``, or all)."""
        total = 0
        with self._lock:
            for r in self.ranges:
                if family is not None and r.family != family:
                    continue
                blocked = _merge(self._blocked(self._db, r))
                total += r.size - sum(
                    min(hi, int(r.last)) - max(lo, int(r.first)) + 1 for lo, hi in blocked
                )
        return total

    def __len__(self) -> int:
        with self._lock:
            return int(
                self._db.execute("SELECT count(DISTINCT owner) FROM ipam_leases").fetchone()[0]
            )

    # ---- writes

    def allocate(self, owner: str, *, count: int = 1) -> Lease:
        """The lease of ``owner``: ``count`` addresses of each configured family.

        Idempotent: an owner that already holds a lease gets it back as it is
        (even if the ranges changed since). A new lease is committed and synced
        before it is returned. If one family's ranges have no free address,
        :class:`IpamExhausted` names them and nothing is allocated.
        """
        if not isinstance(owner, str) or not owner:
            raise InvalidArgument(f"IPAM owner {owner!r}: must be a non-empty string")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise InvalidArgument(f"IPAM allocate for {owner}: count {count!r} must be >= 1")
        existing = self.get(owner)
        if existing is not None:
            return existing
        families = sorted({r.family for r in self.ranges})
        now = time.time()
        with self._lock, self._transaction() as db:
            # another process may have allocated for this owner since get()
            row = db.execute(
                "SELECT 1 FROM ipam_leases WHERE owner = ? LIMIT 1", (owner,)
            ).fetchone()
            if row is None:
                for fam in families:
                    for _ in range(count):
                        rng, addr = self._pick(db, fam, owner)
                        db.execute(
                            "INSERT INTO ipam_leases (family, key, address, prefixlen, owner, "
                            "range, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (
                                fam,
                                _key(addr),
                                str(addr),
                                rng.network.prefixlen,
                                owner,
                                rng.spec,
                                now,
                            ),
                        )
                        db.execute(
                            "INSERT OR REPLACE INTO ipam_cursor (range, last) VALUES (?, ?)",
                            (rng.spec, _key(addr)),
                        )
            rows = db.execute(
                "SELECT owner, family, key, address, prefixlen, range, created_at "
                "FROM ipam_leases WHERE owner = ? ORDER BY family, rowid",
                (owner,),
            ).fetchall()
        lease = self._group(rows)[0]
        if row is None:
            log.info("IPAM leased %s to %s", ", ".join(lease.addresses), owner)
        return lease

    def _blocked(self, db: sqlite3.Connection, rng: IpRange) -> list[tuple[int, int]]:
        used = db.execute(
            "SELECT key FROM ipam_leases WHERE family = ? AND key >= ? AND key <= ?",
            (rng.family, _key(rng.first), _key(rng.last)),
        ).fetchall()
        return [(int(k, 16), int(k, 16)) for (k,) in used] + _blocked_intervals(rng, self.exclude)

    def _pick(self, db: sqlite3.Connection, family: int, owner: str) -> tuple[IpRange, IPAddress]:
        ranges = [r for r in self.ranges if r.family == family]
        for rng in ranges:
            blocked = _merge(self._blocked(db, rng))
            cur = db.execute("SELECT last FROM ipam_cursor WHERE range = ?", (rng.spec,)).fetchone()
            start = int(rng.first)
            if cur is not None:
                after = int(cur[0], 16) + 1
                if int(rng.first) <= after <= int(rng.last):
                    start = after
            found = _first_free(start, int(rng.last), blocked)
            if found is None and start > int(rng.first):
                found = _first_free(int(rng.first), start - 1, blocked)
            if found is not None:
                return rng, ipaddress.ip_address(found) if family == 4 else ipaddress.IPv6Address(
                    found
                )
        raise IpamExhausted(
            f"IPAM: no free IPv{family} address for {owner} in range"
            f"{'s' if len(ranges) > 1 else ''} {', '.join(r.spec for r in ranges)} "
            "(every address is leased or excluded)"
        )

    def release(self, owner: str) -> Lease | None:
        """Free the addresses of ``owner``; return the lease freed (``None`` if none).

        Idempotent; committed and synced before it returns.
        """
        with self._lock, self._transaction() as db:
            rows = db.execute(
                "SELECT owner, family, key, address, prefixlen, range, created_at "
                "FROM ipam_leases WHERE owner = ? ORDER BY family, rowid",
                (owner,),
            ).fetchall()
            if rows:
                db.execute("DELETE FROM ipam_leases WHERE owner = ?", (owner,))
        if not rows:
            return None
        lease = self._group(rows)[0]
        log.info("IPAM released %s of %s", ", ".join(lease.addresses), owner)
        return lease

    def release_prefix(self, prefix: str) -> list[Lease]:
        """Free every lease whose owner starts with ``prefix`` (e.g. ``"<claim uid>/"``).

        A driver calls it on unprepare to free every lease of a claim, even one
        allocated by a prepare that crashed before its plan was stored.
        """
        if not prefix:
            raise InvalidArgument("IPAM release_prefix: the prefix must not be empty")
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._lock, self._transaction() as db:
            rows = db.execute(
                "SELECT owner, family, key, address, prefixlen, range, created_at "
                "FROM ipam_leases WHERE owner LIKE ? ESCAPE '\\' ORDER BY owner, family, rowid",
                (pattern,),
            ).fetchall()
            # LIKE is case-insensitive for ASCII: keep the exact matches only
            rows = [r for r in rows if str(r[0]).startswith(prefix)]
            for owner in {str(r[0]) for r in rows}:
                db.execute("DELETE FROM ipam_leases WHERE owner = ?", (owner,))
        leases = self._group(rows)
        for lease in leases:
            log.info("IPAM released %s of %s", ", ".join(lease.addresses), lease.owner)
        return leases

    # ---- lifecycle

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ipam:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ipam({self.path!r}, {json.dumps(self._specs)})"


def _merge(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _first_free(lo: int, hi: int, blocked: Sequence[tuple[int, int]]) -> int | None:
    """The lowest integer in ``lo..hi`` outside the merged, sorted ``blocked`` intervals."""
    cand = lo
    for b_lo, b_hi in blocked:
        if b_hi < cand:
            continue
        if b_lo > cand:
            break
        cand = b_hi + 1
    return cand if cand <= hi else None
