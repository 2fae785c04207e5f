//! What the host's accept loops (the frontend socket, the peer listener) share: a failed
//! `accept` for want of resources — descriptors (EMFILE, ENFILE), buffers, memory — backs off
//! instead of spinning (the listener stays readable, so a loop that only logs would take a
//! core and flood the log until a descriptor frees up).

use std::io;
use std::time::Duration;

/// How long an accept loop waits after running out of a resource.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Handles a failed `accept` of `what` (for the log): logs it, and waits [`ACCEPT_BACKOFF`]
/// when it failed for want of a resource.
pub(crate) async fn accept_failed(error: &io::Error, what: &str) {
    let exhausted = matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM));
    tracing::warn!("accepting {what} failed: {error}{}", if exhausted { " (backing off)" } else { "" });
    if exhausted {
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}
