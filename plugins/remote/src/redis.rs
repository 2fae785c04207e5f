//! Redis / Valkey, one server or a Redis Cluster: RESP2, keys `tmem:NAMESPACE:OFFSET`.

use tmem_sdk::net::Connection;
use tmem_sdk::{GetError, Reject, log};

use crate::Fail;
use crate::breaker::{Breaker, SKIPPED_STORES};
use crate::resp::{self, Reply, RespConn};
use crate::slot::{self, SLOTS};

/// Redirects (`MOVED`/`ASK`) followed for one command.
const MAX_REDIRECTS: usize = 5;
/// Keys asked for per `SCAN` (and so deleted per `UNLINK` round trip) by `clear`.
const SCAN_COUNT: &[u8] = b"1000";
/// A slot whose owner is not known (or not one of the listed nodes).
const NONE: u16 = u16::MAX;

struct Node {
    /// `HOST:PORT`, exactly as listed.
    addr: String,
    /// The cluster node id, once learned.
    id: Option<String>,
    conn: Option<RespConn>,
    breaker: Breaker,
}

/// The slot map of a cluster.
struct SlotMap {
    /// The index of the node serving each slot, or [`NONE`].
    slots: Vec<u16>,
    /// A `CLUSTER SLOTS` answer has been applied.
    loaded: bool,
    /// A node failed since: ask again before the next command.
    stale: bool,
    /// Refreshes still to skip after one failed or left slots without a listed owner (the
    /// map's own breaker, so a broken cluster does not cost a refresh per operation).
    skip: u32,
    /// Addresses the cluster reports for listed nodes under another spelling (learned through
    /// node ids).
    aliases: Vec<(String, usize)>,
}

impl SlotMap {
    fn may_refresh(&mut self) -> bool {
        if self.skip == 0 {
            true
        } else {
            self.skip -= 1;
            false
        }
    }
}

/// One Redis server or the nodes of a Redis Cluster.
pub struct Redis {
    nodes: Vec<Node>,
    /// `None`: one server (node 0).
    cluster: Option<SlotMap>,
    namespace: String,
    token: String,
    /// Outgoing commands (reused).
    tx: Vec<u8>,
}

impl Redis {
    /// One server; nothing connects until the first operation.
    pub fn single(addr: String, namespace: String, token: String, page_size: usize) -> Redis {
        Redis::new(vec![addr], None, namespace, token, page_size)
    }

    /// A cluster of the listed nodes; the slot map is asked for at the first operation.
    pub fn cluster(addrs: Vec<String>, namespace: String, token: String, page_size: usize) -> Redis {
        let map = SlotMap { slots: vec![NONE; SLOTS], loaded: false, stale: false, skip: 0, aliases: Vec::new() };
        Redis::new(addrs, Some(map), namespace, token, page_size)
    }

    fn new(addrs: Vec<String>, cluster: Option<SlotMap>, namespace: String, token: String, page_size: usize) -> Redis {
        let nodes =
            addrs.into_iter().map(|addr| Node { addr, id: None, conn: None, breaker: Breaker::default() }).collect();
        Redis { nodes, cluster, namespace, token, tx: Vec::with_capacity(page_size + 128) }
    }

    fn key(&self, offset: u64) -> String {
        format!("tmem:{}:{offset}", self.namespace)
    }

    // ----- one exchange with one node -----

    /// Sends what `build` writes to node `n` (connecting and authenticating first if needed)
    /// and reads the answer with `read`. A failure drops the connection and trips the breaker.
    fn call<R>(
        &mut self,
        n: usize,
        build: impl FnOnce(&mut Vec<u8>),
        read: impl FnOnce(&mut RespConn) -> Result<R, Fail>,
    ) -> Result<R, Fail> {
        let result = self.exchange(n, build, read);
        if let Err(why) = &result {
            self.failed(n, why);
        }
        result
    }

    fn exchange<R>(
        &mut self,
        n: usize,
        build: impl FnOnce(&mut Vec<u8>),
        read: impl FnOnce(&mut RespConn) -> Result<R, Fail>,
    ) -> Result<R, Fail> {
        let node = &mut self.nodes[n];
        self.tx.clear();
        let authenticate = node.conn.is_none() && !self.token.is_empty();
        if node.conn.is_none() {
            node.conn = Some(RespConn::new(Connection::connect(&node.addr)?));
        }
        if authenticate {
            resp::command(&mut self.tx, &[b"AUTH", self.token.as_bytes()]);
        }
        build(&mut self.tx);
        let conn = node.conn.as_mut().expect("connected above");
        conn.send(&self.tx)?;
        if authenticate {
            match conn.reply(None)? {
                Reply::Status(s) if s == "OK" => {}
                Reply::Error(e) => return Err(Fail::Protocol(format!("AUTH refused: {e}"))),
                other => return Err(Fail::Protocol(format!("unexpected answer to AUTH: {other:?}"))),
            }
        }
        read(conn)
    }

    /// Node `n` failed: its connection goes at once (so its handle is closed before a new
    /// connection could reuse it), its breaker trips, and the slot map is asked for again.
    fn failed(&mut self, n: usize, why: &dyn core::fmt::Display) {
        self.nodes[n].conn = None;
        self.trip(n, why);
    }

    /// Node `n` answered, but not usefully: trip its breaker, keep the connection.
    fn trip(&mut self, n: usize, why: &dyn core::fmt::Display) {
        let node = &mut self.nodes[n];
        node.breaker.trip(&node.addr, why);
        if let Some(map) = &mut self.cluster {
            map.stale = true;
        }
    }

    fn succeeded(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.breaker.succeed(&node.addr);
    }

    // ----- the slot map -----

    /// The node serving `slot` (node 0 for one server); `None` if unknown.
    fn owner(&mut self, slot: u16) -> Option<usize> {
        let map = self.cluster.as_mut()?;
        if (map.stale || !map.loaded || map.slots[slot as usize] == NONE) && map.may_refresh() {
            self.refresh();
        }
        let map = self.cluster.as_ref()?;
        let n = map.slots[slot as usize];
        (n != NONE).then_some(n as usize)
    }

    /// Asks the listed nodes (those whose breaker is closed first) for `CLUSTER SLOTS` and
    /// applies the first answer. Whether the map is now complete.
    fn refresh(&mut self) -> bool {
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.sort_by_key(|&n| self.nodes[n].breaker.is_open());
        let mut complete = false;
        for n in order {
            let Ok(reply) = self.call(n, |tx| resp::command(tx, &[b"CLUSTER", b"SLOTS"]), |c| c.reply(None)) else {
                continue;
            };
            match parse_cluster_slots(&reply) {
                Some(ranges) => {
                    complete = self.apply(&ranges);
                    break;
                }
                None => {
                    let why = format!("unexpected answer to CLUSTER SLOTS: {}", short(&reply));
                    self.trip(n, &why);
                }
            }
        }
        let map = self.cluster.as_mut().expect("a cluster");
        map.stale = false;
        map.skip = if complete { 0 } else { SKIPPED_STORES };
        complete
    }

    /// Applies `CLUSTER SLOTS` ranges; whether every slot has a listed owner.
    fn apply(&mut self, ranges: &[SlotRange]) -> bool {
        let mut owners: Vec<Option<usize>> =
            ranges.iter().map(|r| self.resolve_reported(&r.addr, r.id.as_deref())).collect();
        if owners.iter().any(Option::is_none) && self.nodes.iter().any(|n| n.id.is_none()) {
            // The cluster names some masters by another spelling than the URL: learn the
            // listed nodes' ids and match by id.
            self.learn_ids();
            for (owner, r) in owners.iter_mut().zip(ranges) {
                if owner.is_none() {
                    *owner = self.resolve_reported(&r.addr, r.id.as_deref());
                }
            }
        }
        let map = self.cluster.as_mut().expect("a cluster");
        map.slots.fill(NONE);
        for (owner, r) in owners.iter().zip(ranges) {
            if let Some(owner) = owner {
                map.slots[r.start as usize..=r.end as usize].fill(*owner as u16);
            }
        }
        map.loaded = true;
        let unlisted: Vec<&str> =
            owners.iter().zip(ranges).filter(|(o, _)| o.is_none()).map(|(_, r)| r.addr.as_str()).collect();
        if !unlisted.is_empty() {
            log::warn(&format!(
                "the Redis Cluster has masters that are not listed in `endpoints` ({}); keys in their slots are unavailable",
                unlisted.join(", ")
            ));
        }
        map.slots.iter().all(|&s| s != NONE)
    }

    /// Asks every listed node whose id is unknown for it (`CLUSTER MYID`, one attempt each).
    fn learn_ids(&mut self) {
        for n in 0..self.nodes.len() {
            if self.nodes[n].id.is_some() || self.nodes[n].breaker.is_open() {
                continue;
            }
            if let Ok(Reply::Bulk(Some(id))) =
                self.call(n, |tx| resp::command(tx, &[b"CLUSTER", b"MYID"]), |c| c.reply(None))
            {
                self.nodes[n].id = String::from_utf8(id).ok();
            }
        }
    }

    /// The listed node a `CLUSTER SLOTS` entry names (by address, alias or id).
    fn resolve_reported(&mut self, addr: &str, id: Option<&str>) -> Option<usize> {
        if let Some(n) = self.resolve(addr) {
            if let Some(id) = id {
                self.nodes[n].id.get_or_insert_with(|| id.to_string());
            }
            return Some(n);
        }
        let n = self.nodes.iter().position(|node| id.is_some() && node.id.as_deref() == id)?;
        self.cluster.as_mut().expect("a cluster").aliases.push((addr.to_string(), n));
        Some(n)
    }

    /// The listed node at `addr` (as listed, or as the cluster spelled it before).
    fn resolve(&self, addr: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr).or_else(|| {
            let map = self.cluster.as_ref()?;
            map.aliases.iter().find(|(a, _)| a == addr).map(|&(_, n)| n)
        })
    }

    // ----- commands on keys -----

    /// Runs `cmd key [value]` on the node serving the key, following redirects. `None`: the
    /// node could not be reached (recorded); otherwise the node that answered and its answer.
    fn keyed(
        &mut self,
        offset: u64,
        cmd: &[u8],
        value: Option<&[u8]>,
        mut out: Option<&mut [u8]>,
    ) -> Option<(usize, Reply)> {
        let store = value.is_some();
        let key = self.key(offset);
        let mut node = match self.owner(slot::key_slot(key.as_bytes())) {
            Some(n) => n,
            None if self.cluster.is_none() => 0,
            None => return None,
        };
        if store && !self.nodes[node].breaker.allow_store() {
            return None;
        }
        let mut asking = false;
        for _ in 0..=MAX_REDIRECTS {
            let reply = self
                .call(
                    node,
                    |tx| {
                        if asking {
                            resp::command(tx, &[b"ASKING"]);
                        }
                        match value {
                            Some(v) => resp::command(tx, &[cmd, key.as_bytes(), v]),
                            None => resp::command(tx, &[cmd, key.as_bytes()]),
                        }
                    },
                    |c| {
                        if asking {
                            match c.reply(None)? {
                                Reply::Status(s) if s == "OK" => {}
                                other => {
                                    return Err(Fail::Protocol(format!(
                                        "unexpected answer to ASKING: {}",
                                        short(&other)
                                    )));
                                }
                            }
                        }
                        c.reply(out.as_deref_mut())
                    },
                )
                .ok()?;
            let redirect = match (&reply, &self.cluster) {
                (Reply::Error(e), Some(_)) => parse_redirect(e),
                _ => None,
            };
            let Some((moved, slot, addr)) = redirect else { return Some((node, reply)) };
            let target = match self.resolve(&addr) {
                Some(t) => t,
                // Perhaps a spelling the map has not learned yet.
                None => match self.refresh().then(|| self.resolve(&addr)).flatten() {
                    Some(t) => t,
                    None => {
                        log::warn(&format!(
                            "the Redis Cluster redirected slot {slot} to {addr}, which is not listed in `endpoints`"
                        ));
                        return None;
                    }
                },
            };
            if moved && let Some(map) = &mut self.cluster {
                map.slots[slot as usize] = target as u16;
            }
            asking = !moved;
            node = target;
            if store && !self.nodes[node].breaker.allow_store() {
                return None;
            }
        }
        log::warn(&format!("more than {MAX_REDIRECTS} redirects for key {key}"));
        None
    }

    /// `SET`.
    pub fn put(&mut self, offset: u64, data: &[u8]) -> Result<(), Reject> {
        match self.keyed(offset, b"SET", Some(data), None) {
            Some((_, Reply::Status(s))) if s == "OK" => Ok(()),
            Some((_, Reply::Error(e))) if e.starts_with("OOM") => Err(Reject::AllocFail),
            Some((n, other)) => {
                self.trip(n, &format!("unexpected answer to SET: {}", short(&other)));
                Err(Reject::Unavailable)
            }
            None => Err(Reject::Unavailable),
        }
    }

    /// `GET`.
    pub fn get(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, GetError> {
        match self.keyed(offset, b"GET", None, Some(out)) {
            Some((n, Reply::Into(len))) => {
                self.succeeded(n);
                Ok(len)
            }
            Some((n, Reply::Bulk(None))) => {
                self.succeeded(n);
                Err(GetError::NotFound)
            }
            Some((_, Reply::TooLong)) => {
                log::error(&format!("Redis holds more bytes under {} than a record can have", self.key(offset)));
                Err(GetError::Unavailable)
            }
            Some((n, other)) => {
                self.trip(n, &format!("unexpected answer to GET: {}", short(&other)));
                Err(GetError::Unavailable)
            }
            None => Err(GetError::Unavailable),
        }
    }

    /// `DEL`.
    pub fn delete(&mut self, offset: u64) {
        match self.keyed(offset, b"DEL", None, None) {
            Some((n, Reply::Int(_))) => self.succeeded(n),
            Some((n, other)) => self.trip(n, &format!("unexpected answer to DEL: {}", short(&other))),
            None => {}
        }
    }

    // ----- clear -----

    /// `SCAN` + `UNLINK` of the namespace on the server, or on every master of the cluster.
    pub fn clear(&mut self) {
        let masters: Vec<usize> = match &mut self.cluster {
            None => vec![0],
            Some(_) => {
                // Clearing is rare and must reach every master: ask for the map first (and
                // keep the old one if no node answers).
                self.refresh();
                let map = self.cluster.as_ref().expect("a cluster");
                if map.slots.contains(&NONE) {
                    log::warn("clear: some slots of the Redis Cluster have no reachable listed owner; their keys stay");
                }
                let mut masters: Vec<usize> = map.slots.iter().filter(|&&s| s != NONE).map(|&s| s as usize).collect();
                masters.sort_unstable();
                masters.dedup();
                masters
            }
        };
        for n in masters {
            if self.clear_node(n).is_ok() {
                self.succeeded(n);
            }
        }
    }

    fn clear_node(&mut self, n: usize) -> Result<(), ()> {
        let pattern = format!("tmem:{}:*", self.namespace);
        let mut cursor = b"0".to_vec();
        loop {
            let reply = self
                .call(
                    n,
                    |tx| resp::command(tx, &[b"SCAN", &cursor, b"MATCH", pattern.as_bytes(), b"COUNT", SCAN_COUNT]),
                    |c| c.reply(None),
                )
                .map_err(drop)?;
            let Some((next, keys)) = parse_scan(&reply) else {
                self.trip(n, &format!("unexpected answer to SCAN: {}", short(&reply)));
                return Err(());
            };
            if !keys.is_empty() {
                self.unlink(n, keys)?;
            }
            if next == b"0" {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// `UNLINK`s `keys` on node `n`: one command, or in a cluster one per slot (a multi-key
    /// command must stay within a slot), pipelined.
    fn unlink(&mut self, n: usize, mut keys: Vec<Vec<u8>>) -> Result<(), ()> {
        let mut groups: Vec<&[Vec<u8>]> = Vec::new();
        if self.cluster.is_some() {
            keys.sort_by_cached_key(|k| slot::key_slot(k));
            groups.extend(keys.chunk_by(|a, b| slot::key_slot(a) == slot::key_slot(b)));
        } else {
            groups.push(&keys);
        }
        let count = groups.len();
        self.call(
            n,
            |tx| {
                for group in &groups {
                    let mut args: Vec<&[u8]> = Vec::with_capacity(group.len() + 1);
                    args.push(b"UNLINK");
                    args.extend(group.iter().map(Vec::as_slice));
                    resp::command(tx, &args);
                }
            },
            |c| {
                for _ in 0..count {
                    // An error (a slot moving away meanwhile) leaves those keys: best effort.
                    c.reply(None)?;
                }
                Ok(())
            },
        )
        .map_err(drop)
    }
}

/// One range of a `CLUSTER SLOTS` answer.
#[derive(Debug, PartialEq, Eq)]
struct SlotRange {
    start: u16,
    end: u16,
    /// The master's `HOST:PORT` as the cluster reports it.
    addr: String,
    id: Option<String>,
}

fn parse_cluster_slots(reply: &Reply) -> Option<Vec<SlotRange>> {
    let Reply::Array(Some(entries)) = reply else { return None };
    entries
        .iter()
        .map(|entry| {
            let Reply::Array(Some(e)) = entry else { return None };
            let (Reply::Int(start), Reply::Int(end), Reply::Array(Some(master))) = (e.first()?, e.get(1)?, e.get(2)?)
            else {
                return None;
            };
            let (Reply::Bulk(Some(host)), Reply::Int(port)) = (master.first()?, master.get(1)?) else { return None };
            let id = match master.get(2) {
                Some(Reply::Bulk(Some(id))) => Some(String::from_utf8(id.clone()).ok()?),
                _ => None,
            };
            let (start, end) = (u16::try_from(*start).ok()?, u16::try_from(*end).ok()?);
            if start > end || end as usize >= SLOTS {
                return None;
            }
            let host = core::str::from_utf8(host).ok()?;
            // An IPv6 address is written in brackets in `HOST:PORT`.
            let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
            Some(SlotRange { start, end, addr, id })
        })
        .collect()
}

/// `MOVED slot host:port` or `ASK slot host:port`: `(moved, slot, address)`.
fn parse_redirect(error: &str) -> Option<(bool, u16, String)> {
    let mut words = error.split(' ');
    let moved = match words.next()? {
        "MOVED" => true,
        "ASK" => false,
        _ => return None,
    };
    let slot: u16 = words.next()?.parse().ok().filter(|&s| (s as usize) < SLOTS)?;
    let addr = words.next()?;
    // Redis writes an IPv6 address without brackets; `HOST:PORT` text needs them.
    let (host, port) = addr.rsplit_once(':')?;
    let addr = if host.contains(':') && !host.starts_with('[') { format!("[{host}]:{port}") } else { addr.to_string() };
    Some((moved, slot, addr))
}

/// `SCAN`'s `[cursor, [key...]]`.
fn parse_scan(reply: &Reply) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    let Reply::Array(Some(parts)) = reply else { return None };
    let [Reply::Bulk(Some(cursor)), Reply::Array(Some(keys))] = parts.as_slice() else { return None };
    let keys = keys
        .iter()
        .map(|k| if let Reply::Bulk(Some(k)) = k { Some(k.clone()) } else { None })
        .collect::<Option<_>>()?;
    Some((cursor.clone(), keys))
}

/// A reply for a log line.
fn short(reply: &Reply) -> String {
    let mut text = format!("{reply:?}");
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
impl Redis {
    /// The listed address the slot map sends `slot` to.
    pub(crate) fn test_owner(&self, slot: u16) -> Option<&str> {
        let n = self.cluster.as_ref()?.slots[slot as usize];
        (n != NONE).then(|| self.nodes[n as usize].addr.as_str())
    }

    /// Makes the slot map stale on purpose: every slot on node `n`.
    pub(crate) fn test_point_all_slots_at(&mut self, n: usize) {
        let map = self.cluster.as_mut().expect("a cluster");
        map.slots.fill(n as u16);
        map.loaded = true;
        map.stale = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn redirects_parse() {
        assert_eq!(parse_redirect("MOVED 3999 127.0.0.1:6381"), Some((true, 3999, "127.0.0.1:6381".into())));
        assert_eq!(parse_redirect("ASK 3999 10.0.0.2:7000"), Some((false, 3999, "10.0.0.2:7000".into())));
        assert_eq!(parse_redirect("MOVED 1 ::1:7000"), Some((true, 1, "[::1]:7000".into())));
        assert_eq!(parse_redirect("MOVED 16384 a:1"), None);
        assert_eq!(parse_redirect("ERR wrong"), None);
        assert_eq!(parse_redirect("OOM command not allowed"), None);
    }

    #[test]
    fn cluster_slots_parse() {
        let reply = Reply::Array(Some(vec![
            Reply::Array(Some(vec![
                Reply::Int(0),
                Reply::Int(5460),
                Reply::Array(Some(vec![bulk("127.0.0.1"), Reply::Int(30001), bulk("abc")])),
                Reply::Array(Some(vec![bulk("127.0.0.1"), Reply::Int(30004), bulk("def")])),
            ])),
            Reply::Array(Some(vec![
                Reply::Int(5461),
                Reply::Int(16383),
                Reply::Array(Some(vec![bulk("::1"), Reply::Int(30002)])),
            ])),
        ]));
        assert_eq!(
            parse_cluster_slots(&reply).unwrap(),
            vec![
                SlotRange { start: 0, end: 5460, addr: "127.0.0.1:30001".into(), id: Some("abc".into()) },
                SlotRange { start: 5461, end: 16383, addr: "[::1]:30002".into(), id: None },
            ]
        );
        assert!(parse_cluster_slots(&Reply::Error("ERR This instance has cluster support disabled".into())).is_none());
        let bad = Reply::Array(Some(vec![Reply::Array(Some(vec![
            Reply::Int(0),
            Reply::Int(16384),
            Reply::Array(Some(vec![bulk("a"), Reply::Int(1)])),
        ]))]));
        assert!(parse_cluster_slots(&bad).is_none());
    }

    #[test]
    fn scan_replies_parse() {
        let reply = Reply::Array(Some(vec![bulk("17"), Reply::Array(Some(vec![bulk("tmem:a:1"), bulk("tmem:a:2")]))]));
        assert_eq!(parse_scan(&reply), Some((b"17".to_vec(), vec![b"tmem:a:1".to_vec(), b"tmem:a:2".to_vec()])));
        assert_eq!(parse_scan(&Reply::Error("ERR".into())), None);
        assert_eq!(parse_scan(&Reply::Array(Some(vec![bulk("0"), Reply::Array(Some(vec![Reply::Int(1)]))]))), None);
    }
}
