//! A blocking client of the REST API (`/api/v1`), over `ureq`.
//!
//! One method per route, each taking and returning the types of [`crate::rest`]. Every error
//! response of the server (an [`ErrorBody`]) becomes [`ClientError::Api`] with its status,
//! code and message; failing to reach the server is [`ClientError::Transport`]; a success
//! response that does not decode is [`ClientError::Decode`].
//!
//! Some statuses are expected outcomes rather than errors, and the methods say so in their
//! types: a rejected store is `Ok(StoreResult { outcome: "rejected", .. })`
//! ([`Client::put_page`]), an absent page is `Ok(None)` or `Ok(false)` ([`Client::get_page`],
//! [`Client::remove_page`]).
//!
//! [`Client::request`] is the low-level door: any method and path, the status and body as
//! they came, with or without the token, for probing error codes.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::rest::{
    API_PREFIX, AreaInvalidated, ErrorBody, Health, PluginInfo, PluginVersion, PoolCheck, PoolConfig, PoolInfo,
    PoolPatch, ShrinkRequest, ShrinkResult, StatsSample, StoreResult,
};
use crate::rest::{AttachRequest, CreateTokenRequest, FrontendInfo, MemoryInfo, MemoryPatch, TokenInfo};

/// The error code the server gives an absent page (`404`).
pub const PAGE_NOT_FOUND: &str = "page_not_found";

/// The code [`ClientError::Api`] carries when an error response is not an [`ErrorBody`]
/// (e.g. from a proxy in between).
pub const UNKNOWN_ERROR: &str = "unknown";

/// The largest response body read (pages are at most 2 MiB; listings are far smaller).
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong with a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The server answered with an error.
    Api {
        /// The HTTP status.
        status: u16,
        /// The machine-readable code, e.g. `pool_not_found` ([`UNKNOWN_ERROR`] when the
        /// body was not an [`ErrorBody`]).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached, or the exchange broke off.
    Transport(String),
    /// A success response whose body was not what the route promises.
    Decode(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Transport(_) | ClientError::Decode(_) => None,
        }
    }

    /// The error code of an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            ClientError::Transport(_) | ClientError::Decode(_) => None,
        }
    }

    /// The error a non-success response stands for: its [`ErrorBody`] if it has one, else
    /// (a bare status, a proxy's page) the start of its text under [`UNKNOWN_ERROR`].
    pub fn from_response(status: u16, body: &[u8]) -> ClientError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { error }) => ClientError::Api { status, code: error.code, message: error.message },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let message = if text.is_empty() {
                    format!("HTTP status {status} with no error body")
                } else {
                    text.chars().take(200).collect()
                };
                ClientError::Api { status, code: UNKNOWN_ERROR.into(), message }
            }
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Api { status, code, message } => write!(f, "{message} ({code}, HTTP {status})"),
            ClientError::Transport(message) => write!(f, "request failed: {message}"),
            ClientError::Decode(message) => write!(f, "unexpected response: {message}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// The agent settings of every [`Client`]: statuses as responses, the connect timeout, the
/// user agent.
fn agent_config() -> ureq::config::Config {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .user_agent(concat!("tmem-client/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A client of one tmem server. Cheap to clone (connections are pooled and shared).
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base_url: String,
    token: Option<String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token stays out of logs.
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:7411`), sending `token`
    /// as `Authorization: Bearer TOKEN` on authenticated routes.
    ///
    /// This client speaks plain `http://` only (ureq's TLS features are off: the host's TLS
    /// is OpenSSL's); [`Client::with_connector`] with `tmem_host::tls::https_connector` is
    /// one that speaks `https://` too.
    pub fn new(base_url: &str, token: Option<String>) -> Client {
        Client::with_agent(base_url, token, ureq::Agent::new_with_config(agent_config()))
    }

    /// [`Client::new`] whose connections `connector` makes (a chain of ureq's unversioned
    /// transport API: e.g. TCP then TLS, for `https://` URLs).
    pub fn with_connector(
        base_url: &str,
        token: Option<String>,
        connector: impl ureq::unversioned::transport::Connector,
    ) -> Client {
        let resolver = ureq::unversioned::resolver::DefaultResolver::default();
        Client::with_agent(base_url, token, ureq::Agent::with_parts(agent_config(), connector, resolver))
    }

    fn with_agent(base_url: &str, token: Option<String>, agent: ureq::Agent) -> Client {
        Client { agent, base_url: base_url.trim_end_matches('/').to_string(), token }
    }

    /// The server's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Sends `method` to `path` (which starts with `/`, query included) with an optional body
    /// as `(content type, bytes)`, with the token if `auth`; returns the status and body
    /// whatever the status. Errors only when no response came.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
        auth: bool,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let url = format!("{}{path}", self.base_url);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        if auth && let Some(token) = &self.token {
            builder = builder.header("Authorization", format!("Bearer {token}"));
        }
        let response = match body {
            Some((content_type, bytes)) => {
                let request = builder.header("Content-Type", content_type).body(bytes).map_err(invalid_request)?;
                self.agent.run(request)
            }
            None => {
                let request = builder.body(()).map_err(invalid_request)?;
                self.agent.run(request)
            }
        };
        let mut response = response.map_err(transport)?;
        let status = response.status().as_u16();
        let bytes = response.body_mut().with_config().limit(MAX_RESPONSE_BYTES).read_to_vec().map_err(transport)?;
        Ok((status, bytes))
    }

    /// `GET /healthz` (no token needed).
    pub fn health(&self) -> Result<Health, ClientError> {
        let (status, body) = self.request("GET", "/healthz", None, false)?;
        decode_success(status, &body)
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub fn metrics(&self) -> Result<String, ClientError> {
        let (status, body) = self.request("GET", "/metrics", None, true)?;
        success(status, &body)?;
        String::from_utf8(body).map_err(|e| ClientError::Decode(format!("metrics are not UTF-8: {e}")))
    }

    /// `GET /api/v1/openapi.json`: the API's OpenAPI document.
    pub fn openapi(&self) -> Result<Value, ClientError> {
        let (status, body) = self.request("GET", &format!("{API_PREFIX}/openapi.json"), None, true)?;
        decode_success(status, &body)
    }

    // ----- plugins -----

    /// `POST /api/v1/plugins[?name=NAME]`: registers a Wasm module (under its manifest's name
    /// unless `name` is given).
    pub fn upload_plugin(&self, name: Option<&str>, wasm: &[u8]) -> Result<PluginVersion, ClientError> {
        let mut path = format!("{API_PREFIX}/plugins");
        if let Some(name) = name {
            path.push_str(&format!("?name={}", encode(name)));
        }
        let (status, body) = self.request("POST", &path, Some(("application/wasm", wasm)), true)?;
        decode_success(status, &body)
    }

    /// `GET /api/v1/plugins`: every registered plugin with its versions.
    pub fn plugins(&self) -> Result<Vec<PluginInfo>, ClientError> {
        self.get_json(&format!("{API_PREFIX}/plugins"))
    }

    /// `GET /api/v1/plugins/{name}`.
    pub fn plugin(&self, name: &str) -> Result<PluginInfo, ClientError> {
        self.get_json(&format!("{API_PREFIX}/plugins/{}", encode(name)))
    }

    /// `DELETE /api/v1/plugins/{name}[?version=V]`: one version, or every version.
    pub fn remove_plugin(&self, name: &str, version: Option<&str>) -> Result<(), ClientError> {
        let mut path = format!("{API_PREFIX}/plugins/{}", encode(name));
        if let Some(version) = version {
            path.push_str(&format!("?version={}", encode(version)));
        }
        let (status, body) = self.request("DELETE", &path, None, true)?;
        success(status, &body)
    }

    // ----- pools -----

    /// `POST /api/v1/pools`.
    pub fn create_pool(&self, config: &PoolConfig) -> Result<PoolInfo, ClientError> {
        self.send_json("POST", &format!("{API_PREFIX}/pools"), config)
    }

    /// `POST /api/v1/pools?dry_run=true`: checks a config, creating nothing.
    pub fn check_pool(&self, config: &PoolConfig) -> Result<PoolCheck, ClientError> {
        self.send_json("POST", &format!("{API_PREFIX}/pools?dry_run=true"), config)
    }

    /// `GET /api/v1/stats`: every pool's statistics now.
    pub fn stats(&self) -> Result<StatsSample, ClientError> {
        self.get_json(&format!("{API_PREFIX}/stats"))
    }

    /// `GET /api/v1/memory`: the host's memory budget for pages and what is charged to it.
    pub fn memory(&self) -> Result<MemoryInfo, ClientError> {
        self.get_json(&format!("{API_PREFIX}/memory"))
    }

    /// `PATCH /api/v1/memory`: changes the host's memory budget.
    pub fn set_memory(&self, patch: &MemoryPatch) -> Result<MemoryInfo, ClientError> {
        self.send_json("PATCH", &format!("{API_PREFIX}/memory"), patch)
    }

    /// `GET /api/v1/pools`.
    pub fn pools(&self) -> Result<Vec<PoolInfo>, ClientError> {
        self.get_json(&format!("{API_PREFIX}/pools"))
    }

    /// `GET /api/v1/pools/{name}`.
    pub fn pool(&self, name: &str) -> Result<PoolInfo, ClientError> {
        self.get_json(&pool_path(name))
    }

    /// `PATCH /api/v1/pools/{name}`: changes settings, or hot swaps the chain.
    pub fn update_pool(&self, name: &str, patch: &PoolPatch) -> Result<PoolInfo, ClientError> {
        self.send_json("PATCH", &pool_path(name), patch)
    }

    /// `DELETE /api/v1/pools/{name}`.
    pub fn remove_pool(&self, name: &str) -> Result<(), ClientError> {
        let (status, body) = self.request("DELETE", &pool_path(name), None, true)?;
        success(status, &body)
    }

    /// `POST /api/v1/pools/{name}/shrink`: brings the pool down to at most `target_pages`.
    pub fn shrink(&self, pool: &str, target_pages: u64) -> Result<ShrinkResult, ClientError> {
        self.send_json("POST", &format!("{}/shrink", pool_path(pool)), &ShrinkRequest { target_pages })
    }

    // ----- frontends -----

    /// `POST /api/v1/pools/{pool}/frontends`: attaches a block device (an NBD server) to the
    /// pool; the answer says how clients reach it.
    pub fn attach_frontend(&self, pool: &str, request: &AttachRequest) -> Result<FrontendInfo, ClientError> {
        self.send_json("POST", &format!("{}/frontends", pool_path(pool)), request)
    }

    /// `GET /api/v1/pools/{pool}/frontends`: every frontend of the pool (socket connections
    /// and block devices).
    pub fn frontends(&self, pool: &str) -> Result<Vec<FrontendInfo>, ClientError> {
        self.get_json(&format!("{}/frontends", pool_path(pool)))
    }

    /// `DELETE /api/v1/pools/{pool}/frontends/{id}`: detaches a block device (its pages leave
    /// the pool).
    pub fn detach_frontend(&self, pool: &str, id: &str) -> Result<(), ClientError> {
        let (status, body) =
            self.request("DELETE", &format!("{}/frontends/{}", pool_path(pool), encode(id)), None, true)?;
        success(status, &body)
    }

    // ----- tokens -----

    /// `POST /api/v1/pools/{pool}/tokens`: makes a scoped token; the answer's `token` is the
    /// only time it is shown.
    pub fn create_token(&self, pool: &str, request: &CreateTokenRequest) -> Result<TokenInfo, ClientError> {
        self.send_json("POST", &format!("{}/tokens", pool_path(pool)), request)
    }

    /// `GET /api/v1/pools/{pool}/tokens`: the pool's scoped tokens (without the tokens).
    pub fn tokens(&self, pool: &str) -> Result<Vec<TokenInfo>, ClientError> {
        self.get_json(&format!("{}/tokens", pool_path(pool)))
    }

    /// `DELETE /api/v1/pools/{pool}/tokens/{id}`: revokes a token.
    pub fn revoke_token(&self, pool: &str, id: &str) -> Result<(), ClientError> {
        let (status, body) =
            self.request("DELETE", &format!("{}/tokens/{}", pool_path(pool), encode(id)), None, true)?;
        success(status, &body)
    }

    // ----- pages -----

    /// `PUT /api/v1/pools/{pool}/pages/{offset}`: stores a page. A rejected store (`507`) is
    /// `Ok` with outcome `rejected` and the reason: the frontswap contract lets a pool refuse
    /// any store, so it is an outcome, not an error.
    pub fn put_page(&self, pool: &str, offset: u64, page: &[u8]) -> Result<StoreResult, ClientError> {
        let (status, body) =
            self.request("PUT", &page_path(pool, offset), Some(("application/octet-stream", page)), true)?;
        if status == 507 {
            if let Ok(result) = serde_json::from_slice::<StoreResult>(&body) {
                return Ok(result);
            }
            if let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(&body) {
                return Ok(StoreResult { outcome: "rejected".into(), reason: Some(error.code) });
            }
        }
        decode_success(status, &body)
    }

    /// `GET /api/v1/pools/{pool}/pages/{offset}`: the page's bytes, or `None` if the pool
    /// does not hold it.
    pub fn get_page(&self, pool: &str, offset: u64) -> Result<Option<Vec<u8>>, ClientError> {
        let (status, body) = self.request("GET", &page_path(pool, offset), None, true)?;
        match success(status, &body) {
            Ok(()) => Ok(Some(body)),
            Err(e) if e.code() == Some(PAGE_NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `DELETE /api/v1/pools/{pool}/pages/{offset}`: whether the page was there.
    pub fn remove_page(&self, pool: &str, offset: u64) -> Result<bool, ClientError> {
        let (status, body) = self.request("DELETE", &page_path(pool, offset), None, true)?;
        match success(status, &body) {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some(PAGE_NOT_FOUND) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `DELETE /api/v1/pools/{pool}/pages`: drops every page of the pool (frontswap's
    /// invalidate_area).
    pub fn invalidate_area(&self, pool: &str) -> Result<AreaInvalidated, ClientError> {
        let (status, body) = self.request("DELETE", &format!("{}/pages", pool_path(pool)), None, true)?;
        decode_success(status, &body)
    }

    // ----- plumbing -----

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, body) = self.request("GET", path, None, true)?;
        decode_success(status, &body)
    }

    fn send_json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        value: &impl Serialize,
    ) -> Result<T, ClientError> {
        let json =
            serde_json::to_vec(value).map_err(|e| ClientError::Decode(format!("cannot encode the request: {e}")))?;
        let (status, body) = self.request(method, path, Some(("application/json", &json)), true)?;
        decode_success(status, &body)
    }
}

/// `Ok` for a 2xx status, else the error the body describes.
fn success(status: u16, body: &[u8]) -> Result<(), ClientError> {
    if (200..300).contains(&status) { Ok(()) } else { Err(ClientError::from_response(status, body)) }
}

/// The JSON body of a 2xx response, or the error of any other.
fn decode_success<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, ClientError> {
    success(status, body)?;
    serde_json::from_slice(body).map_err(|e| {
        let start: String = String::from_utf8_lossy(body).chars().take(120).collect();
        ClientError::Decode(format!("HTTP {status} body does not decode ({e}): {start}"))
    })
}

fn transport(error: ureq::Error) -> ClientError {
    match error {
        // Just the OS's words, e.g. "Connection refused (os error 111)".
        ureq::Error::Io(io) => ClientError::Transport(io.to_string()),
        ureq::Error::TlsRequired => ClientError::Transport(
            "an https:// URL needs a client made with Client::with_connector and a TLS connector".into(),
        ),
        other => ClientError::Transport(other.to_string()),
    }
}

fn invalid_request(error: ureq::http::Error) -> ClientError {
    ClientError::Transport(format!("invalid request: {error}"))
}

fn pool_path(name: &str) -> String {
    format!("{API_PREFIX}/pools/{}", encode(name))
}

fn page_path(pool: &str, offset: u64) -> String {
    format!("{}/pages/{offset}", pool_path(pool))
}

/// Percent-encodes a path segment or query value: RFC 3986 unreserved characters stay (the
/// whole alphabet of pool and plugin names), everything else is escaped, and so are the dots
/// of `.` and `..`, so a name can never walk the path.
pub fn encode(segment: &str) -> String {
    if segment == "." || segment == ".." {
        return segment.replace('.', "%2E");
    }
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_becomes_an_api_error() {
        let body = br#"{"error":{"code":"pool_not_found","message":"no pool named x"}}"#;
        let e = ClientError::from_response(404, body);
        assert_eq!(
            e,
            ClientError::Api { status: 404, code: "pool_not_found".into(), message: "no pool named x".into() }
        );
        assert_eq!(e.status(), Some(404));
        assert_eq!(e.code(), Some("pool_not_found"));
        assert_eq!(e.to_string(), "no pool named x (pool_not_found, HTTP 404)");
    }

    #[test]
    fn a_foreign_error_body_keeps_its_status_and_text() {
        let e = ClientError::from_response(502, b"<html>Bad Gateway</html>\n");
        assert_eq!(e.code(), Some(UNKNOWN_ERROR));
        assert_eq!(e.to_string(), "<html>Bad Gateway</html> (unknown, HTTP 502)");
        let e = ClientError::from_response(500, b"");
        assert_eq!(e.to_string(), "HTTP status 500 with no error body (unknown, HTTP 500)");
        assert_eq!(ClientError::Transport("refused".into()).status(), None);
    }

    #[test]
    fn success_bodies_decode_or_say_why_not() {
        let health: Health =
            decode_success(200, br#"{"status":"ok","version":"0.1.0","pools":2,"curr_pages":7}"#).unwrap();
        assert_eq!(health.pools, 2);
        let err = decode_success::<Health>(200, b"not json").unwrap_err();
        assert!(matches!(&err, ClientError::Decode(m) if m.contains("not json")), "{err}");
        let err = decode_success::<Health>(401, br#"{"error":{"code":"unauthorized","message":"no token"}}"#);
        assert_eq!(err.unwrap_err().code(), Some("unauthorized"));
    }

    #[test]
    fn names_are_encoded_as_single_segments() {
        assert_eq!(encode("demo-1_a.b"), "demo-1_a.b");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
        assert_eq!(encode(".."), "%2E%2E");
        assert_eq!(encode("."), "%2E");
        assert_eq!(encode("é"), "%C3%A9");
        assert_eq!(page_path("p q", 42), "/api/v1/pools/p%20q/pages/42");
    }

    #[test]
    fn the_base_url_loses_its_trailing_slash() {
        let client = Client::new("http://127.0.0.1:7411/", Some("secret".into()));
        assert_eq!(client.base_url(), "http://127.0.0.1:7411");
        assert!(!format!("{client:?}").contains("secret"));
    }

    #[test]
    fn an_unreachable_server_is_a_transport_error() {
        // Port 1 on loopback: nothing listens there.
        let client = Client::new("http://127.0.0.1:1", None);
        let err = client.health().unwrap_err();
        assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
    }

    #[test]
    fn a_plain_client_at_an_https_url_says_it_needs_a_connector() {
        // A listener that accepts (its backlog) and never answers: the refusal is the client's.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = Client::new(&format!("https://{}", listener.local_addr().unwrap()), None);
        let err = client.health().unwrap_err();
        assert!(err.to_string().contains("Client::with_connector"), "{err}");
    }
}
