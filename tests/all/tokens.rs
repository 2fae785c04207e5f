//! Scoped tokens (issue 16, item 5) on a real `tmem serve`: a frontend token opens its own
//! pool only, the host keeps only its hash (a copied catalog authenticates nobody), tokens
//! survive a restart, and revoking one — or destroying its pool — ends the connections it
//! opened and opens no new one. The peer side is in `peer.rs` (a peer token, never the admin
//! token) and `remote.rs` (a remote store with a peer token across the peer's restart).

use tmem_api::rest::{BackendRequest, CreateTokenRequest, PoolConfig, TokenScope};
use tmem_frontend::client::{FrontendClient, Op, OpResult};

use crate::common::{ServeProcess, tagged_page, temp_dir};

fn socket(server: &ServeProcess) -> std::path::PathBuf {
    server.data_dir.join("tmem.sock")
}

fn tmem(server: &ServeProcess, args: &[&str]) -> String {
    server.cli(args)
}

/// Every byte under `dir`, concatenated (to look for a secret in it).
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            bytes.extend(all_bytes(&path));
        } else if let Ok(content) = std::fs::read(&path) {
            bytes.extend(content);
        }
    }
    bytes
}

#[test]
fn a_frontend_token_opens_its_pool_only_is_kept_hashed_and_revocation_ends_its_connections() {
    let dir = temp_dir("tokens");
    let server = ServeProcess::start(&dir, &[]);
    for name in ["p", "q"] {
        server.client().create_pool(&PoolConfig::new(name, vec![BackendRequest::new("ram")])).unwrap();
    }
    // Made by the CLI: the token alone on stdout.
    let token = tmem(&server, &["token", "create", "p", "--label", "app one"]).trim().to_string();
    assert!(token.starts_with("tmem_frontend_") && token.len() > 64, "{token}");
    let listed = tmem(&server, &["token", "ls", "p"]);
    assert!(listed.contains("app one") && listed.contains("frontend") && !listed.contains(&token), "{listed}");

    let client = FrontendClient::connect(&socket(&server), &token, "p", "app").unwrap();
    client.batch(&[Op::Store(1, &tagged_page(1))]).unwrap();
    let other = FrontendClient::connect(&socket(&server), &token, "q", "app").map(|_| ()).unwrap_err();
    assert!(other.to_string().contains("this token is for pool 'p'"), "{other}");
    let peer = server.client().create_token("p", &CreateTokenRequest { scope: TokenScope::Peer, label: String::new() });
    let peer = peer.unwrap().token.unwrap();
    let wrong_kind = FrontendClient::connect(&socket(&server), &peer, "p", "app").map(|_| ()).unwrap_err();
    assert!(wrong_kind.to_string().contains("this is a peer token"), "{wrong_kind}");

    // The host keeps hashes only: the token is nowhere in its data dir.
    drop(client);
    assert!(server.stop(), "a clean stop");
    let kept = all_bytes(&dir);
    assert!(!kept.windows(token.len()).any(|w| w == token.as_bytes()), "the token is on disk in clear");
    let secret = token.trim_start_matches("tmem_frontend_");
    assert!(!kept.windows(secret.len()).any(|w| w == secret.as_bytes()), "the token's secret is on disk");

    // A restart keeps the token; revocation ends the connection it opened at its next batch.
    let server = ServeProcess::start(&dir, &[]);
    let client = FrontendClient::connect(&socket(&server), &token, "p", "app").unwrap();
    assert_eq!(client.batch(&[Op::Load(1)]).unwrap(), [OpResult::Absent], "a [ram] pool restarts empty");
    client.batch(&[Op::Store(2, &tagged_page(2))]).unwrap();
    let id = server.client().tokens("p").unwrap().into_iter().find(|t| t.scope == TokenScope::Frontend).unwrap().id;
    assert!(tmem(&server, &["token", "revoke", "p", &id]).contains("revoked"));
    let cut = client.batch(&[Op::Store(3, &tagged_page(3))]).unwrap_err();
    assert!(cut.to_string().contains("revoked"), "{cut}");
    let refused = FrontendClient::connect(&socket(&server), &token, "p", "app").map(|_| ()).unwrap_err();
    assert!(refused.to_string().contains("wrong token"), "{refused}");
    assert_eq!(server.client().pool("p").unwrap().counters["stored_pages"], 1, "the refused store is not in the pool");

    // Destroying a pool revokes its tokens: a new pool of the same name opens to none of them.
    let fresh =
        server.client().create_token("p", &CreateTokenRequest { scope: TokenScope::Frontend, label: String::new() });
    let fresh = fresh.unwrap().token.unwrap();
    server.client().remove_pool("p").unwrap();
    server.client().create_pool(&PoolConfig::new("p", vec![BackendRequest::new("ram")])).unwrap();
    assert!(server.client().tokens("p").unwrap().is_empty());
    assert!(FrontendClient::connect(&socket(&server), &fresh, "p", "app").is_err());
    // The admin token still attaches frontends (the operator's own tools).
    assert!(FrontendClient::connect(&socket(&server), &server.token, "p", "admin").is_ok());
}

#[test]
fn token_requests_are_checked() {
    let server = ServeProcess::start(&temp_dir("tokens-api"), &[]);
    let client = server.client();
    let request = |label: &str| CreateTokenRequest { scope: TokenScope::Frontend, label: label.into() };
    let code = |e: tmem_api::client::ClientError| (e.status().unwrap_or(0), e.code().unwrap_or_default().to_string());
    assert_eq!(code(client.create_token("nope", &request("")).unwrap_err()), (404, "pool_not_found".into()));
    client.create_pool(&PoolConfig::new("p", vec![BackendRequest::new("ram")])).unwrap();
    assert_eq!(code(client.create_token("p", &request("a\nb")).unwrap_err()), (400, "invalid_token".into()));
    assert_eq!(code(client.create_token("p", &request(&"x".repeat(129))).unwrap_err()), (400, "invalid_token".into()));
    assert_eq!(code(client.revoke_token("p", "tok-000000000000").unwrap_err()), (404, "token_not_found".into()));
    // Without the admin token: 401, as every route.
    let anonymous = tmem_api::client::Client::new(&server.url, None);
    assert_eq!(code(anonymous.tokens("p").unwrap_err()).0, 401);
    let made = client.create_token("p", &request("ok")).unwrap();
    assert!(made.token.is_some());
    let listed = client.tokens("p").unwrap();
    assert_eq!((listed.len(), listed[0].token.as_deref(), listed[0].label.as_str()), (1, None, "ok"));
}

#[test]
fn a_remote_stores_peer_token_is_sealed_at_rest_with_a_key_beside_the_data_dir() {
    let peer_port = crate::peer::free_port();
    let b = crate::peer::memory_server(&temp_dir("sealed-b"), peer_port);
    let token = crate::peer::peer_token(&b, "mem");
    let root = temp_dir("sealed-a");
    let data = root.join("data");
    let a = ServeProcess::start(&data, &[]);
    let endpoint = format!("tmem://127.0.0.1:{peer_port}/mem");
    a.client().create_pool(&crate::remote::remote_pool("far", &[endpoint], &token)).unwrap();
    assert_eq!(a.client().put_page("far", 7, &tagged_page(7)).unwrap().outcome, "stored");
    assert!(a.stop(), "a clean stop");

    // The catalog holds the token sealed; the key is beside the data dir, not in it.
    let kept = all_bytes(&data);
    assert!(!kept.windows(token.len()).any(|w| w == token.as_bytes()), "the peer token is on disk in clear");
    assert!(kept.windows(15).any(|w| w == b"tmem-sealed:v1:"), "the catalog keeps a sealed value");
    let key = root.join("data.key");
    assert_eq!(std::fs::metadata(&key).map(|m| m.len()).ok(), Some(32), "DATA_DIR.key holds the key");

    // With its key, a restart opens the token: the pool reaches B again (a wrong token would
    // make every store `remote_unavailable`).
    let a = ServeProcess::start(&data, &[]);
    let round_trip = |a: &ServeProcess| {
        assert_eq!(a.client().put_page("far", 8, &tagged_page(8)).unwrap().outcome, "stored");
        assert_eq!(a.client().get_page("far", 8).unwrap(), Some(tagged_page(8)));
    };
    round_trip(&a);
    assert!(a.stop(), "a clean stop");
    // Without it (a copied data dir), the pool is not restored with a wrong token: it is not
    // restored at all, and its record stays for when the key is back.
    std::fs::rename(&key, root.join("elsewhere.key")).unwrap();
    let a = ServeProcess::start(&data, &[]);
    assert_eq!(a.client().pool("far").map(|_| ()).unwrap_err().status(), Some(404));
    assert!(a.stop(), "a clean stop");
    let a = ServeProcess::start(&data, &["--secrets-key", root.join("elsewhere.key").to_str().unwrap()]);
    round_trip(&a);
}
