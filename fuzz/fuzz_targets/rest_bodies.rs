//! The JSON bodies the host decodes: every REST request body (`PoolConfig`, `PoolPatch`,
//! `AttachRequest`, `ShrinkRequest`, `MemoryPatch`), a plugin's `Manifest` (read from a
//! module the host loads) and `ErrorBody` (what the client decodes). Each accepted body
//! serializes and parses back to an equal value; every backend config in an accepted body goes
//! through `Manifest::resolve_config` (the check `api` owns), which must be idempotent.

#![no_main]

use std::borrow::Cow;
use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tmem_api::manifest::{ConfigKey, ConfigValueKind, Manifest, PluginKind};
use tmem_api::rest::{AttachRequest, BackendRequest, ErrorBody, MemoryPatch, PoolConfig, PoolPatch, ShrinkRequest};

fuzz_target!(|data: &[u8]| {
    let manifest = fixed_manifest();
    if let Some(config) = round_trip::<PoolConfig>(data) {
        resolve_all(&manifest, &config.backends);
    }
    if let Some(patch) = round_trip::<PoolPatch>(data) {
        resolve_all(&manifest, patch.backends.as_deref().unwrap_or_default());
    }
    round_trip::<AttachRequest>(data);
    round_trip::<ShrinkRequest>(data);
    round_trip::<MemoryPatch>(data);
    round_trip::<ErrorBody>(data);
    if let Some(fuzzed) = round_trip::<Manifest>(data) {
        let defaults = fuzzed.resolve_config(&Value::Null).expect("a null config takes every default");
        assert!(defaults.keys().all(|k| fuzzed.config.iter().any(|c| c.key == **k)), "only declared keys");
    }
    // Any JSON value as one backend's config.
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        resolve(&manifest, &value);
    }
});

/// Parses `data` as a `T`; when accepted, it serializes and parses back to an equal value.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(data).ok()?;
    let text = serde_json::to_vec(&value).expect("an accepted body serializes");
    let again: T = serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!("{} does not parse back ({e}): {}", std::any::type_name::<T>(), String::from_utf8_lossy(&text))
    });
    assert_eq!(again, value, "{} round trip", std::any::type_name::<T>());
    Some(value)
}

fn resolve_all(manifest: &Manifest, backends: &[BackendRequest]) {
    for backend in backends {
        resolve(manifest, &backend.config);
    }
}

/// A resolved config is complete and resolves to itself.
fn resolve(manifest: &Manifest, config: &Value) {
    let Ok(resolved) = manifest.resolve_config(config) else { return };
    assert_eq!(resolved.len(), manifest.config.len(), "every declared key, once");
    let again = manifest.resolve_config(&Value::Object(resolved.clone())).expect("a resolved config is valid");
    assert_eq!(again, resolved, "resolving is idempotent");
}

/// A plugin with one config key of every kind.
fn fixed_manifest() -> Manifest {
    let key = |key: &'static str, value| ConfigKey { key: Cow::Borrowed(key), doc: Cow::Borrowed(""), value };
    Manifest {
        abi: 1,
        name: "fuzz".into(),
        version: "1".into(),
        kind: PluginKind::Store,
        description: String::new().into(),
        config: Cow::Owned(vec![
            key("level", ConfigValueKind::Integer { min: -5, max: 22, default: 3 }),
            key("verify", ConfigValueKind::Bool { default: false }),
            key(
                "mode",
                ConfigValueKind::Enum { values: Cow::Owned(vec!["a".into(), "b".into()]), default: "a".into() },
            ),
            key("endpoints", ConfigValueKind::StringList),
            key("token", ConfigValueKind::Secret),
        ]),
        capabilities: Cow::Borrowed(&[]),
    }
}
