//! TCP connections for a store granted the `network` capability (see
//! [`tmem_api::abi`], "Capabilities"): only to the `host:port` pairs listed in the plugin's
//! `endpoints` config, each operation bounded by its `timeout_ms`.
//!
//! In a Wasm build these are the host's `tmem::net_*` imports. In a native build (a plugin's
//! own unit tests) they are plain `std::net` sockets with the same timeouts, and no grant is
//! checked, so a plugin can be tested against a real server with `cargo test`.

use tmem_api::abi::net as code;

/// Why a network operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetError {
    /// The address is not granted to this pool.
    Denied,
    /// The connection could not be made, or broke.
    Failed,
    /// The operation ran out of time.
    Timeout,
    /// Too many open connections.
    TooMany,
    /// The peer closed the connection.
    Closed,
}

impl NetError {
    fn from_code(n: i32) -> NetError {
        match n {
            code::DENIED => NetError::Denied,
            code::TIMEOUT => NetError::Timeout,
            code::TOO_MANY => NetError::TooMany,
            _ => NetError::Failed,
        }
    }
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            NetError::Denied => "address not granted to this pool",
            NetError::Failed => "connection failed",
            NetError::Timeout => "timed out",
            NetError::TooMany => "too many connections",
            NetError::Closed => "connection closed by the peer",
        })
    }
}

/// An open connection; closed when dropped.
#[derive(Debug)]
pub struct Connection {
    handle: i32,
}

impl Connection {
    /// Connects to `addr` (`host:port`, exactly as granted).
    pub fn connect(addr: &str) -> Result<Connection, NetError> {
        let handle = imp::connect(addr);
        if handle < 0 { Err(NetError::from_code(handle)) } else { Ok(Connection { handle }) }
    }

    /// Sends all of `bytes`.
    pub fn send_all(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        let n = imp::send(self.handle, bytes);
        if n < 0 { Err(NetError::from_code(n)) } else { Ok(()) }
    }

    /// Receives 1 to `buf.len()` bytes.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, NetError> {
        match imp::recv(self.handle, buf) {
            0 if !buf.is_empty() => Err(NetError::Closed),
            n if n < 0 => Err(NetError::from_code(n)),
            n => Ok(n as usize),
        }
    }

    /// Receives exactly `buf.len()` bytes.
    pub fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), NetError> {
        let mut filled = 0;
        while filled < buf.len() {
            filled += self.recv(&mut buf[filled..])?;
        }
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        imp::close(self.handle);
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    #[link(wasm_import_module = "tmem")]
    unsafe extern "C" {
        fn net_connect(ptr: i32, len: i32) -> i32;
        fn net_send(handle: i32, ptr: i32, len: i32) -> i32;
        fn net_recv(handle: i32, ptr: i32, cap: i32) -> i32;
        fn net_close(handle: i32);
    }

    pub fn connect(addr: &str) -> i32 {
        // SAFETY: the host reads `len` bytes at `ptr` from this instance's memory.
        unsafe { net_connect(addr.as_ptr() as i32, addr.len() as i32) }
    }

    pub fn send(handle: i32, bytes: &[u8]) -> i32 {
        // SAFETY: as above.
        unsafe { net_send(handle, bytes.as_ptr() as i32, bytes.len() as i32) }
    }

    pub fn recv(handle: i32, buf: &mut [u8]) -> i32 {
        // SAFETY: the host writes at most `cap` bytes at `ptr` in this instance's memory.
        unsafe { net_recv(handle, buf.as_mut_ptr() as i32, buf.len() as i32) }
    }

    pub fn close(handle: i32) {
        // SAFETY: no pointers are passed.
        unsafe { net_close(handle) }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;

    use tmem_api::abi::net as code;

    /// The native stand-in's timeout for every operation.
    const TIMEOUT: Duration = Duration::from_millis(2000);

    thread_local! {
        static CONNECTIONS: RefCell<Vec<Option<TcpStream>>> = const { RefCell::new(Vec::new()) };
    }

    fn failed(e: std::io::Error) -> i32 {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => code::TIMEOUT,
            _ => code::FAILED,
        }
    }

    pub fn connect(addr: &str) -> i32 {
        let Some(socket) = addr.to_socket_addrs().ok().and_then(|mut a| a.next()) else { return code::FAILED };
        match TcpStream::connect_timeout(&socket, TIMEOUT) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let _ = stream.set_read_timeout(Some(TIMEOUT));
                let _ = stream.set_write_timeout(Some(TIMEOUT));
                CONNECTIONS.with(|c| {
                    let mut c = c.borrow_mut();
                    c.push(Some(stream));
                    (c.len() - 1) as i32
                })
            }
            Err(e) => failed(e),
        }
    }

    fn with<R>(handle: i32, f: impl FnOnce(&mut TcpStream) -> R, bad: R) -> R {
        CONNECTIONS.with(|c| match c.borrow_mut().get_mut(handle as usize).and_then(Option::as_mut) {
            Some(stream) => f(stream),
            None => bad,
        })
    }

    pub fn send(handle: i32, bytes: &[u8]) -> i32 {
        with(handle, |s| s.write_all(bytes).map_or_else(failed, |()| bytes.len() as i32), code::BAD_HANDLE)
    }

    pub fn recv(handle: i32, buf: &mut [u8]) -> i32 {
        with(handle, |s| s.read(buf).map_or_else(failed, |n| n as i32), code::BAD_HANDLE)
    }

    pub fn close(handle: i32) {
        CONNECTIONS.with(|c| {
            if let Some(slot) = c.borrow_mut().get_mut(handle as usize) {
                *slot = None;
            }
        })
    }
}
