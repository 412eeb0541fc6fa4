//! The batch engine: runs a [`Plan`] in as few `sendmsg` calls as the kernel
//! allows, matches every ACK to its step, and undoes the completed steps in
//! reverse order on the first failure.
//!
//! Steps run on the socket of the namespace they execute in (one socket per
//! namespace, cached for the plan); consecutive steps of one namespace form one
//! batch. A batch is sent early only when a later step addresses a link whose
//! index cannot be known before the batch runs (a link created or moved into a
//! namespace by an earlier step): then the batch is flushed and the link is
//! looked up. Moves run on the source namespace's socket with IFLA_NET_NS_FD.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;

use knd_netns::NetNs;

use crate::dump::{self, LinkInfo};
use crate::error::{ErrorKind, NlError};
use crate::ethtool::{self, Dev, EthtoolConn};
use crate::plan::{self, Kind, LinkRef, LinkSet, Op, Resolved};
use crate::snapshot::{self, LinkState, Snapshot};
use crate::sock::{Conn, Reply};
use crate::wire::{self, Enc};

/// One step: an operation and the namespace it executes in.
#[derive(Debug, Clone)]
pub struct Step {
    /// Index into [`Plan::namespaces`]; `None` = the caller's namespace.
    pub ns: Option<usize>,
    pub op: Op,
}

/// A plan: the namespaces its steps name, and the steps.
#[derive(Debug, Default)]
pub struct Plan {
    pub namespaces: Vec<NetNs>,
    pub steps: Vec<Step>,
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    pub index: usize,
    pub op: &'static str,
    pub ifindex: Option<i32>,
}

/// The outcome of [`apply`].
#[derive(Debug, Clone)]
pub struct Outcome {
    pub steps: usize,
    /// `sendmsg` calls that carried the plan's changes (lookups not counted).
    pub sendmsg: usize,
    pub results: Vec<StepResult>,
}

/// How to undo one completed step.
#[derive(Debug, Clone)]
enum Undo {
    Impossible(&'static str),
    /// Delete a link this plan created: by name, in a space.
    DelLink {
        space: usize,
        name: String,
    },
    /// The opposite request, links addressed by name in `space`.
    Inverse {
        space: usize,
        op: Op,
    },
    /// Restore a link changed by `link_set`.
    Restore(Box<Restore>),
    /// Write a sysctl's previous value back.
    Sysctl {
        space: usize,
        path: String,
        old: String,
    },
    /// Set ethtool features and private flags back.
    Ethtool {
        space: usize,
        ifindex: i32,
        features: Vec<(String, bool)>,
        flags: Vec<(String, bool)>,
    },
    /// Move an RDMA device back.
    RdmaMove {
        device: String,
        from: usize,
        to: usize,
    },
}

#[derive(Debug, Clone)]
struct Restore {
    before: usize,
    after: usize,
    name_after: String,
    ifindex: i32,
    prior: LinkInfo,
    set: LinkSet,
    /// For a move: what the source namespace held for the link.
    state: LinkState,
}

struct Item {
    index: usize,
    undo: Undo,
    ifindex: Option<i32>,
    spaces: [Option<usize>; 3],
}

struct Space {
    ns: NetNs,
    here: bool,
    conn: Option<Conn>,
    /// Taken before the first move out of this namespace.
    snap: Option<Snapshot>,
    /// Links the plan moved out of this namespace so far (ifindex).
    moved_out: Vec<i32>,
}

struct Engine<'p> {
    plan: &'p Plan,
    spaces: Vec<Space>,
    /// Plan namespace index -> space.
    map: Vec<usize>,
    cache: HashMap<(usize, String), Option<LinkInfo>>,
    /// Names changed by already-sent steps: to be looked up again.
    dirty: HashSet<(usize, String)>,
    /// Names changed by steps of the pending batch: the batch must go first.
    pending_dirty: HashSet<(usize, String)>,
    batch_space: usize,
    buf: Vec<u8>,
    bounds: Vec<usize>,
    items: Vec<Item>,
    done: Vec<Item>,
    sends: usize,
    results: Vec<StepResult>,
    done_count: usize,
    /// Take a snapshot of a namespace before moving links out of it (for rollback).
    snapshots: bool,
    /// Ethtool sockets, per space.
    ethtool: HashMap<usize, EthtoolConn>,
    /// The `link_set` the kernel refused: it may have been applied in part.
    failed: Option<Item>,
    /// Undo the part of a refused `link_set` the kernel applied.
    recover_partial: bool,
}

/// Executes `plan`. On failure the completed steps are undone (when `rollback`)
/// and the error names the first failing step.
pub fn apply(plan: &Plan, rollback: bool) -> Result<Outcome, NlError> {
    apply_with(plan, rollback, false)
}

/// [`apply`], and with `recover_partial` the rollback also undoes what the
/// kernel applied of a refused `link_set` (see `Engine::undo_partial`).
pub fn apply_with(plan: &Plan, rollback: bool, recover_partial: bool) -> Result<Outcome, NlError> {
    for (i, s) in plan.steps.iter().enumerate() {
        s.op.validate()
            .map_err(|m| step_err(ErrorKind::InvalidArgument, i, &s.op, m))?;
        for ns in ns_uses(s) {
            if ns >= plan.namespaces.len() {
                return Err(step_err(
                    ErrorKind::InvalidArgument,
                    i,
                    &s.op,
                    "unknown namespace reference".into(),
                ));
            }
        }
    }
    let mut eng = Engine::new(plan)?;
    // Without rollback nothing will be restored: skip the snapshot of what moves.
    eng.snapshots = rollback;
    eng.recover_partial = recover_partial;
    eng.prepare()?;
    match eng.run() {
        Ok(()) => Ok(Outcome {
            steps: plan.steps.len(),
            sendmsg: eng.sends,
            results: eng.results,
        }),
        Err(mut e) => {
            if rollback {
                let errs = eng.rollback();
                e.rolled_back = errs.is_empty();
                let n = eng.done_count;
                if errs.is_empty() {
                    e.message
                        .push_str(&format!("; rolled back {n} completed step(s)"));
                } else {
                    e.message.push_str(&format!(
                        "; rollback of {n} step(s) incomplete: {}",
                        errs.join("; ")
                    ));
                }
                e.rollback_errors = errs;
            } else if !eng.done.is_empty() {
                e.message.push_str(&format!(
                    "; {} completed step(s) left in place (rollback=False)",
                    eng.done.len()
                ));
            }
            Err(e)
        }
    }
}

/// The messages `apply` would send for `plan`, one per step, sequence numbers
/// from `seq`. Links named by `ifname` are looked up in their namespace (they
/// must exist now); namespaces encode as the handles' descriptors.
pub fn encode_plan(plan: &Plan, seq: u32) -> Result<Vec<Vec<u8>>, NlError> {
    let mut eng = Engine::new(plan)?;
    let mut out = Vec::with_capacity(plan.steps.len());
    for (i, s) in plan.steps.iter().enumerate() {
        s.op.validate()
            .map_err(|m| step_err(ErrorKind::InvalidArgument, i, &s.op, m))?;
        let sp = eng.space_of(s.ns);
        let (a, b) = s.op.refs();
        let mut r = Resolved::default();
        if let Some(l) = a {
            r.target = eng.lookup_existing(i, &s.op, sp, l)?;
        }
        if let Some(l) = b {
            r.other = eng.lookup_existing(i, &s.op, sp, l)?;
        }
        let mut buf = Vec::with_capacity(128);
        let fds: Vec<i32> = plan.namespaces.iter().map(|n| n.as_raw_fd()).collect();
        plan::encode(
            &mut Enc::new(&mut buf),
            seq.wrapping_add(i as u32),
            &s.op,
            r,
            &|k| fds[k],
        )?;
        out.push(buf);
    }
    Ok(out)
}

fn ns_uses(s: &Step) -> Vec<usize> {
    let mut v: Vec<usize> = s.ns.into_iter().collect();
    match &s.op {
        Op::LinkSet(l) => v.extend(l.netns),
        Op::NewLink(n) => {
            v.extend(n.netns);
            if let Kind::Veth { peer_ns, .. } = &n.kind {
                v.extend(*peer_ns);
            }
        }
        Op::RdmaMove(m) => v.push(m.netns),
        _ => {}
    }
    v
}

/// Puts the step's facts on an error raised outside the batch.
fn attribute(mut e: NlError, index: usize, op: &Op) -> NlError {
    e.message = format!(
        "step {index} ({}{}): {}",
        op.name(),
        ifname_suffix(op),
        e.message
    );
    e.step_index = index as i64;
    e.op = op.name();
    if e.ifname.is_none() {
        e.ifname = op.ifname();
    }
    e
}

fn rdma_err(e: knd_rdma::RdmaError) -> NlError {
    use knd_rdma::RdmaError as R;
    let msg = e.to_string();
    match e {
        R::NotAvailable(_) => NlError::new(ErrorKind::NotAvailable, msg),
        R::Invalid(_) => NlError::invalid(msg),
        R::Namespace(n) => {
            let mut x = NlError::namespace(msg);
            x.errno = n.errno;
            x
        }
        R::Kernel { errno, message, .. } => {
            let mut x = NlError::new(ErrorKind::Netlink, msg);
            x.errno = errno;
            x.kernel_message = message.into();
            x
        }
        R::Os { errno, .. } => {
            let mut x = NlError::new(ErrorKind::Netlink, msg);
            x.errno = errno;
            x
        }
        R::Protocol(_) => NlError::new(ErrorKind::Netlink, msg),
    }
}

fn step_err(kind: ErrorKind, index: usize, op: &Op, message: String) -> NlError {
    let mut e = NlError::new(
        kind,
        format!(
            "step {index} ({}{}): {message}",
            op.name(),
            ifname_suffix(op)
        ),
    );
    e.step_index = index as i64;
    e.op = op.name();
    e.ifname = op.ifname();
    e
}

fn ifname_suffix(op: &Op) -> String {
    op.ifname().map(|n| format!(" {n}")).unwrap_or_default()
}

fn desc(ns: &NetNs, here: bool) -> String {
    if here {
        "the caller's namespace".into()
    } else {
        match ns.path() {
            Some(p) => format!("namespace {}", p.display()),
            None => format!("namespace inode {}", ns.inode()),
        }
    }
}

impl<'p> Engine<'p> {
    fn new(plan: &'p Plan) -> Result<Self, NlError> {
        let here = NetNs::current()?;
        let mut spaces = vec![Space {
            ns: here,
            here: true,
            conn: None,
            snap: None,
            moved_out: Vec::new(),
        }];
        let mut map = Vec::with_capacity(plan.namespaces.len());
        for ns in &plan.namespaces {
            let found = spaces.iter().position(|s| s.ns.same_as(ns));
            let id = match found {
                Some(id) => id,
                None => {
                    spaces.push(Space {
                        ns: ns.try_clone()?,
                        here: false,
                        conn: None,
                        snap: None,
                        moved_out: Vec::new(),
                    });
                    spaces.len() - 1
                }
            };
            map.push(id);
        }
        Ok(Self {
            plan,
            snapshots: true,
            spaces,
            map,
            cache: HashMap::new(),
            dirty: HashSet::new(),
            pending_dirty: HashSet::new(),
            batch_space: 0,
            buf: Vec::with_capacity(plan.steps.len() * 96),
            bounds: Vec::with_capacity(plan.steps.len()),
            items: Vec::with_capacity(plan.steps.len()),
            done: Vec::with_capacity(plan.steps.len()),
            sends: 0,
            results: Vec::with_capacity(plan.steps.len()),
            done_count: 0,
            ethtool: HashMap::new(),
            failed: None,
            recover_partial: false,
        })
    }

    fn space_of(&self, ns: Option<usize>) -> usize {
        ns.map(|i| self.map[i]).unwrap_or(0)
    }

    fn conn(&mut self, space: usize) -> Result<&mut Conn, NlError> {
        let sp = &mut self.spaces[space];
        if sp.conn.is_none() {
            sp.ns.ensure_alive()?;
            let c = if sp.here {
                Conn::open(None)?
            } else {
                Conn::open(Some(&sp.ns))?
            };
            sp.conn = Some(c);
        }
        Ok(sp.conn.as_mut().expect("just opened"))
    }

    fn fd(&self, space: usize) -> i32 {
        self.spaces[space].ns.as_raw_fd()
    }

    fn lookup_existing(
        &mut self,
        i: usize,
        op: &Op,
        space: usize,
        l: &LinkRef,
    ) -> Result<i32, NlError> {
        match l {
            LinkRef::Index(x) => Ok(*x),
            LinkRef::Name(n) => match self.conn(space)?.link(0, Some(n))? {
                Some(info) => Ok(info.ifindex),
                None => {
                    let d = desc(&self.spaces[space].ns, self.spaces[space].here);
                    Err(step_err(
                        ErrorKind::InvalidArgument,
                        i,
                        op,
                        format!("no interface named {n:?} in {d}"),
                    ))
                }
            },
        }
    }

    /// Before anything is sent: every namespace is alive, and every link the
    /// plan addresses either exists now (read in one batched RTM_GETLINK per
    /// namespace, which also records its prior state) or is created by an
    /// earlier step.
    fn prepare(&mut self) -> Result<(), NlError> {
        let plan = self.plan;
        for (i, s) in plan.steps.iter().enumerate() {
            for ns in ns_uses(s) {
                let sp = self.map[ns];
                if let Err(e) = self.spaces[sp].ns.ensure_alive() {
                    return Err(step_err(ErrorKind::Namespace, i, &s.op, e.message));
                }
            }
        }
        self.check_side_channels()?;
        // Sockets for every other namespace of the plan, opened on one thread.
        let want: Vec<usize> = (0..self.spaces.len())
            .filter(|&k| !self.spaces[k].here && self.spaces[k].conn.is_none())
            .collect();
        if want.len() > 1 {
            let nss: Vec<&NetNs> = want.iter().map(|&k| &self.spaces[k].ns).collect();
            let conns = Conn::open_each(&nss)?;
            for (k, c) in want.into_iter().zip(conns) {
                self.spaces[k].conn = Some(c);
            }
        }
        let mut created: HashSet<(usize, String)> = HashSet::new();
        let mut need: Vec<Vec<(usize, LinkRef)>> = vec![Vec::new(); self.spaces.len()];
        // Each distinct link is looked up once per namespace, however many steps
        // name it (errors are attributed to the first step that does).
        let mut seen: HashSet<(usize, &LinkRef)> = HashSet::new();
        for (i, s) in plan.steps.iter().enumerate() {
            let sp = self.space_of(s.ns);
            let (a, b) = s.op.refs();
            for l in [a, b].into_iter().flatten() {
                match l {
                    LinkRef::Name(n) if created.contains(&(sp, n.clone())) => {}
                    _ if !seen.insert((sp, l)) => {}
                    _ => need[sp].push((i, l.clone())),
                }
            }
            match &s.op {
                Op::LinkSet(ls) if ls.name.is_some() || ls.netns.is_some() => {
                    let t = ls.netns.map(|k| self.map[k]).unwrap_or(sp);
                    if let Some(n) = ls
                        .name
                        .clone()
                        .or_else(|| ls.link.as_ref().and_then(|l| l.name().map(String::from)))
                    {
                        created.insert((t, n));
                    }
                }
                Op::NewLink(nl) => {
                    let t = nl.netns.map(|k| self.map[k]).unwrap_or(sp);
                    created.insert((t, nl.name.clone()));
                    if let Kind::Veth {
                        peer_name, peer_ns, ..
                    } = &nl.kind
                    {
                        let pt = peer_ns.map(|k| self.map[k]).unwrap_or(sp);
                        created.insert((pt, peer_name.clone()));
                    }
                }
                _ => {}
            }
        }
        for (sp, refs) in need.into_iter().enumerate() {
            if refs.is_empty() {
                continue;
            }
            let mut buf = Vec::with_capacity(refs.len() * 48);
            let mut bounds = Vec::with_capacity(refs.len());
            let conn = self.conn(sp)?;
            let first = conn.next_seqs(refs.len() as u32);
            {
                let mut e = Enc::new(&mut buf);
                for (k, (_, l)) in refs.iter().enumerate() {
                    bounds.push(e.buf.len());
                    match l {
                        LinkRef::Name(n) => {
                            dump::encode_link_get(&mut e, first + k as u32, 0, Some(n))
                        }
                        LinkRef::Index(x) => {
                            dump::encode_link_get(&mut e, first + k as u32, *x, None)
                        }
                    }
                }
            }
            let replies = conn.transact(&buf, &bounds, first)?;
            for ((i, l), reply) in refs.iter().zip(replies) {
                match reply {
                    Reply::Data(wire::RTM_NEWLINK, p) => {
                        if let Some(info) = dump::parse_link(&p) {
                            self.cache.insert((sp, info.name.clone()), Some(info));
                        }
                    }
                    Reply::Err(errno, msg) if errno != libc::ENODEV => {
                        let op = &plan.steps[*i].op;
                        let mut e = step_err(
                            ErrorKind::Netlink,
                            *i,
                            op,
                            crate::error::describe("RTM_GETLINK", errno, &msg),
                        );
                        e.errno = errno;
                        e.kernel_message = msg.into();
                        return Err(e);
                    }
                    _ => {
                        let op = &plan.steps[*i].op;
                        let d = desc(&self.spaces[sp].ns, self.spaces[sp].here);
                        let what = match l {
                            LinkRef::Name(n) => format!("no interface named {n:?} in {d}"),
                            LinkRef::Index(x) => format!("no interface with ifindex {x} in {d}"),
                        };
                        let mut e = step_err(ErrorKind::InvalidArgument, *i, op, what);
                        e.errno = libc::ENODEV;
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// The current state of a link (from the cache, or looked up now after
    /// flushing the pending batch when earlier steps may have changed it).
    fn resolve(&mut self, i: usize, space: usize, l: &LinkRef) -> Result<LinkInfo, NlError> {
        let key = match l {
            LinkRef::Name(n) => (space, n.clone()),
            LinkRef::Index(x) => {
                let found = self
                    .cache
                    .iter()
                    .find(|((s, _), v)| *s == space && v.as_ref().is_some_and(|v| v.ifindex == *x));
                if let Some((_, Some(info))) = found {
                    return Ok(info.clone());
                }
                self.flush()?;
                return match self.conn(space)?.link(*x, None)? {
                    Some(info) => Ok(info),
                    None => Err(self.missing(i, space, l)),
                };
            }
        };
        if self.pending_dirty.contains(&key) {
            self.flush()?;
        }
        if self.dirty.contains(&key) || !self.cache.contains_key(&key) {
            self.refresh(space, &key.1)?;
        }
        match self.cache.get(&key) {
            Some(Some(info)) => Ok(info.clone()),
            _ => Err(self.missing(i, space, l)),
        }
    }

    /// Looks up `name` and every other changed name of `space` in one batched RTM_GETLINK.
    fn refresh(&mut self, space: usize, name: &str) -> Result<(), NlError> {
        let mut names: Vec<String> = vec![name.to_string()];
        names.extend(
            self.dirty
                .iter()
                .filter(|k| k.0 == space && k.1 != name)
                .map(|k| k.1.clone()),
        );
        let mut buf = Vec::with_capacity(names.len() * 48);
        let mut bounds = Vec::with_capacity(names.len());
        let conn = self.conn(space)?;
        let first = conn.next_seqs(names.len() as u32);
        {
            let mut e = Enc::new(&mut buf);
            for (k, n) in names.iter().enumerate() {
                bounds.push(e.buf.len());
                dump::encode_link_get(&mut e, first.wrapping_add(k as u32), 0, Some(n));
            }
        }
        let replies = conn.transact(&buf, &bounds, first)?;
        for (n, reply) in names.into_iter().zip(replies) {
            let info = match reply {
                Reply::Data(wire::RTM_NEWLINK, p) => dump::parse_link(&p),
                _ => None,
            };
            self.dirty.remove(&(space, n.clone()));
            self.cache.insert((space, n), info);
        }
        Ok(())
    }

    fn missing(&self, i: usize, space: usize, l: &LinkRef) -> NlError {
        let op = &self.plan.steps[i].op;
        let d = desc(&self.spaces[space].ns, self.spaces[space].here);
        let mut e = step_err(
            ErrorKind::Netlink,
            i,
            op,
            format!("ENODEV: no interface {l} in {d}"),
        );
        e.errno = libc::ENODEV;
        e
    }

    fn run(&mut self) -> Result<(), NlError> {
        let plan = self.plan;
        for (i, step) in plan.steps.iter().enumerate() {
            let sp = self.space_of(step.ns);
            if step.op.is_side_channel() {
                self.flush()?;
                let target = match step.op.refs().0 {
                    Some(l) => Some(self.resolve(i, sp, l)?),
                    None => None,
                };
                let undo = self
                    .side(sp, &step.op, target.as_ref())
                    .map_err(|e| attribute(e, i, &step.op))?;
                let ifindex = target.as_ref().map(|t| t.ifindex);
                self.results.push(StepResult {
                    index: i,
                    op: step.op.name(),
                    ifindex,
                });
                self.done.push(Item {
                    index: i,
                    undo,
                    ifindex,
                    spaces: [Some(sp), None, None],
                });
                continue;
            }
            if !self.items.is_empty() && self.batch_space != sp {
                self.flush()?;
            }
            let (a, b) = step.op.refs();
            let target = match a {
                Some(l) => Some(self.resolve(i, sp, l)?),
                None => None,
            };
            let other = match b {
                Some(l) => Some(self.resolve(i, sp, l)?),
                None => None,
            };
            if !self.items.is_empty() && self.batch_space != sp {
                self.flush()?;
            }
            let r = Resolved {
                target: target.as_ref().map(|t| t.ifindex).unwrap_or(0),
                other: other.as_ref().map(|t| t.ifindex).unwrap_or(0),
            };
            let undo = self.undo_for(sp, &step.op, target.as_ref(), other.as_ref())?;
            // Encode into the batch (sequence numbers are patched in at flush).
            self.batch_space = sp;
            self.bounds.push(self.buf.len());
            let fds: Vec<i32> = (0..plan.namespaces.len())
                .map(|k| self.fd(self.map[k]))
                .collect();
            plan::encode(&mut Enc::new(&mut self.buf), 0, &step.op, r, &|k| fds[k])?;
            let uses = ns_uses(step);
            let mut spaces = [Some(sp), None, None];
            for (slot, k) in spaces
                .iter_mut()
                .skip(1)
                .zip(uses.iter().skip(step.ns.is_some() as usize))
            {
                *slot = Some(self.map[*k]);
            }
            self.items.push(Item {
                index: i,
                undo,
                ifindex: target.as_ref().map(|t| t.ifindex),
                spaces,
            });
            self.effects(sp, &step.op, target.as_ref());
        }
        self.flush()
    }

    /// How the names the engine knows change once `op` has run.
    fn effects(&mut self, sp: usize, op: &Op, target: Option<&LinkInfo>) {
        match op {
            Op::LinkSet(s) => {
                let Some(t) = target else { return };
                let old = (sp, t.name.clone());
                let new_name = s.name.clone().unwrap_or_else(|| t.name.clone());
                if let Some(k) = s.netns.map(|k| self.map[k]).filter(|k| *k != sp) {
                    self.cache.remove(&old);
                    self.pending_dirty.insert(old.clone());
                    self.pending_dirty.insert((k, new_name.clone()));
                    self.cache.remove(&(k, new_name));
                } else if new_name != t.name {
                    self.cache.remove(&old);
                    self.pending_dirty.insert(old.clone());
                    let mut info = t.clone();
                    info.name = new_name.clone();
                    self.dirty.remove(&(sp, new_name.clone()));
                    self.pending_dirty.remove(&(sp, new_name.clone()));
                    self.cache.insert((sp, new_name), Some(info));
                }
            }
            Op::LinkDel(_) => {
                if let Some(t) = target {
                    self.pending_dirty.insert((sp, t.name.clone()));
                }
            }
            Op::LinkDelGroup(_) => {
                let keys: Vec<_> = self.cache.keys().filter(|k| k.0 == sp).cloned().collect();
                self.pending_dirty.extend(keys);
            }
            Op::NewLink(n) => {
                let t = n.netns.map(|k| self.map[k]).unwrap_or(sp);
                self.pending_dirty.insert((t, n.name.clone()));
                if let Kind::Veth {
                    peer_name, peer_ns, ..
                } = &n.kind
                {
                    let pt = peer_ns.map(|k| self.map[k]).unwrap_or(sp);
                    self.pending_dirty.insert((pt, peer_name.clone()));
                }
            }
            _ => {}
        }
    }

    fn undo_for(
        &mut self,
        sp: usize,
        op: &Op,
        target: Option<&LinkInfo>,
        other: Option<&LinkInfo>,
    ) -> Result<Undo, NlError> {
        let by_name = |info: Option<&LinkInfo>| info.map(|t| LinkRef::Name(t.name.clone()));
        Ok(match op {
            Op::LinkSet(s) => {
                let Some(t) = target else {
                    return Ok(Undo::Impossible("link not resolved"));
                };
                let after = s.netns.map(|k| self.map[k]).unwrap_or(sp);
                let moved = after != sp;
                let state = if moved && self.snapshots {
                    if self.spaces[sp].snap.is_none() {
                        let snap = Snapshot::take(self.conn(sp)?)?;
                        self.spaces[sp].snap = Some(snap);
                    }
                    let space = &mut self.spaces[sp];
                    let st = match &space.snap {
                        Some(snap) => snap.of_link(t.ifindex, &space.moved_out),
                        None => LinkState::default(),
                    };
                    space.moved_out.push(t.ifindex);
                    st
                } else {
                    LinkState::default()
                };
                Undo::Restore(Box::new(Restore {
                    before: sp,
                    after,
                    name_after: s.name.clone().unwrap_or_else(|| t.name.clone()),
                    ifindex: t.ifindex,
                    prior: t.clone(),
                    set: s.clone(),
                    state,
                }))
            }
            Op::LinkDel(_) => Undo::Impossible("a deleted link cannot be recreated"),
            Op::Sysctl(_) | Op::Ethtool(_) | Op::RdmaMove(_) | Op::EbpfDetach(_) => {
                Undo::Impossible("not a batched step")
            }
            Op::LinkDelGroup(_) => Undo::Impossible("deleted links cannot be recreated"),
            Op::NewLink(n) => Undo::DelLink {
                space: n.netns.map(|k| self.map[k]).unwrap_or(sp),
                name: n.name.clone(),
            },
            Op::Addr(a) => {
                let mut inv = a.clone();
                inv.add = !a.add;
                inv.link = by_name(target).unwrap_or(a.link.clone());
                Undo::Inverse {
                    space: sp,
                    op: Op::Addr(inv),
                }
            }
            Op::Route(r) => {
                let mut inv = r.clone();
                inv.add = !r.add;
                inv.oif = by_name(other).or(r.oif.clone());
                if r.add && inv.scope.is_none() {
                    inv.scope = Some(if r.gateway.is_none() && r.oif.is_some() {
                        wire::RT_SCOPE_LINK
                    } else {
                        wire::RT_SCOPE_UNIVERSE
                    });
                }
                if !r.add && inv.scope == Some(wire::RT_SCOPE_NOWHERE) {
                    inv.scope = None;
                }
                Undo::Inverse {
                    space: sp,
                    op: Op::Route(inv),
                }
            }
            Op::Rule(r) => {
                let mut inv = r.clone();
                inv.add = !r.add;
                Undo::Inverse {
                    space: sp,
                    op: Op::Rule(inv),
                }
            }
            Op::Neigh(n) => {
                if !n.add && n.lladdr.is_none() {
                    Undo::Impossible("neigh_del without lladdr cannot be undone")
                } else {
                    let mut inv = n.clone();
                    inv.add = !n.add;
                    inv.link = by_name(target).unwrap_or(n.link.clone());
                    Undo::Inverse {
                        space: sp,
                        op: Op::Neigh(inv),
                    }
                }
            }
        })
    }

    /// Sends the pending batch and sorts its replies into done steps and the
    /// first failure.
    fn flush(&mut self) -> Result<(), NlError> {
        if self.items.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(&mut self.items);
        for k in std::mem::take(&mut self.pending_dirty) {
            self.cache.remove(&k);
            self.dirty.insert(k);
        }
        let bounds = std::mem::take(&mut self.bounds);
        let mut buf = std::mem::take(&mut self.buf);
        // A vanished namespace must not swallow an interface: check right before sending.
        for it in &items {
            for sp in it.spaces.iter().flatten() {
                if let Err(e) = self.spaces[*sp].ns.ensure_alive() {
                    let op = &self.plan.steps[it.index].op;
                    return Err(step_err(ErrorKind::Namespace, it.index, op, e.message));
                }
            }
        }
        let sp = self.batch_space;
        let conn = self.conn(sp)?;
        let first = conn.next_seqs(items.len() as u32);
        for (k, b) in bounds.iter().enumerate() {
            buf[b + 8..b + 12].copy_from_slice(&first.wrapping_add(k as u32).to_ne_bytes());
        }
        let before = conn.sends;
        let replies = conn.transact(&buf, &bounds, first);
        self.sends += self.spaces[sp]
            .conn
            .as_ref()
            .map(|c| c.sends - before)
            .unwrap_or(0);
        buf.clear();
        self.buf = buf;
        let replies = replies.map_err(|mut e| {
            let it = &items[0];
            e.step_index = it.index as i64;
            e.op = self.plan.steps[it.index].op.name();
            e
        })?;
        let mut first_err: Option<NlError> = None;
        for (it, reply) in items.into_iter().zip(replies) {
            match reply {
                Reply::Err(errno, msg) => {
                    if first_err.is_none() {
                        first_err = Some(self.kernel_step_err(it.index, errno, &msg));
                        if self.recover_partial && matches!(it.undo, Undo::Restore(_)) {
                            self.failed = Some(it);
                        }
                    }
                }
                _ => {
                    self.results.push(StepResult {
                        index: it.index,
                        op: self.plan.steps[it.index].op.name(),
                        ifindex: it.ifindex,
                    });
                    self.done.push(it);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn kernel_step_err(&self, index: usize, errno: i32, msg: &str) -> NlError {
        let op = &self.plan.steps[index].op;
        let mut text = crate::error::describe("kernel refused", errno, msg);
        if errno == libc::EOPNOTSUPP && msg.contains("Unknown device type") {
            if let Some(k) = op.kind_name() {
                text = format!("this kernel does not support link kind {k:?} ({text})");
            }
        }
        let mut e = step_err(ErrorKind::Netlink, index, op, text);
        e.errno = errno;
        e.kernel_message = msg.into();
        e
    }

    /// Undoes the completed steps in reverse order; returns what failed.
    fn rollback(&mut self) -> Vec<String> {
        let mut errs = Vec::new();
        if let Some(it) = self.failed.take() {
            if let Err(e) = self.undo_partial(&it.undo) {
                let op = &self.plan.steps[it.index].op;
                errs.push(format!(
                    "undo of the part of step {} ({}{}) the kernel applied: {}",
                    it.index,
                    op.name(),
                    ifname_suffix(op),
                    e.message
                ));
            }
        }
        let done = std::mem::take(&mut self.done);
        self.done_count = done.len();
        for it in done.into_iter().rev() {
            let op = &self.plan.steps[it.index].op;
            let label = format!(
                "undo of step {} ({}{})",
                it.index,
                op.name(),
                ifname_suffix(op)
            );
            if let Err(e) = self.undo(&it.undo) {
                errs.push(format!("{label}: {}", e.message));
            }
        }
        errs
    }

    fn send_one(
        &mut self,
        space: usize,
        op: &Op,
        r: Resolved,
        fd: &dyn Fn(usize) -> i32,
    ) -> Result<(), NlError> {
        let mut enc_err = None;
        let reply = self.conn(space)?.request(|e, seq| {
            if let Err(x) = plan::encode(e, seq, op, r, fd) {
                enc_err = Some(x);
            }
        })?;
        if let Some(e) = enc_err {
            return Err(e);
        }
        match reply {
            Reply::Err(errno, msg) => Err(NlError::kernel(op.name(), errno, &msg)),
            _ => Ok(()),
        }
    }

    fn index_now(&mut self, space: usize, name: &str) -> Result<i32, NlError> {
        match self.conn(space)?.link(0, Some(name))? {
            Some(i) => Ok(i.ifindex),
            None => Err(NlError::kernel(
                &format!("lookup of {name}"),
                libc::ENODEV,
                "",
            )),
        }
    }

    /// A refused `link_set` may have been applied in part: the kernel applies
    /// its attributes one after the other, and a move happens before a rename
    /// that then fails (the name is taken in the target namespace). Finds the
    /// link where the step may have left it and restores what it held.
    fn undo_partial(&mut self, u: &Undo) -> Result<(), NlError> {
        let Undo::Restore(rs) = u else {
            return Ok(());
        };
        if rs.after == rs.before {
            // In place: the prior values of the attributes the step names.
            return self.undo(u);
        }
        // Still in the source namespace: the kernel refused the move itself,
        // which comes before every other attribute.
        let here = self.conn(rs.before)?.link(rs.ifindex, None)?;
        if here.is_some_and(|l| l.name == rs.prior.name && l.mac == rs.prior.mac) {
            return Ok(());
        }
        // Under its own name (the rename was refused), else under the new one
        // (a later attribute was refused). Either way it is the moved device
        // only if it has its MAC, or the one the step gave it: a link of the
        // target namespace holding the new name is never touched.
        let macs = [rs.prior.mac.clone(), rs.set.mac.clone()];
        for name in [rs.prior.name.clone(), rs.name_after.clone()] {
            let Some(l) = self.conn(rs.after)?.link(0, Some(&name))? else {
                continue;
            };
            if l.mac.is_none() || !macs.contains(&l.mac) {
                continue;
            }
            return self.undo(&Undo::Restore(Box::new(Restore {
                name_after: name,
                ..(**rs).clone()
            })));
        }
        Ok(())
    }

    fn ns_opt(&self, space: usize) -> Option<&NetNs> {
        let sp = &self.spaces[space];
        (!sp.here).then_some(&sp.ns)
    }

    fn ethtool_conn(&mut self, space: usize) -> Result<&mut EthtoolConn, NlError> {
        if !self.ethtool.contains_key(&space) {
            let c = EthtoolConn::open(self.ns_opt(space))?;
            self.ethtool.insert(space, c);
        }
        Ok(self.ethtool.get_mut(&space).expect("just opened"))
    }

    /// Before anything is sent: RDMA devices to move exist (and RDMA netlink
    /// answers), and ethtool feature names are known to this kernel.
    fn check_side_channels(&mut self) -> Result<(), NlError> {
        let plan = self.plan;
        let mut feature_names: Option<Vec<String>> = None;
        for (i, s) in plan.steps.iter().enumerate() {
            let sp = self.space_of(s.ns);
            match &s.op {
                Op::RdmaMove(m) => {
                    let d = desc(&self.spaces[sp].ns, self.spaces[sp].here);
                    let devs = knd_rdma::RdmaSocket::open(self.ns_opt(sp))
                        .and_then(|sock| sock.devices())
                        .map_err(|e| {
                            let mut x = rdma_err(e);
                            if x.kind == ErrorKind::NotAvailable {
                                x.message = format!(
                                    "cannot move RDMA device {:?}: RDMA is not available in {d} ({})",
                                    m.device, x.message
                                );
                            }
                            attribute(x, i, &s.op)
                        })?;
                    if !devs.iter().any(|l| l.name == m.device) {
                        let mut e = step_err(
                            ErrorKind::InvalidArgument,
                            i,
                            &s.op,
                            format!("no RDMA device named {:?} in {d}", m.device),
                        );
                        e.errno = libc::ENODEV;
                        return Err(e);
                    }
                }
                Op::Ethtool(t) if !t.features.is_empty() => {
                    if feature_names.is_none() {
                        // Feature names are the kernel's, the same for every device.
                        // (read on the socket the step will use: opened once)
                        let names = self
                            .ethtool_conn(sp)
                            .and_then(|c| c.strings(Dev::None, ethtool::ETH_SS_FEATURES))
                            .map_err(|e| attribute(e, i, &s.op))?;
                        feature_names = Some(names);
                    }
                    let known = feature_names.as_deref().unwrap_or_default();
                    for (n, _) in &t.features {
                        if !known.iter().any(|k| k == n) {
                            return Err(step_err(
                                ErrorKind::InvalidArgument,
                                i,
                                &s.op,
                                format!("unknown ethtool feature {n:?} (not a feature name of this kernel)"),
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Runs a step that does not travel in the rtnetlink batch; returns its undo.
    fn side(&mut self, sp: usize, op: &Op, target: Option<&LinkInfo>) -> Result<Undo, NlError> {
        match op {
            Op::Sysctl(s) => {
                let old = crate::sysctl::swap(self.ns_opt(sp), &s.path, &s.value)?;
                Ok(Undo::Sysctl {
                    space: sp,
                    path: s.path.clone(),
                    old,
                })
            }
            Op::Ethtool(t) => {
                let Some(link) = target else {
                    return Err(NlError::invalid("link not resolved"));
                };
                let ifindex = link.ifindex;
                let name = link.name.clone();
                let c = self.ethtool_conn(sp)?;
                let mut prior_f = Vec::new();
                if !t.features.is_empty() {
                    // Names were checked against the kernel's before the plan ran.
                    let f = c.feature_state(Dev::Index(ifindex))?;
                    for (n, on) in &t.features {
                        let now = f.active.contains(n);
                        if now != *on && f.fixed(n) {
                            return Err(NlError::invalid(format!(
                                "ethtool feature {n:?} is fixed {} on {name} and cannot be turned {}",
                                if now { "on" } else { "off" },
                                if *on { "on" } else { "off" }
                            )));
                        }
                        prior_f.push((n.clone(), now));
                    }
                }
                let mut prior_p = Vec::new();
                if !t.private_flags.is_empty() {
                    let have = c.private_flags(Dev::Index(ifindex))?;
                    for (n, _) in &t.private_flags {
                        match have.iter().find(|(k, _)| k == n) {
                            Some((_, v)) => prior_p.push((n.clone(), *v)),
                            None => {
                                let known: Vec<&str> = have.iter().map(|x| x.0.as_str()).collect();
                                return Err(NlError::invalid(format!(
                                    "unknown private flag {n:?} on {name} (it has: {})",
                                    if known.is_empty() {
                                        "none".to_string()
                                    } else {
                                        known.join(", ")
                                    }
                                )));
                            }
                        }
                    }
                }
                c.set(ethtool::MSG_FEATURES_SET, ifindex, &t.features)?;
                let checked = (|| -> Result<(), NlError> {
                    c.set(ethtool::MSG_PRIVFLAGS_SET, ifindex, &t.private_flags)?;
                    if !t.features.is_empty() {
                        let f = c.feature_state(Dev::Index(ifindex))?;
                        let off: Vec<&str> = t
                            .features
                            .iter()
                            .filter(|(n, on)| f.active.contains(n) != *on)
                            .map(|(n, _)| n.as_str())
                            .collect();
                        if !off.is_empty() {
                            return Err(NlError::new(
                                ErrorKind::Netlink,
                                format!(
                                    "the kernel did not apply ethtool feature(s) {} on {name} (they depend on other features)",
                                    off.join(", ")
                                ),
                            ));
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = checked {
                    // Nothing of this step stays behind.
                    let _ = c.set(ethtool::MSG_FEATURES_SET, ifindex, &prior_f);
                    let _ = c.set(ethtool::MSG_PRIVFLAGS_SET, ifindex, &prior_p);
                    return Err(e);
                }
                Ok(Undo::Ethtool {
                    space: sp,
                    ifindex,
                    features: prior_f,
                    flags: prior_p,
                })
            }
            Op::RdmaMove(m) => {
                let to = self.map[m.netns];
                let sock = knd_rdma::RdmaSocket::open(self.ns_opt(sp)).map_err(rdma_err)?;
                sock.move_to(&m.device, &self.spaces[to].ns)
                    .map_err(rdma_err)?;
                Ok(Undo::RdmaMove {
                    device: m.device.clone(),
                    from: sp,
                    to,
                })
            }
            Op::EbpfDetach(_) => {
                let Some(link) = target else {
                    return Err(NlError::invalid("link not resolved"));
                };
                let r = Resolved {
                    target: link.ifindex,
                    other: 0,
                };
                match self.send_one(sp, op, r, &|_| -1) {
                    Ok(()) => {}
                    // No clsact/ingress qdisc: no tc filters.
                    Err(e) if e.errno == libc::EINVAL || e.errno == libc::ENOENT => {}
                    Err(e) => return Err(e),
                }
                let idx = link.ifindex;
                match self.ns_opt(sp) {
                    None => crate::tc::tcx_detach_here(idx)?,
                    Some(ns) => ns.run_in(move || crate::tc::tcx_detach_here(idx))??,
                };
                Ok(Undo::Impossible(
                    "detached eBPF programs cannot be attached again",
                ))
            }
            _ => Err(NlError::invalid(format!("{} is a batched step", op.name()))),
        }
    }

    fn undo(&mut self, u: &Undo) -> Result<(), NlError> {
        let fds: Vec<i32> = (0..self.spaces.len()).map(|k| self.fd(k)).collect();
        match u {
            Undo::Sysctl { space, path, old } => {
                crate::sysctl::write(self.ns_opt(*space), path, old)
            }
            Undo::Ethtool {
                space,
                ifindex,
                features,
                flags,
            } => {
                let c = self.ethtool_conn(*space)?;
                c.set(ethtool::MSG_FEATURES_SET, *ifindex, features)?;
                c.set(ethtool::MSG_PRIVFLAGS_SET, *ifindex, flags)
            }
            Undo::RdmaMove { device, from, to } => {
                let sock = knd_rdma::RdmaSocket::open(self.ns_opt(*to)).map_err(rdma_err)?;
                sock.move_to(device, &self.spaces[*from].ns)
                    .map_err(rdma_err)
            }
            Undo::Impossible(why) => Err(NlError::new(
                ErrorKind::Netlink,
                format!("cannot be undone: {why}"),
            )),
            Undo::DelLink { space, name } => {
                let op = Op::LinkDel(LinkRef::Name(name.clone()));
                self.send_one(*space, &op, Resolved::default(), &|k| fds[k])
            }
            Undo::Inverse { space, op } => {
                let (a, b) = op.refs();
                let mut r = Resolved::default();
                if let Some(l) = a {
                    r.target = match l {
                        LinkRef::Name(n) => self.index_now(*space, n)?,
                        LinkRef::Index(x) => *x,
                    };
                }
                if let Some(l) = b {
                    r.other = match l {
                        LinkRef::Name(n) => self.index_now(*space, n)?,
                        LinkRef::Index(x) => *x,
                    };
                }
                match self.send_one(*space, op, r, &|k| fds[k]) {
                    Err(e) if already_undone(op, e.errno) => Ok(()),
                    other => other,
                }
            }
            Undo::Restore(rs) => {
                let moved = rs.after != rs.before;
                let p = &rs.prior;
                let s = &rs.set;
                let back = LinkSet {
                    link: Some(LinkRef::Index(0)),
                    name: (moved || s.name.is_some()).then(|| p.name.clone()),
                    mtu: s.mtu.map(|_| p.mtu),
                    mac: s.mac.as_ref().and(p.mac.clone()),
                    up: (moved || s.up.is_some()).then_some(p.flags & wire::IFF_UP != 0),
                    alias: s
                        .alias
                        .as_ref()
                        .map(|_| p.alias.clone().unwrap_or_default()),
                    group: s.group.map(|_| p.group),
                    netns: moved.then_some(rs.before),
                    gso_max_size: s.gso_max_size.and(p.gso_max_size),
                    gro_max_size: s.gro_max_size.and(p.gro_max_size),
                    gso_ipv4_max_size: s.gso_ipv4_max_size.and(p.gso_ipv4_max_size),
                    gro_ipv4_max_size: s.gro_ipv4_max_size.and(p.gro_ipv4_max_size),
                    // A move leaves the master behind: only a master change in place is undone.
                    master: (s.master.is_some() && !moved)
                        .then(|| p.master.filter(|m| *m > 0).map(LinkRef::Index)),
                };
                let idx = if moved {
                    self.index_now(rs.after, &rs.name_after)?
                } else {
                    rs.ifindex
                };
                let r = Resolved {
                    target: idx,
                    other: p.master.unwrap_or(0),
                };
                self.send_one(rs.after, &Op::LinkSet(back), r, &|k| fds[k])?;
                if moved && !rs.state.is_empty() {
                    let idx = self.index_now(rs.before, &p.name)?;
                    let errs = snapshot::restore(self.conn(rs.before)?, &rs.state, idx)?;
                    if !errs.is_empty() {
                        return Err(NlError::new(ErrorKind::Netlink, errs.join("; ")));
                    }
                }
                Ok(())
            }
        }
    }
}

/// Whether `errno`, answered to the inverse `op` of a completed step, means the
/// step's effect is already gone (or already back). A move's undo restores
/// its link's addresses, routes and neighbours from the snapshot taken before
/// the move, which may or may not include what earlier steps of the plan added
/// or removed on that link: the undo of those steps then finds its work done.
fn already_undone(op: &Op, errno: i32) -> bool {
    match op {
        Op::Addr(a) if !a.add => errno == libc::EADDRNOTAVAIL || errno == libc::ENOENT,
        Op::Route(r) if !r.add => errno == libc::ESRCH || errno == libc::ENOENT,
        Op::Neigh(n) if !n.add => errno == libc::ENOENT,
        Op::Addr(_) | Op::Route(_) | Op::Neigh(_) => errno == libc::EEXIST,
        _ => false,
    }
}
