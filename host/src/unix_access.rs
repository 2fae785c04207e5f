//! Who may connect to the host's Unix sockets (the frontend socket, NBD exports on a Unix
//! socket). By default a socket is mode 0600: only the host's own user (and root) reaches it.
//! With an allowed-users list (`tmem serve --socket-users alice,bob --socket-group tmem`) the
//! socket is given to that group with mode 0660, so the group's members can reach it through
//! the file system, and each connection's peer is checked with `SO_PEERCRED`: only the host's
//! own user, root and the listed users are served — a member of the group who is not listed is
//! closed before a byte of the protocol is read.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Why the allowed users or group could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum UnixAccessError {
    /// A user name or uid that names no user.
    #[error("--socket-users: no user {0:?}")]
    NoUser(String),
    /// A group name or gid that names no group.
    #[error("--socket-group: no group {0:?}")]
    NoGroup(String),
    /// A users list without a group, or a group without users.
    #[error("--socket-users and --socket-group go together")]
    Incomplete,
}

/// The access rule of the host's Unix sockets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixAccess {
    /// The group sockets are given to, and the uids allowed besides the host's own and root
    /// (`None`: the default, mode 0600 and no peer check).
    shared: Option<(u32, Vec<u32>)>,
}

/// Looks `name` up with `lookup` (a numeric text is taken as the id itself).
fn id_of(name: &str, lookup: impl Fn(&std::ffi::CStr) -> Option<u32>) -> Option<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Some(id);
    }
    let name = std::ffi::CString::new(name).ok()?;
    lookup(&name)
}

fn uid_of(name: &std::ffi::CStr) -> Option<u32> {
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once. Called at
    // start, before the host's threads that could call it too.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    // SAFETY: non-null: a valid passwd record.
    (!entry.is_null()).then(|| unsafe { (*entry).pw_uid })
}

fn gid_of(name: &std::ffi::CStr) -> Option<u32> {
    // SAFETY: as `uid_of`, with getgrnam.
    let entry = unsafe { libc::getgrnam(name.as_ptr()) };
    // SAFETY: non-null: a valid group record.
    (!entry.is_null()).then(|| unsafe { (*entry).gr_gid })
}

impl UnixAccess {
    /// The default: sockets mode 0600, no peer check.
    pub fn private() -> UnixAccess {
        UnixAccess::default()
    }

    /// The rule of `users` (names or uids) and `group` (a name or gid); both empty: private.
    pub fn new(users: &[String], group: Option<&str>) -> Result<UnixAccess, UnixAccessError> {
        match (users.is_empty(), group) {
            (true, None) => Ok(UnixAccess::private()),
            (false, Some(group)) => {
                let gid = id_of(group, gid_of).ok_or_else(|| UnixAccessError::NoGroup(group.into()))?;
                let uids = users
                    .iter()
                    .map(|u| id_of(u, uid_of).ok_or_else(|| UnixAccessError::NoUser(u.clone())))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(UnixAccess { shared: Some((gid, uids)) })
            }
            _ => Err(UnixAccessError::Incomplete),
        }
    }

    /// Whether sockets are shared with a group.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Gives the socket file at `path` its owner group and mode: 0600, or 0660 and the group.
    pub fn apply(&self, path: &Path) -> std::io::Result<()> {
        match &self.shared {
            None => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)),
            Some((gid, _)) => {
                std::os::unix::fs::lchown(path, None, Some(*gid))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            }
        }
    }

    /// Whether the peer of the connected socket `fd` may be served: always without an
    /// allowed-users list; with one, the host's own user, root and the listed users. `Err`
    /// says who was refused, for the log.
    pub fn admits(&self, fd: RawFd) -> Result<(), String> {
        let Some((_, uids)) = &self.shared else { return Ok(()) };
        let uid = peer_uid(fd).map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
        // SAFETY: geteuid cannot fail.
        let own = unsafe { libc::geteuid() };
        if uid == 0 || uid == own || uids.contains(&uid) {
            Ok(())
        } else {
            Err(format!("uid {uid} is not in --socket-users"))
        }
    }

    /// [`UnixAccess::admits`] for a socket object.
    pub fn admits_stream(&self, stream: &impl AsRawFd) -> Result<(), String> {
        self.admits(stream.as_raw_fd())
    }
}

/// The uid of the process at the other end of the Unix socket `fd` (`SO_PEERCRED`: who
/// connected, as the kernel recorded it at `connect`).
fn peer_uid(fd: RawFd) -> std::io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which is that large.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_group_go_together_and_resolve() {
        assert_eq!(UnixAccess::new(&[], None).unwrap(), UnixAccess::private());
        assert!(matches!(UnixAccess::new(&["root".into()], None), Err(UnixAccessError::Incomplete)));
        assert!(matches!(UnixAccess::new(&[], Some("root")), Err(UnixAccessError::Incomplete)));
        let access = UnixAccess::new(&["root".into(), "4242".into()], Some("0")).unwrap();
        assert_eq!(access.shared, Some((0, vec![0, 4242])));
        assert!(matches!(UnixAccess::new(&["no-such-user-tmem".into()], Some("0")), Err(UnixAccessError::NoUser(_))));
    }

    #[test]
    fn the_peer_of_a_socket_pair_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        // SAFETY: geteuid cannot fail.
        assert_eq!(peer_uid(a.as_raw_fd()).unwrap(), unsafe { libc::geteuid() });
        let listed_nobody = UnixAccess { shared: Some((0, vec![65534])) };
        assert!(listed_nobody.admits_stream(&a).is_ok(), "the host's own user is always admitted");
    }
}
