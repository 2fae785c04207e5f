//! The OpenAPI document made complete: what the handlers' annotations cannot say on their own.
//!
//! - **Answers every route shares**, from the layers and extractors rather than the handler:
//!   401 `unauthorized` (the token check, on every `/api/v1` route), 400 `invalid_path` (a path
//!   parameter that does not parse), 400 `invalid_query` (a query that does not parse or has an
//!   unknown key), 400 `invalid_json` / 415 `unsupported_media_type` / 413 `body_too_large` (a
//!   JSON body), 413 for any body over the limit, 500 `internal` (a handler whose work runs on
//!   the blocking pool), and 503 `timeout` (the per-request time limit). Raw bodies (pages,
//!   modules) are binary strings.
//! - **Rules across fields** that utoipa's derive cannot state: `PATCH /memory` takes exactly
//!   one of its limit fields and/or governor changes (which give at most one reserve), an attach request exactly one place (an NBD socket, an NBD address, or
//!   ublk) (each a `oneOf`).
//! - **Links** between operations (OpenAPI `links`): a created pool's name leads to every
//!   operation on it, an uploaded plugin's to its get and delete, an attached device's id to
//!   its detach, a stored page to its load and invalidate — what a stateful client (or fuzzer)
//!   follows.
//!
//! `tests/all/openapi_fuzz.rs` runs a generic OpenAPI fuzzer (Schemathesis) against a real
//! server with every check: an answer this document does not list is a failure there.

use serde_json::{Map, Value, json};
use tmem_api::rest::POOL_NAME_PATTERN;

use super::REQUEST_TIMEOUT;

/// Operations whose work runs on tokio's blocking pool (`error::blocking`): a failure to run
/// it is a 500 `internal`.
const BLOCKING: &[&str] = &[
    "upload_plugin",
    "delete_plugin",
    "create_pool",
    "patch_pool",
    "delete_pool",
    "put_page",
    "get_page",
    "delete_page",
    "invalidate_area",
    "shrink",
    "attach_frontend",
    "detach_frontend",
    "create_token",
    "revoke_token",
];

/// Completes `doc` (the document utoipa generated from the annotations) in place.
pub fn complete(doc: &mut Value) {
    let paths = doc["paths"].as_object_mut().expect("the document has paths");
    for (path, item) in paths.iter_mut() {
        for (_method, op) in item.as_object_mut().expect("a path item is an object").iter_mut() {
            complete_operation(path, op);
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    schemas["MemoryPatch"] = memory_patch_schema();
    governor_patch_not_both_reserves(&mut schemas["GovernorPatch"]);
    schemas["AttachRequest"]["oneOf"] = attach_request_places();
    schemas["AttachRequest"]["properties"]["listen"]["pattern"] = Value::from(LISTEN_PATTERN);
    schemas["CreateTokenRequest"]["properties"]["label"]["pattern"] = Value::from(TOKEN_LABEL_PATTERN);
    add_links(doc);
    unsigned_integers(doc);
}

/// utoipa writes a `u64` as `format: int64, minimum: 0` (and a `u32` as `int32`), which a
/// client reads as "at most 2^63 - 1" (2^31 - 1): the host takes every value of the unsigned
/// type, so each says its own format and maximum.
fn unsigned_integers(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            let unsigned = fields.get("minimum").and_then(Value::as_f64).is_some_and(|m| m >= 0.0);
            let format = fields.get("format").and_then(Value::as_str).map(str::to_string);
            match format.as_deref() {
                Some("int64") if unsigned => {
                    fields.insert("format".into(), "uint64".into());
                    fields.entry("maximum").or_insert(Value::from(u64::MAX));
                }
                Some("int32") if unsigned => {
                    fields.insert("format".into(), "uint32".into());
                    fields.entry("maximum").or_insert(Value::from(u32::MAX));
                }
                _ => {}
            }
            fields.values_mut().for_each(unsigned_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_integers),
        _ => {}
    }
}

fn error_response(description: String) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    })
}

/// Adds `text` (which names `code`) to the answer `status` of `op`, creating the answer if
/// the annotation has none.
fn add_answer(op: &mut Value, status: &str, code: &str, text: &str) {
    let responses = op["responses"].as_object_mut().expect("an operation has responses");
    match responses.get_mut(status) {
        None => {
            responses.insert(status.into(), error_response(text.into()));
        }
        Some(response) => {
            let description = response["description"].as_str().unwrap_or("").to_string();
            if !description.contains(&format!("`{code}`")) {
                let joined =
                    if description.is_empty() { text.to_string() } else { format!("{description}. Also: {text}") };
                response["description"] = Value::String(joined);
            }
            if response.get("content").is_none() {
                response["content"] = error_response(String::new())["content"].clone();
            }
        }
    }
}

fn complete_operation(path: &str, op: &mut Value) {
    let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
    if secured {
        add_answer(
            op,
            "401",
            "unauthorized",
            "No `Authorization: Bearer TOKEN` header, or a wrong token (`unauthorized`)",
        );
    }
    let params = op["parameters"].as_array().cloned().unwrap_or_default();
    if params.iter().any(|p| p["in"] == "path") {
        add_answer(
            op,
            "400",
            "invalid_path",
            "A path parameter does not parse, e.g. an offset that is not a u64 (`invalid_path`)",
        );
    }
    if params.iter().any(|p| p["in"] == "query") {
        add_answer(op, "400", "invalid_query", "The query does not parse or has an unknown key (`invalid_query`)");
    }
    for p in op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
        // A pool's name in a path has the rules of a pool's name (anything else is no pool: 404).
        if p["in"] == "path" && p["name"] == "name" && path.starts_with("/api/v1/pools/") {
            p["schema"] = json!({"type": "string", "pattern": POOL_NAME_PATTERN, "minLength": 1, "maxLength": 64});
        }
    }
    let body_types: Vec<String> =
        op["requestBody"]["content"].as_object().map(|c| c.keys().cloned().collect()).unwrap_or_default();
    for content_type in &body_types {
        if content_type != "application/json" {
            // Raw bytes (a page, a module): a binary string, not utoipa's array of integers.
            op["requestBody"]["content"][content_type]["schema"] = json!({"type": "string", "format": "binary"});
            op["requestBody"]["required"] = Value::Bool(true);
        }
    }
    if body_types.iter().any(|t| t == "application/json") {
        op["requestBody"]["required"] = Value::Bool(true);
        add_answer(
            op,
            "400",
            "invalid_json",
            "The body is not JSON of this operation's schema: a syntax error, a wrong type, a missing or unknown field (`invalid_json`)",
        );
        add_answer(
            op,
            "415",
            "unsupported_media_type",
            "The body is not sent as `Content-Type: application/json` (`unsupported_media_type`)",
        );
    }
    if !body_types.is_empty() {
        add_answer(op, "413", "body_too_large", "The body is over the host's size limit (`body_too_large`)");
    }
    if op["operationId"].as_str().is_some_and(|id| BLOCKING.contains(&id)) {
        add_answer(op, "500", "internal", "The request's work could not run (`internal`; the host's log says why)");
    }
    add_answer(
        op,
        "503",
        "timeout",
        &format!("The request took longer than the host allows, {} s (`timeout`)", REQUEST_TIMEOUT.as_secs()),
    );
}

/// `PATCH /memory`: exactly one of `limit_bytes`, `limit_percent` and `unlimited: true` (the
/// others absent, `null`, or `unlimited: false`), each with optional `governor` changes; or
/// `governor` changes alone.
fn memory_patch_schema() -> Value {
    let limit_bytes = json!({"type": "integer", "format": "int64", "minimum": 16 << 20, "description": "A limit in bytes (at least 16 MiB)."});
    let limit_percent = json!({"type": "integer", "format": "int32", "minimum": 1, "maximum": 100, "description": "A limit as a share of the machine's RAM, 1 to 100."});
    let absent = json!({"type": "null"});
    let not_unlimited = json!({"type": "boolean", "enum": [false]});
    let governor = json!({"$ref": "#/components/schemas/GovernorPatch"});
    let maybe_governor = json!({"oneOf": [governor, {"type": "null"}]});
    let branch = |bytes: &Value, percent: &Value, unlimited: &Value, governor: &Value, required: &str| {
        json!({
            "type": "object",
            "properties": {"limit_bytes": bytes, "limit_percent": percent, "unlimited": unlimited, "governor": governor},
            "required": [required],
            "additionalProperties": false,
        })
    };
    json!({
        "description": "A new memory budget — exactly one of `limit_bytes`, `limit_percent` and `unlimited: true` — and/or `governor` changes. What is already stored stays; stores past the new limit are refused until usage falls below it.",
        "oneOf": [
            branch(&limit_bytes, &absent, &not_unlimited, &maybe_governor, "limit_bytes"),
            branch(&absent, &limit_percent, &not_unlimited, &maybe_governor, "limit_percent"),
            branch(&absent, &absent, &json!({"type": "boolean", "enum": [true], "description": "No limit."}), &maybe_governor, "unlimited"),
            branch(&absent, &absent, &not_unlimited, &governor, "governor"),
        ],
    })
}

/// The governor's changes: `reserve_bytes` and `reserve_percent` are not both given.
fn governor_patch_not_both_reserves(schema: &mut Value) {
    schema["not"] = json!({
        "properties": {"reserve_bytes": {"type": "integer"}, "reserve_percent": {"type": "integer"}},
        "required": ["reserve_bytes", "reserve_percent"],
    });
}

/// An IP address and port, as Rust's `SocketAddr` parses them (IPv4 exactly; IPv6 loosely:
/// an IPv6 text that does not parse is refused with `invalid_frontend`).
/// A token's label: no control characters (C0, DEL, C1: what `char::is_control` refuses).
const TOKEN_LABEL_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";

const LISTEN_PATTERN: &str = r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|\[[0-9A-Fa-f:.]+\]):(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)$";

/// Where an attached device is served: NBD on a Unix socket, NBD on a TCP address, or ublk —
/// exactly one (`socket` and `listen` are NBD's; `ublk_id` is ublk's, which takes no socket,
/// address or `allow_remote`; `insecure_no_tls` is a TCP address's only).
fn attach_request_places() -> Value {
    let none = json!({"type": "null"});
    json!([
        {
            "title": "NBD on a Unix socket",
            "properties": {"kind": {"enum": ["nbd"]}, "socket": {"type": "string"}, "listen": none, "ublk_id": none, "insecure_no_tls": {"enum": [false]}},
            "required": ["kind", "socket"],
        },
        {
            "title": "NBD on a TCP address",
            "properties": {"kind": {"enum": ["nbd"]}, "listen": {"type": "string"}, "socket": none, "ublk_id": none},
            "required": ["kind", "listen"],
        },
        {
            "title": "ublk",
            "properties": {"kind": {"enum": ["ublk"]}, "socket": none, "listen": none, "allow_remote": {"enum": [false]}, "insecure_no_tls": {"enum": [false]}},
            "required": ["kind"],
        },
    ])
}

/// A link to `operation_id` with these parameters.
fn link(operation_id: &str, description: &str, parameters: Value) -> Value {
    json!({"operationId": operation_id, "description": description, "parameters": parameters})
}

fn add_links(doc: &mut Value) {
    let pool = json!({"name": "$response.body#/name"});
    let pool_links = [
        ("GetPool", "get_pool", "The pool"),
        ("PatchPool", "patch_pool", "Change the pool"),
        ("DeletePool", "delete_pool", "Destroy the pool"),
        ("ListFrontends", "list_frontends", "The pool's frontends"),
        ("AttachFrontend", "attach_frontend", "Attach a block device to the pool"),
        ("PutPage", "put_page", "Store a page in the pool"),
        ("GetPage", "get_page", "Load a page of the pool"),
        ("DeletePage", "delete_page", "Invalidate a page of the pool"),
        ("InvalidateArea", "invalidate_area", "Invalidate every page of the pool"),
        ("Shrink", "shrink", "Shrink the pool"),
        ("ListTokens", "list_tokens", "The pool's tokens"),
        ("CreateToken", "create_token", "Make a token of the pool"),
    ];
    let pool_links: Map<String, Value> =
        pool_links.iter().map(|(name, id, what)| (name.to_string(), link(id, what, pool.clone()))).collect();
    set_links(doc, "/api/v1/pools", "post", "201", &pool_links);
    set_links(doc, "/api/v1/pools/{name}", "patch", "200", &pool_links);
    set_links(doc, "/api/v1/pools/{name}", "get", "200", &pool_links);

    let plugin = json!({"name": "$response.body#/name"});
    let plugin_links: Map<String, Value> = [
        ("GetPlugin", link("get_plugin", "The plugin and its versions", plugin.clone())),
        (
            "DeletePluginVersion",
            link(
                "delete_plugin",
                "Remove this version",
                json!({"name": "$response.body#/name", "version": "$response.body#/sha256"}),
            ),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    set_links(doc, "/api/v1/plugins", "post", "201", &plugin_links);
    set_links(doc, "/api/v1/plugins", "post", "200", &plugin_links);

    let device: Map<String, Value> = [(
        "DetachFrontend".to_string(),
        link(
            "detach_frontend",
            "Detach the device",
            json!({"name": "$response.body#/pool", "id": "$response.body#/id"}),
        ),
    )]
    .into_iter()
    .collect();
    set_links(doc, "/api/v1/pools/{name}/frontends", "post", "201", &device);

    let token: Map<String, Value> = [(
        "RevokeToken".to_string(),
        link("revoke_token", "Revoke the token", json!({"name": "$response.body#/pool", "id": "$response.body#/id"})),
    )]
    .into_iter()
    .collect();
    set_links(doc, "/api/v1/pools/{name}/tokens", "post", "201", &token);

    let page = json!({"name": "$request.path.name", "offset": "$request.path.offset"});
    let page_links: Map<String, Value> = [
        ("GetPage", link("get_page", "Load the page", page.clone())),
        ("DeletePage", link("delete_page", "Invalidate the page", page)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    set_links(doc, "/api/v1/pools/{name}/pages/{offset}", "put", "201", &page_links);
}

fn set_links(doc: &mut Value, path: &str, method: &str, status: &str, links: &Map<String, Value>) {
    let response = &mut doc["paths"][path][method]["responses"][status];
    assert!(response.is_object(), "{method} {path} has no {status} answer to link from");
    response["links"] = Value::Object(links.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_answers_401_and_503_and_every_link_names_an_operation() {
        let doc = super::super::openapi();
        let mut ids = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                for status in ["401", "503"] {
                    assert!(responses.contains_key(status), "{method} {path} lists no {status}");
                }
                if path.contains('{') {
                    assert!(
                        responses["400"]["description"].as_str().unwrap().contains("`invalid_path`"),
                        "{method} {path}"
                    );
                }
                // A path parameter is one the path names (a query declared without
                // `parameter_in = Query` shows up as a path parameter that is not there).
                for param in op["parameters"].as_array().into_iter().flatten() {
                    if param["in"] == "path" {
                        let name = param["name"].as_str().unwrap();
                        assert!(path.contains(&format!("{{{name}}}")), "{method} {path}: `{name}` is not in the path");
                    }
                }
                ids.push(op["operationId"].as_str().unwrap().to_string());
            }
        }
        let mut links = 0;
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                for response in op["responses"].as_object().unwrap().values() {
                    for link in response["links"].as_object().into_iter().flat_map(|l| l.values()) {
                        let id = link["operationId"].as_str().unwrap();
                        assert!(ids.iter().any(|i| i == id), "a link to {id}, which is no operation");
                        links += 1;
                    }
                }
            }
        }
        assert!(links >= 20, "{links} links");
        let created = &doc["paths"]["/api/v1/pools"]["post"]["responses"]["201"]["links"];
        assert_eq!(created["GetPool"]["parameters"]["name"], "$response.body#/name");
        // What the host checks of a single field is in the schema.
        let config = &doc["components"]["schemas"]["PoolConfig"]["properties"];
        assert_eq!(config["name"]["pattern"], POOL_NAME_PATTERN);
        assert_eq!(config["name"]["maxLength"], 64);
        assert_eq!(config["page_size"]["enum"], json!(tmem_api::rest::PAGE_SIZES));
        assert_eq!(config["accept_threshold_percent"]["maximum"], 100);
        assert_eq!(config["backends"]["minItems"], 1);
        // A u64 takes every u64.
        assert_eq!(config["max_pages"]["maximum"], json!(u64::MAX));
        // A PATCH's tier: an object (add, change) or null (remove).
        let tier = &doc["components"]["schemas"]["PoolPatch"]["properties"]["tier"];
        let kinds = tier["oneOf"].as_array().unwrap_or_else(|| panic!("{tier}"));
        assert!(kinds.contains(&json!({"type": "null"})), "{tier}");
        assert!(kinds.iter().any(|k| k["$ref"] == "#/components/schemas/TierConfig"), "{tier}");
        assert_eq!(doc["components"]["schemas"]["MemoryPatch"]["oneOf"].as_array().unwrap().len(), 4);
        let governor = &doc["components"]["schemas"]["GovernorPatch"];
        assert!(governor["properties"]["psi_high"].is_object() && governor["not"].is_object(), "{governor}");
        for id in BLOCKING {
            assert!(ids.iter().any(|i| i == id), "{id} is no operation");
        }
    }
}
