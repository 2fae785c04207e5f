//! The systemd readiness protocol (`sd_notify(3)`), sender side: one datagram of
//! newline-separated `KEY=VALUE` assignments to the Unix socket named by `$NOTIFY_SOCKET`.
//!
//! `tmem serve` sends `READY=1` once the catalog's pools and block devices are restored, the
//! declared config is applied and every listener is bound, so a `Type=notify` unit (and
//! `swap.target` ordered after it) starts only when swap can really go to tmem; `STOPPING=1`
//! when it begins to shut down. Without `$NOTIFY_SOCKET` (not started by systemd) nothing is
//! sent. The protocol is small enough to speak here without linking libsystemd: a path, or an
//! abstract socket name written `@name`.

use std::io;
use std::os::unix::net::UnixDatagram;

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Sends `state` (e.g. `"READY=1\nSTATUS=serving"`) to `$NOTIFY_SOCKET`. `Ok(false)` when the
/// variable is unset or empty (nobody is listening); an error when the socket cannot be
/// reached.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET_ENV) {
        Some(path) if !path.is_empty() => {
            send_to(&path.to_string_lossy(), state)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// [`notify`], logging (not returning) a failure: readiness is advisory to the host itself.
pub fn notify_logged(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state, "notified systemd"),
        Ok(false) => {}
        Err(e) => tracing::warn!(state, "cannot notify systemd on ${NOTIFY_SOCKET_ENV}: {e}"),
    }
}

/// Sends `state` to the socket `address`: a filesystem path, or `@name` for an abstract one.
pub fn send_to(address: &str, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = address.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else if address.starts_with('/') {
        socket.send_to(state.as_bytes(), address)?;
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{NOTIFY_SOCKET_ENV}={address} is neither an absolute path nor an abstract name (@name)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reaches_a_path_socket_and_an_abstract_one() {
        let dir = std::env::temp_dir().join(format!("tmem-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1\nSTATUS=ok").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");
        let _ = std::fs::remove_dir_all(&dir);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("tmem-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_relative_address_is_refused() {
        let e = send_to("relative/socket", "READY=1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
