//! Batched rtnetlink for kndkit.
//!
//! * [`wire`]: an exact, allocation-free encoder and attribute parser.
//! * [`sock::Conn`]: one NETLINK_ROUTE socket (opened inside a namespace with
//!   [`knd_netns::NetNs::run_in`], so the caller's thread never changes namespace),
//!   with extended ACKs, strict checking, capped ACKs, big buffers, batched send
//!   and sequence-matched replies.
//! * [`dump`]: links, addresses, routes, rules and neighbours of a namespace.
//!
//! ## What neli is used for
//! `neli` (0.7) provides the socket: `NlSocket::connect`, `send`/`recv`,
//! `enable_ext_ack` and `enable_strict_checking`. Its typed message builders
//! are not used: they allocate per attribute and its router sends one request
//! per `sendmsg`, while a plan must go out as one contiguous batch whose ACKs
//! are matched by sequence number. The messages are therefore written by
//! [`wire::Enc`] into one reusable buffer (nested link-kind payloads included),
//! which keeps encoding well under a microsecond per request.

pub mod dump;
pub mod error;
pub mod ethtool;
pub mod exec;
pub mod plan;
mod snapshot;
pub mod sock;
pub mod sysctl;
pub mod tc;
pub mod wire;

pub use dump::{
    dump_addresses, dump_links, dump_neighbours, dump_routes, dump_rules, AddrInfo, LinkInfo,
    NeighInfo, RouteInfo, RuleInfo,
};
pub use error::{ErrorKind, NlError};
pub use exec::{apply, apply_with, encode_plan, Outcome, Plan, Step, StepResult};
pub use plan::{Kind, LinkRef, Op};
pub use sock::Conn;
