//! What every listener of the host shares (REST, the peer listener, the frontend socket, NBD
//! over a Unix socket or TCP): a connection cap that idle or unauthenticated clients cannot
//! exhaust, a handshake deadline, and an `accept` that backs off when resources run out.
//!
//! # The rules
//!
//! - **Cap** ([`ListenerLimits::max_connections`]): a listener serves at most this many
//!   connections. A connection is *pending* from `accept` until it has proven itself (REST: a
//!   request with the API token; the frontend socket and the peer listener: an accepted HELLO;
//!   NBD: a finished handshake), then *established*.
//! - **Eviction**: a connection arriving at a full listener evicts the oldest pending one;
//!   only when every connection is established is the newcomer closed. So clients that connect
//!   and say nothing (or never authenticate) can delay, but never lock out, a real client.
//!   Established connections are never evicted — an idle NBD connection is a swap device.
//! - **Handshake deadline** ([`ListenerLimits::handshake_timeout`]): a pending connection that
//!   has not proven itself in time is closed. Each listener enforces it where its handshake is
//!   read (see [`Gate`]'s users).
//! - **Accept back-off** ([`accept_failed`], [`accept_failed_blocking`]): a failed `accept` for
//!   want of a resource — descriptors (EMFILE, ENFILE), buffers, memory — waits
//!   [`ACCEPT_BACKOFF`] instead of spinning (the listener stays readable, so a loop that only
//!   logs would take a core and flood the log until a descriptor frees up).

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// How long an accept loop waits after running out of a resource.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// The most connections served at once (pending and established together).
    pub max_connections: usize,
    /// How long a new connection has to prove itself (authenticate, finish its handshake)
    /// before it is closed.
    pub handshake_timeout: Duration,
}

impl ListenerLimits {
    /// The production handshake deadline: generous for a loaded machine, short for a flood.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    /// The REST listener's defaults: 256 connections (browsers and scripts keep few).
    pub const REST: ListenerLimits =
        ListenerLimits { max_connections: 256, handshake_timeout: Self::HANDSHAKE_TIMEOUT };
    /// The peer listener's defaults: 256 connections (a remote store keeps a few per pool).
    pub const PEER: ListenerLimits =
        ListenerLimits { max_connections: 256, handshake_timeout: Self::HANDSHAKE_TIMEOUT };
    /// The frontend socket's defaults: 1024 connections (one per region or device client).
    pub const FRONTEND: ListenerLimits =
        ListenerLimits { max_connections: 1024, handshake_timeout: Self::HANDSHAKE_TIMEOUT };
    /// One NBD export's defaults: 256 connections (multi-connection clients open a few).
    pub const NBD: ListenerLimits = ListenerLimits { max_connections: 256, handshake_timeout: Self::HANDSHAKE_TIMEOUT };
}

/// The bounds of every listener of a `tmem serve` ([`crate::server::ServeConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// The HTTP listener (the handshake is the request head: hyper's header-read timeout,
    /// which also closes a keep-alive connection idle that long).
    pub rest: ListenerLimits,
    /// The peer listener.
    pub peer: ListenerLimits,
    /// The frontend socket.
    pub frontend: ListenerLimits,
    /// Each NBD export.
    pub nbd: ListenerLimits,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            rest: ListenerLimits::REST,
            peer: ListenerLimits::PEER,
            frontend: ListenerLimits::FRONTEND,
            nbd: ListenerLimits::NBD,
        }
    }
}

impl ServeLimits {
    /// The defaults with every listener's cap and/or handshake deadline replaced (the
    /// `tmem serve --max-connections` and `--handshake-timeout` flags).
    pub fn overridden(max_connections: Option<usize>, handshake_timeout: Option<Duration>) -> ServeLimits {
        let set = |mut limits: ListenerLimits| {
            if let Some(max) = max_connections {
                limits.max_connections = max.max(1);
            }
            if let Some(timeout) = handshake_timeout {
                limits.handshake_timeout = timeout;
            }
            limits
        };
        let d = ServeLimits::default();
        ServeLimits { rest: set(d.rest), peer: set(d.peer), frontend: set(d.frontend), nbd: set(d.nbd) }
    }
}

/// How a pending connection is closed when it is evicted.
type Evict = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct GateState {
    /// Connections counted against the cap (pending and established).
    open: usize,
    next_id: u64,
    /// The pending connections, oldest first, with how to close each.
    pending: BTreeMap<u64, Evict>,
}

/// One listener's admission: counts its connections against [`ListenerLimits`] and evicts the
/// oldest pending one when a newcomer finds it full.
#[derive(Clone)]
pub(crate) struct Gate {
    state: Arc<Mutex<GateState>>,
    limits: ListenerLimits,
    /// What the listener is, for the log.
    what: &'static str,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("what", &self.what).field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// A connection's place under a [`Gate`]: pending until [`Ticket::establish`], given back when
/// dropped.
pub(crate) struct Ticket {
    gate: Gate,
    id: u64,
    established: bool,
}

/// Resolves when a pending connection is evicted (never, once it is established).
pub(crate) struct Evicted(tokio::sync::oneshot::Receiver<()>);

impl Evicted {
    /// Completes when the connection was evicted; pends forever otherwise (the gate dropped
    /// the sender because the connection was established or the gate is gone).
    pub(crate) async fn wait(&mut self) {
        if (&mut self.0).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Gate {
    pub(crate) fn new(limits: ListenerLimits, what: &'static str) -> Gate {
        Gate { state: Arc::default(), limits, what }
    }

    pub(crate) fn limits(&self) -> ListenerLimits {
        self.limits
    }

    /// Admits a new connection that `evict` closes, evicting the oldest pending connection if
    /// the listener is full; `None` (close the newcomer) when every connection is established.
    pub(crate) fn admit_with(&self, evict: Evict) -> Option<Ticket> {
        let mut state = self.state.lock();
        if state.open >= self.limits.max_connections {
            let Some((_, oldest)) = state.pending.pop_first() else {
                drop(state);
                tracing::warn!(
                    "refusing {}: {} connections are open and established",
                    self.what,
                    self.limits.max_connections
                );
                return None;
            };
            state.open -= 1;
            oldest();
            tracing::debug!("{} full: evicted the oldest connection that had not authenticated", self.what);
        }
        state.open += 1;
        state.next_id += 1;
        let id = state.next_id;
        state.pending.insert(id, evict);
        Some(Ticket { gate: self.clone(), id, established: false })
    }

    /// [`Gate::admit_with`] for an async connection task: eviction is signalled through the
    /// returned [`Evicted`].
    pub(crate) fn admit(&self) -> Option<(Ticket, Evicted)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ticket = self.admit_with(Box::new(move || {
            let _ = tx.send(());
        }))?;
        Some((ticket, Evicted(rx)))
    }

    /// Connections counted now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.state.lock().open
    }
}

impl Ticket {
    /// The connection proved itself: it is never evicted from now on. `false` when it had
    /// already been evicted (it must close).
    pub(crate) fn establish(&mut self) -> bool {
        if self.established {
            return true;
        }
        self.established = self.gate.state.lock().pending.remove(&self.id).is_some();
        self.established
    }

    /// Whether [`Ticket::establish`] succeeded.
    pub(crate) fn is_established(&self) -> bool {
        self.established
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.gate.state.lock();
        // An evicted connection was uncounted when it was evicted.
        if self.established || state.pending.remove(&self.id).is_some() {
            state.open -= 1;
        }
    }
}

/// Whether a failed `accept` failed for want of a resource (descriptors, buffers, memory).
fn exhausted(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Handles a failed `accept` of `what` (for the log): logs it, and waits [`ACCEPT_BACKOFF`]
/// when it failed for want of a resource.
pub(crate) async fn accept_failed(error: &io::Error, what: &str) {
    let exhausted = exhausted(error);
    tracing::warn!("accepting {what} failed: {error}{}", if exhausted { " (backing off)" } else { "" });
    if exhausted {
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// [`accept_failed`] for a blocking accept loop (NBD's threads).
pub(crate) fn accept_failed_blocking(error: &io::Error, what: &str) {
    let exhausted = exhausted(error);
    tracing::warn!("accepting {what} failed: {error}{}", if exhausted { " (backing off)" } else { "" });
    // Other failures (a connection reset before it was accepted) are the client's: go on.
    if exhausted {
        std::thread::sleep(ACCEPT_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn limits(max: usize) -> ListenerLimits {
        ListenerLimits { max_connections: max, handshake_timeout: Duration::from_secs(1) }
    }

    #[test]
    fn a_full_gate_evicts_the_oldest_pending_connection_and_never_an_established_one() {
        let gate = Gate::new(limits(3), "a test connection");
        let evicted = Arc::new(Mutex::new(Vec::new()));
        let admit = |n: u32| {
            let evicted = evicted.clone();
            gate.admit_with(Box::new(move || evicted.lock().push(n)))
        };
        let mut a = admit(1).unwrap();
        let b = admit(2).unwrap();
        let c = admit(3).unwrap();
        assert!(a.establish(), "a proves itself");
        // Full: the newcomer evicts b (the oldest pending), not a (established).
        let d = admit(4).unwrap();
        assert_eq!(*evicted.lock(), [2]);
        assert_eq!(gate.open(), 3);
        let mut b = b;
        assert!(!b.establish(), "an evicted connection cannot establish itself afterwards");
        drop(b);
        assert_eq!(gate.open(), 3, "dropping an evicted ticket does not count twice");
        let mut c = c;
        let mut d = d;
        assert!(c.establish() && d.establish());
        // Every connection established: the newcomer is refused, nobody is evicted.
        assert!(admit(5).is_none());
        assert_eq!(*evicted.lock(), [2]);
        drop((a, c));
        assert_eq!(gate.open(), 1);
        assert!(admit(6).is_some());
        drop(d);
    }

    #[test]
    fn tickets_are_given_back_in_any_order_without_leaking_places() {
        let gate = Gate::new(limits(8), "a test connection");
        let closed = Arc::new(AtomicUsize::new(0));
        let mut tickets = Vec::new();
        for i in 0..100 {
            let closed = closed.clone();
            let Some(mut ticket) = gate.admit_with(Box::new(move || {
                closed.fetch_add(1, Ordering::Relaxed);
            })) else {
                // Every place established: a connection ends, and the next one gets in.
                tickets.remove(0);
                continue;
            };
            if i % 3 == 0 {
                ticket.establish();
            }
            tickets.push(ticket);
            if i % 5 == 0 {
                tickets.remove(0);
            }
            assert!(gate.open() <= 8);
        }
        drop(tickets);
        assert_eq!(gate.open(), 0);
    }
}
