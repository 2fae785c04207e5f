//! The Unix sockets' allowed-users list (`tmem serve --socket-users --socket-group`) against
//! real clients run as other users (`setpriv`, as root): the sockets belong to the group with
//! mode 0660, a listed user's `nbdinfo` is served, and a member of the group who is not listed
//! is refused by the `SO_PEERCRED` check (and logged). Without root the test says so and
//! checks nothing.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use tmem_api::rest::{AttachRequest, BackendRequest, FrontendKind, PoolConfig};

use crate::common::{ServeProcess, temp_dir};

/// `nogroup` and `nobody` on Debian.
const NOGROUP: u32 = 65534;
const NOBODY: u32 = 65534;

/// `nbdinfo uri` as `uid` with the single group `gid`: its success and output.
fn nbdinfo_as(uid: u32, gid: u32, uri: &str) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["60", "setpriv", &format!("--reuid={uid}"), &format!("--regid={gid}"), "--clear-groups", "nbdinfo", uri])
        .output()
        .expect("setpriv (util-linux) runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn an_allowed_users_list_gives_the_sockets_to_a_group_and_serves_only_the_listed_users() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("unix_access: not root, cannot run clients as other users: nothing checked");
        return;
    }
    let dir = temp_dir("unix-access");
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, Some(0), Some(NOGROUP)).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o750)).unwrap();
    let log = dir.join("serve.log");
    let socket = shared.join("tmem.sock");
    let server = ServeProcess::start_logged(
        &dir.join("data"),
        &[
            "--allow-path",
            shared.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "--socket-users",
            "nobody",
            "--socket-group",
            "nogroup",
        ],
        Some(&log),
    );
    let client = server.client();
    client.create_pool(&PoolConfig::new("p", vec![BackendRequest::new("ram")])).unwrap();
    let request = AttachRequest {
        kind: FrontendKind::Nbd,
        size_bytes: 8 << 20,
        backing: shared.join("backing.img").display().to_string(),
        socket: Some(shared.join("nbd.sock").display().to_string()),
        listen: None,
        allow_remote: false,
        insecure_no_tls: false,
        ublk_id: None,
    };
    let attached = client.attach_frontend("p", &request).unwrap();
    for path in [&socket, &shared.join("nbd.sock")] {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, NOGROUP), "{}", path.display());
    }
    // A listed user: served.
    let (ok, out) = nbdinfo_as(NOBODY, NOGROUP, &attached.address);
    assert!(ok && out.contains("export-size: 8388608"), "{out}");
    // A member of the group who is not listed: the file lets it connect, the host does not.
    let (ok, out) = nbdinfo_as(4242, NOGROUP, &attached.address);
    assert!(!ok, "uid 4242 was served: {out}");
    // Not even in the group: the file system refuses it.
    let (ok, out) = nbdinfo_as(4242, 4242, &attached.address);
    assert!(!ok, "uid 4242 outside the group was served: {out}");
    // The host's own user is served as before.
    let out = crate::common::run("nbdinfo", &[&attached.address]);
    assert!(out.contains("export-size"), "{out}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("uid 4242 is not in --socket-users"), "the refusal is logged:\n{text}");
}
