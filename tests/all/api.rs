//! The REST API of a real `tmem serve` process, over HTTP: auth on every route, the OpenAPI
//! document, every route and every error code.

use serde_json::{Value, json};
use tmem_api::client::{Client, ClientError};
use tmem_api::rest::{BackendRequest, PoolConfig, PoolPatch};

use crate::common::{ServeProcess, tagged_page, temp_dir};

/// Every route of `/api/v1`, as the issue defines it: (method, path template, a concrete path).
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/api/v1/plugins", "/api/v1/plugins"),
    ("POST", "/api/v1/plugins", "/api/v1/plugins?name=x"),
    ("GET", "/api/v1/plugins/{name}", "/api/v1/plugins/zstd"),
    ("DELETE", "/api/v1/plugins/{name}", "/api/v1/plugins/zstd"),
    ("GET", "/api/v1/pools", "/api/v1/pools"),
    ("POST", "/api/v1/pools", "/api/v1/pools"),
    ("GET", "/api/v1/pools/{name}", "/api/v1/pools/demo"),
    ("PATCH", "/api/v1/pools/{name}", "/api/v1/pools/demo"),
    ("DELETE", "/api/v1/pools/{name}", "/api/v1/pools/demo"),
    ("GET", "/api/v1/pools/{name}/frontends", "/api/v1/pools/demo/frontends"),
    ("POST", "/api/v1/pools/{name}/frontends", "/api/v1/pools/demo/frontends"),
    ("DELETE", "/api/v1/pools/{name}/frontends/{id}", "/api/v1/pools/demo/frontends/nbd-1"),
    ("GET", "/api/v1/pools/{name}/tokens", "/api/v1/pools/demo/tokens"),
    ("POST", "/api/v1/pools/{name}/tokens", "/api/v1/pools/demo/tokens"),
    ("DELETE", "/api/v1/pools/{name}/tokens/{id}", "/api/v1/pools/demo/tokens/tok-1"),
    ("PUT", "/api/v1/pools/{name}/pages/{offset}", "/api/v1/pools/demo/pages/1"),
    ("GET", "/api/v1/pools/{name}/pages/{offset}", "/api/v1/pools/demo/pages/1"),
    ("DELETE", "/api/v1/pools/{name}/pages/{offset}", "/api/v1/pools/demo/pages/1"),
    ("DELETE", "/api/v1/pools/{name}/pages", "/api/v1/pools/demo/pages"),
    ("POST", "/api/v1/pools/{name}/shrink", "/api/v1/pools/demo/shrink"),
    ("GET", "/api/v1/stats", "/api/v1/stats"),
    ("GET", "/api/v1/stats/stream", "/api/v1/stats/stream"),
    ("GET", "/api/v1/memory", "/api/v1/memory"),
    ("PATCH", "/api/v1/memory", "/api/v1/memory"),
    ("GET", "/api/v1/openapi.json", "/api/v1/openapi.json"),
];

fn error_code(body: &[u8]) -> String {
    let v: Value =
        serde_json::from_slice(body).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)));
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {v}")).to_string()
}

fn api_error(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, String, String) {
    match result.expect_err("the call should fail") {
        ClientError::Api { status, code, message } => (status, code, message),
        other => panic!("not an API error: {other}"),
    }
}

#[test]
fn every_api_route_needs_the_token_and_is_in_the_openapi_document() {
    let server = ServeProcess::start(&temp_dir("auth"), &["--demo-pool"]);
    let anonymous = Client::new(&server.url, None);
    let wrong = Client::new(&server.url, Some("not-the-token".into()));
    for &(method, _, path) in ROUTES {
        for client in [&anonymous, &wrong] {
            let (status, body) = client.request(method, path, Some(("application/json", b"{}")), true).unwrap();
            assert_eq!(status, 401, "{method} {path} without the right token: {}", String::from_utf8_lossy(&body));
            assert_eq!(error_code(&body), "unauthorized");
        }
    }
    // Nothing changed: the demo pool and the zstd plugin are still there.
    let client = server.client();
    assert_eq!(client.pool("demo").unwrap().name, "demo");
    assert!(client.plugin("zstd").is_ok());
    // The open endpoints stay open.
    assert_eq!(anonymous.health().unwrap().pools, 1);
    assert!(anonymous.metrics().unwrap().contains("tmem_pool_succ_stores_total{pool=\"demo\"}"));

    let doc = client.openapi().unwrap();
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |m| (m.to_uppercase(), path.clone())))
        .collect();
    documented.sort();
    let mut expected: Vec<(String, String)> = ROUTES.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    expected.sort();
    assert_eq!(documented, expected, "the OpenAPI document lists exactly the API's routes");
    assert!(doc["components"]["securitySchemes"]["token"].is_object());
    assert!(doc["components"]["schemas"]["PoolConfig"].is_object());
}

#[test]
fn plugins_upload_validate_version_list_and_remove() {
    let server = ServeProcess::start(&temp_dir("plugins"), &[]);
    let client = server.client();
    let names: Vec<String> = client.plugins().unwrap().into_iter().map(|p| p.name).collect();
    assert!(names.contains(&"zstd".to_string()) && names.contains(&"ram".to_string()), "{names:?}");
    let zstd = client.plugin("zstd").unwrap();
    assert!(zstd.versions[0].bundled && zstd.versions[0].kind == "filter" && zstd.versions[0].abi == 1);
    assert_eq!(client.plugin("sled").unwrap().versions[0].capabilities, ["storage"]);

    // Upload a fixture built from plugins/versioned-v1: 201, and the same bytes again: 200.
    let v1 = tmem_host::bundled::built("tmem_plugin_versioned_v1").unwrap();
    let v2 = tmem_host::bundled::built("tmem_plugin_versioned_v2").unwrap();
    let (status, body) =
        client.request("POST", "/api/v1/plugins?name=fmt", Some(("application/wasm", &v1)), true).unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let first: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (first["name"].as_str(), first["version"].as_str(), first["kind"].as_str()),
        (Some("fmt"), Some("1.0.0"), Some("filter"))
    );
    assert_eq!(first["size"].as_u64(), Some(v1.len() as u64));
    let (status, body) =
        client.request("POST", "/api/v1/plugins?name=fmt", Some(("application/wasm", &v1)), true).unwrap();
    assert_eq!(status, 200, "the same bytes again are idempotent");
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["sha256"], first["sha256"]);
    // New bytes under the same name: a second version, the newest.
    let second = client.upload_plugin(Some("fmt"), &v2).unwrap();
    assert_eq!(second.version, "2.0.0");
    let fmt = client.plugin("fmt").unwrap();
    assert_eq!(fmt.versions.iter().map(|v| v.version.as_str()).collect::<Vec<_>>(), ["1.0.0", "2.0.0"]);
    // Without ?name= the manifest's name is used.
    assert_eq!(client.upload_plugin(None, &v1).unwrap().name, "versioned");

    // Bad uploads: a clear 400 or 413 each, and nothing registered.
    let before = client.plugins().unwrap();
    let mut wrong_abi =
        wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "tmem_abi_v2")))"#).unwrap();
    let missing_exports =
        wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "tmem_abi_v1")))"#).unwrap();
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        ("not wasm", b"#!/bin/sh\necho hi\n".to_vec(), 400, "invalid_plugin", "not a WebAssembly module"),
        ("wrong abi", std::mem::take(&mut wrong_abi), 400, "invalid_plugin", "ABI"),
        ("missing exports", missing_exports, 400, "invalid_plugin", "export"),
        ("truncated", v1[..v1.len() / 2].to_vec(), 400, "invalid_plugin", ""),
        ("too large", vec![0u8; (16 << 20) + 10], 413, "plugin_too_large", "limit"),
    ];
    for (what, bytes, status, code, needle) in cases {
        let (got, body) =
            client.request("POST", "/api/v1/plugins?name=bad", Some(("application/wasm", &bytes)), true).unwrap();
        assert_eq!(got, status, "{what}: {}", String::from_utf8_lossy(&body));
        assert_eq!(error_code(&body), code, "{what}");
        let message = serde_json::from_slice::<Value>(&body).unwrap()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(needle), "{what}: {message}");
    }
    let (status, body) =
        client.request("POST", "/api/v1/plugins?name=no%20spaces", Some(("application/wasm", &v1)), true).unwrap();
    assert_eq!((status, error_code(&body).as_str()), (400, "invalid_plugin_name"));
    assert_eq!(client.plugins().unwrap(), before, "nothing half-registered");

    // Removal: 409 while a pool uses a version, 409 for bundled plugins, 404 for unknown ones.
    let mut config = PoolConfig::new("uses-fmt", vec![BackendRequest::new("fmt"), BackendRequest::new("ram")]);
    config.backends[0].version = Some("1.0.0".into());
    client.create_pool(&config).unwrap();
    assert_eq!(client.plugin("fmt").unwrap().versions[0].used_by, ["uses-fmt"]);
    let (status, code, message) = api_error(client.remove_plugin("fmt", None));
    assert_eq!((status, code.as_str()), (409, "plugin_in_use"));
    assert!(message.contains("uses-fmt"), "{message}");
    client.remove_plugin("fmt", Some("2.0.0")).unwrap();
    assert_eq!(client.plugin("fmt").unwrap().versions.len(), 1);
    assert_eq!(api_error(client.remove_plugin("zstd", None)).1, "plugin_bundled");
    assert_eq!(api_error(client.remove_plugin("nope", None)).1, "plugin_not_found");
    assert_eq!(api_error(client.plugin("nope")).0, 404);
    client.remove_pool("uses-fmt").unwrap();
    client.remove_plugin("fmt", None).unwrap();
    assert_eq!(api_error(client.plugin("fmt")).1, "plugin_not_found");
}

#[test]
fn pools_are_created_checked_changed_and_destroyed() {
    let server = ServeProcess::start(&temp_dir("pools"), &[]);
    let client = server.client();
    let body = json!({"name": "p1", "page_size": 4096, "backends": [{"plugin": "zstd", "config": {"level": 1}}, {"plugin": "ram"}],
                      "max_pages": 100000, "max_bytes": null, "writethrough": false, "exclusive_gets": false});
    let (status, created) =
        client.request("POST", "/api/v1/pools", Some(("application/json", body.to_string().as_bytes())), true).unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&created));
    let info = client.pool("p1").unwrap();
    assert_eq!((info.page_size, info.max_pages, info.max_bytes), (4096, Some(100000), None));
    assert_eq!(info.backends.iter().map(|b| b.plugin.as_str()).collect::<Vec<_>>(), ["zstd", "ram"]);
    assert_eq!(info.backends[0].config["level"], 1, "the config, defaults filled in");
    assert_eq!(info.backends[0].config["on_incompressible"], "reject");
    assert_eq!(info.backends[0].sha256.len(), 64);
    assert!(info.counters.contains_key("succ_stores") && info.counters.contains_key("pool_total_size"));
    assert!(!info.persistent);
    assert_eq!(client.pools().unwrap().len(), 1);

    // Every kind of bad pool config: 400 with the reason; and a duplicate name: 409.
    let bad = [
        (
            json!({"name": "x", "backends": [{"plugin": "ram"}], "max_page": 3}),
            "invalid_json",
            "unknown field `max_page`",
        ),
        (json!({"name": "x", "backends": [{"plugin": "nope"}]}), "unknown_plugin", "nope"),
        (json!({"name": "x", "backends": [{"plugin": "ram", "version": "9.9"}]}), "unknown_plugin_version", "9.9"),
        (
            json!({"name": "x", "backends": [{"plugin": "ram"}, {"plugin": "zstd"}]}),
            "invalid_pool",
            "must end with a store",
        ),
        (json!({"name": "x", "backends": [{"plugin": "zstd"}]}), "invalid_pool", "must end with a store"),
        (json!({"name": "x", "backends": []}), "invalid_pool", "at least a store"),
        (
            json!({"name": "x", "backends": [{"plugin": "zstd", "config": {"levle": 1}}, {"plugin": "ram"}]}),
            "invalid_pool",
            "levle",
        ),
        (
            json!({"name": "x", "backends": [{"plugin": "zstd", "config": {"level": 99}}, {"plugin": "ram"}]}),
            "invalid_pool",
            "level",
        ),
        (json!({"name": "x", "page_size": 5000, "backends": [{"plugin": "ram"}]}), "invalid_pool", "power of two"),
        (json!({"name": "bad name!", "backends": [{"plugin": "ram"}]}), "invalid_pool", "pool name"),
        (json!({"name": "x", "backends": [{"plugin": "ram"}], "max_pages": 0}), "invalid_pool", "limit of 0"),
        (json!({"name": "x"}), "invalid_json", "backends"),
    ];
    for (body, code, needle) in bad {
        let (status, response) = client
            .request("POST", "/api/v1/pools", Some(("application/json", body.to_string().as_bytes())), true)
            .unwrap();
        assert_eq!(status, 400, "{body}: {}", String::from_utf8_lossy(&response));
        assert_eq!(error_code(&response), code, "{body}");
        assert!(String::from_utf8_lossy(&response).contains(needle), "{body}: {}", String::from_utf8_lossy(&response));
    }
    // A number with a zero fraction is an integer, as JSON Schema says (an OpenAPI fuzzer sends
    // them); a fraction is refused.
    let integral = br#"{"name": "f", "page_size": 8192.0, "max_pages": 1e3, "backends": [{"plugin": "zstd", "config": {"level": 5.0}}, {"plugin": "ram"}]}"#;
    let (status, response) =
        client.request("POST", "/api/v1/pools?dry_run=true", Some(("application/json", integral)), true).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&response));
    let (status, response) = client
        .request(
            "POST",
            "/api/v1/pools?dry_run=true",
            Some(("application/json", br#"{"name": "f", "max_pages": 2.5, "backends": [{"plugin": "ram"}]}"#)),
            true,
        )
        .unwrap();
    assert_eq!((status, error_code(&response).as_str()), (400, "invalid_json"));
    assert!(String::from_utf8_lossy(&response).contains("max_pages: invalid type: floating point `2.5`"));
    // An object only as an object: serde alone reads a struct from an array of its fields.
    for body in [
        &br#"["f", 4096, [{"plugin": "ram"}]]"#[..],
        br#"{"name": "f", "backends": [["ram"]]}"#,
        br#"{"name": "f", "backends": [{"plugin": "ram"}], "sandbox": [1048576, 100]}"#,
    ] {
        let (status, response) =
            client.request("POST", "/api/v1/pools?dry_run=true", Some(("application/json", body)), true).unwrap();
        assert_eq!(
            (status, error_code(&response).as_str()),
            (400, "invalid_json"),
            "{}",
            String::from_utf8_lossy(body)
        );
        assert!(String::from_utf8_lossy(&response).contains("expected an object"));
    }
    let (status, response) =
        client.request("POST", "/api/v1/pools", Some(("application/json", b"{not json")), true).unwrap();
    assert_eq!((status, error_code(&response).as_str()), (400, "invalid_json"));
    let (status, response) = client.request("POST", "/api/v1/pools", Some(("text/plain", b"{}")), true).unwrap();
    assert_eq!((status, error_code(&response).as_str()), (415, "unsupported_media_type"));
    assert_eq!(
        api_error(client.create_pool(&PoolConfig::new("p1", vec![BackendRequest::new("ram")]))).1,
        "pool_exists"
    );
    assert_eq!(client.pools().unwrap().len(), 1, "no failed create left anything");

    // PATCH: limits, modes, enabled; null clears a limit; bad values are refused whole.
    let patch: PoolPatch = serde_json::from_value(
        json!({"max_pages": 10, "max_bytes": 1000000, "writethrough": true, "exclusive_gets": true, "enabled": false}),
    )
    .unwrap();
    let info = client.update_pool("p1", &patch).unwrap();
    assert_eq!(
        (info.max_pages, info.max_bytes, info.writethrough, info.exclusive_gets, info.enabled),
        (Some(10), Some(1000000), true, true, false)
    );
    let info = client
        .update_pool("p1", &serde_json::from_value(json!({"max_pages": null, "enabled": true})).unwrap())
        .unwrap();
    assert_eq!((info.max_pages, info.max_bytes, info.enabled), (None, Some(1000000), true));
    let (status, code, _) = api_error(client.update_pool(
        "p1",
        &serde_json::from_value(json!({"accept_threshold_percent": 0, "writethrough": false})).unwrap(),
    ));
    assert_eq!((status, code.as_str()), (400, "invalid_pool"));
    assert!(client.pool("p1").unwrap().writethrough, "a refused patch changes nothing");
    let (status, response) =
        client.request("PATCH", "/api/v1/pools/p1", Some(("application/json", br#"{"max_pgaes": 1}"#)), true).unwrap();
    assert_eq!((status, error_code(&response).as_str()), (400, "invalid_json"));
    let swap_other_plugin = json!({"backends": [{"plugin": "ram"}]});
    let (status, response) = client
        .request(
            "PATCH",
            "/api/v1/pools/p1",
            Some(("application/json", swap_other_plugin.to_string().as_bytes())),
            true,
        )
        .unwrap();
    assert_eq!((status, error_code(&response).as_str()), (400, "invalid_pool"));
    assert!(String::from_utf8_lossy(&response).contains("hot swap keeps the chain's plugins"));

    // Unknown pools and routes, wrong methods.
    for (method, path) in
        [("GET", "/api/v1/pools/nope"), ("DELETE", "/api/v1/pools/nope"), ("GET", "/api/v1/pools/nope/pages/1")]
    {
        let (status, response) = client.request(method, path, None, true).unwrap();
        assert_eq!((status, error_code(&response).as_str()), (404, "pool_not_found"), "{method} {path}");
    }
    let (status, response) = client.request("GET", "/api/v1/nothing-here", None, true).unwrap();
    assert_eq!((status, error_code(&response).as_str()), (404, "not_found"));
    let (status, response) = client.request("PUT", "/api/v1/pools", None, true).unwrap();
    assert_eq!((status, error_code(&response).as_str()), (405, "method_not_allowed"));
    // A wrong method is no way around the token: without it, the answer is 401, not 405.
    for (method, path) in [("PUT", "/api/v1/pools"), ("POST", "/api/v1/memory"), ("PUT", "/api/v1/openapi.json")] {
        let (status, response) = client.request(method, path, None, false).unwrap();
        assert_eq!((status, error_code(&response).as_str()), (401, "unauthorized"), "{method} {path}");
    }
    assert_eq!(client.request("GET", "/healthz", None, false).unwrap().0, 200, "health needs no token");

    // DELETE: invalidate_area, then gone.
    client.put_page("p1", 1, &tagged_page(1)).unwrap();
    client.remove_pool("p1").unwrap();
    assert_eq!(api_error(client.pool("p1")).1, "pool_not_found");
    assert_eq!(client.health().unwrap().curr_pages, 0);
}

#[test]
fn pages_store_load_invalidate_reject_and_shrink_over_http() {
    let server = ServeProcess::start(&temp_dir("pages"), &[]);
    let client = server.client();
    let mut config = PoolConfig::new("pg", vec![BackendRequest::new("zstd"), BackendRequest::new("ram")]);
    config.max_pages = Some(3);
    config.accept_threshold_percent = 100;
    client.create_pool(&config).unwrap();

    for offset in 0..3 {
        let r = client.put_page("pg", offset, &tagged_page(offset)).unwrap();
        assert_eq!((r.outcome.as_str(), r.reason.as_deref()), ("stored", None));
    }
    let (status, body) = client
        .request("PUT", "/api/v1/pools/pg/pages/3", Some(("application/octet-stream", &tagged_page(3))), true)
        .unwrap();
    assert_eq!(status, 507, "the pool is full");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"outcome": "rejected", "reason": "pool_limit_hit"})
    );
    assert_eq!(client.get_page("pg", 1).unwrap().as_deref(), Some(&tagged_page(1)[..]));
    assert_eq!(client.get_page("pg", 3).unwrap(), None, "a rejected store left nothing");
    let (status, body) = client.request("GET", "/api/v1/pools/pg/pages/3", None, true).unwrap();
    assert_eq!((status, error_code(&body).as_str()), (404, "page_not_found"));

    // Wrong lengths and bad offsets are 400 and change nothing.
    for len in [0usize, 4095, 4097, 8192] {
        let (status, body) = client
            .request("PUT", "/api/v1/pools/pg/pages/1", Some(("application/octet-stream", &vec![7u8; len])), true)
            .unwrap();
        assert_eq!((status, error_code(&body).as_str()), (400, "wrong_page_size"), "{len} bytes");
    }
    assert_eq!(
        client.get_page("pg", 1).unwrap().as_deref(),
        Some(&tagged_page(1)[..]),
        "a refused put keeps the old page"
    );
    let (status, body) = client.request("GET", "/api/v1/pools/pg/pages/minus-one", None, true).unwrap();
    assert_eq!((status, error_code(&body).as_str()), (400, "invalid_path"));

    // Invalidate one page (204, then 404), then the whole area.
    assert!(client.remove_page("pg", 0).unwrap());
    assert!(!client.remove_page("pg", 0).unwrap());
    assert_eq!(client.invalidate_area("pg").unwrap().pages, 2);
    assert_eq!(client.get_page("pg", 1).unwrap(), None);

    // Shrink: refused without a frontend unless writethrough; writethrough drops pages.
    for offset in 0..3 {
        client.put_page("pg", offset, &tagged_page(offset)).unwrap();
    }
    let (status, code, _) = api_error(client.shrink("pg", 1));
    assert_eq!((status, code.as_str()), (409, "no_frontend"));
    let patch = PoolPatch { writethrough: Some(true), ..Default::default() };
    client.update_pool("pg", &patch).unwrap();
    let r = client.put_page("pg", 2, &tagged_page(22)).unwrap();
    assert_eq!(r.outcome, "stored_writethrough");
    let shrunk = client.shrink("pg", 1).unwrap();
    assert_eq!((shrunk.before, shrunk.after, shrunk.dropped), (3, 1, 2));

    // Counters and metrics saw all of it.
    let info = client.pool("pg").unwrap();
    assert_eq!(info.counters["pool_limit_hit"], 1);
    assert_eq!(info.counters["stored_pages"], 1);
    assert!(info.latency["store"].count >= 7);
    let metrics = client.metrics().unwrap();
    for line in [
        "tmem_pool_pool_limit_hit_total{pool=\"pg\"} 1",
        "tmem_pool_stored_pages{pool=\"pg\"} 1",
        "# TYPE tmem_pool_op_duration_seconds histogram",
        "tmem_pool_plugin_info{pool=\"pg\",plugin=\"zstd\"",
    ] {
        assert!(metrics.contains(line), "metrics lack {line:?}");
    }
    let store_count = metrics
        .lines()
        .find(|l| l.starts_with("tmem_pool_op_duration_seconds_count{pool=\"pg\",op=\"store\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("a store latency count");
    assert_eq!(store_count, info.latency["store"].count);
    assert!(
        metrics
            .lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.rsplit_once(' ').is_some_and(|(_, v)| v.parse::<f64>().is_ok()))
    );
}
