//! The plugin manifest: what a plugin says about itself (kind, ABI version, config keys), and
//! the checking of a pool's config for a plugin against it.
//!
//! The guest SDK builds a [`Manifest`] from `const` data and serializes it as JSON behind the
//! `tmem_manifest` export; the host reads it when a module is loaded and checks every pool
//! config against it before any page arrives ([`Manifest::resolve_config`]).

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A string that is `&'static` in the guest (built in `const` context) and owned in the host.
pub type Text = Cow<'static, str>;

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin ABI version the module was built for ([`crate::abi::ABI_VERSION`]).
    pub abi: u32,
    /// Short name, e.g. `zstd`.
    pub name: Text,
    /// The plugin's own version (its crate version, for SDK-built plugins).
    pub version: Text,
    /// Filter or store.
    pub kind: PluginKind,
    /// One line for operators.
    pub description: Text,
    /// The config keys the plugin accepts; any other key is refused.
    pub config: Cow<'static, [ConfigKey]>,
    /// Capabilities beyond the sandbox the plugin needs; a pool must grant each one
    /// explicitly (`"grants"` on the backend) or the pool is refused. Absent: none.
    #[serde(default, skip_serializing_if = "<[Capability]>::is_empty")]
    pub capabilities: Cow<'static, [Capability]>,
}

/// A capability a plugin may need and a pool may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Stores only: the host page store of the pool is persistent — kept in the pool's own
    /// database under the host's data dir, surviving restarts and crashes. The plugin sees
    /// only its pool's pages, never a path or any other file.
    Storage,
    /// Stores only: TCP connections to exactly the endpoints listed in the plugin's config
    /// key `endpoints`, each operation bounded by its `timeout_ms` (see `abi`).
    Network,
}

impl Capability {
    /// Every capability, for messages.
    pub const ALL: [Capability; 2] = [Capability::Storage, Capability::Network];

    /// The name in manifests and pool configs.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Storage => "storage",
            Capability::Network => "network",
        }
    }

    /// The capability of that name.
    pub fn from_name(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The two kinds of plugin in a backend chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// Transforms pages on the way to the store and back (e.g. compression).
    Filter,
    /// Keeps encoded pages under their offsets; ends every chain.
    Store,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Filter => "filter",
            PluginKind::Store => "store",
        })
    }
}

/// One config key a plugin accepts. (Unknown fields cannot be denied here: serde does not
/// support that together with `flatten`; the tagged [`ConfigValueKind`] denies them.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigKey {
    /// The key in the pool's config object.
    pub key: Text,
    /// What one line of documentation says about it.
    pub doc: Text,
    /// Its type, range and default.
    #[serde(flatten)]
    pub value: ConfigValueKind,
}

/// The type of a config value, with its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConfigValueKind {
    /// A whole number in `min..=max`.
    Integer {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
        /// Used when the pool config leaves the key out.
        default: i64,
    },
    /// `true` or `false`.
    Bool {
        /// Used when the pool config leaves the key out.
        default: bool,
    },
    /// One string out of a fixed set.
    Enum {
        /// The accepted values.
        values: Cow<'static, [Text]>,
        /// Used when the pool config leaves the key out.
        default: Text,
    },
    /// A list of strings (e.g. endpoints); empty by default.
    StringList,
    /// A secret string (a token): empty by default, never shown back by the API.
    Secret,
}

/// Why a pool's config for a plugin was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Manifest {
    /// Checks a pool's config for this plugin and returns it complete: every declared key
    /// present (defaults filled in), no undeclared key, every value of its declared type and
    /// range. `config` may be `null` (all defaults) or an object.
    pub fn resolve_config(&self, config: &Value) -> Result<Map<String, Value>, ConfigError> {
        let given = match config {
            Value::Null => Map::new(),
            Value::Object(map) => map.clone(),
            other => {
                return Err(ConfigError(format!("config for plugin '{}' must be an object, not {other}", self.name)));
            }
        };
        if let Some(unknown) = given.keys().find(|k| !self.config.iter().any(|c| c.key == **k)) {
            let known: Vec<&str> = self.config.iter().map(|c| c.key.as_ref()).collect();
            return Err(ConfigError(format!(
                "plugin '{}' has no config key '{unknown}' (it accepts: {})",
                self.name,
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        }
        let mut resolved = Map::new();
        for key in self.config.iter() {
            let value = match given.get(key.key.as_ref()) {
                Some(value) => key.check(&self.name, value)?,
                None => key.value.default_value(),
            };
            resolved.insert(key.key.to_string(), value);
        }
        Ok(resolved)
    }
}

impl ConfigKey {
    fn check(&self, plugin: &str, value: &Value) -> Result<Value, ConfigError> {
        let bad = |expected: String| {
            ConfigError(format!("plugin '{plugin}' config key '{}' must be {expected}, got {value}", self.key))
        };
        match &self.value {
            ConfigValueKind::Integer { min, max, .. } => match value.as_i64() {
                Some(n) if (*min..=*max).contains(&n) => Ok(Value::from(n)),
                _ => Err(bad(format!("an integer from {min} to {max}"))),
            },
            ConfigValueKind::Bool { .. } => match value {
                Value::Bool(_) => Ok(value.clone()),
                _ => Err(bad("true or false".into())),
            },
            ConfigValueKind::Enum { values, .. } => match value.as_str() {
                Some(s) if values.iter().any(|v| v == s) => Ok(value.clone()),
                _ => Err(bad(format!("one of {}", values.join(", ")))),
            },
            ConfigValueKind::StringList => match value.as_array() {
                Some(items) if items.iter().all(Value::is_string) => Ok(value.clone()),
                _ => Err(bad("a list of strings".into())),
            },
            ConfigValueKind::Secret => match value {
                Value::String(_) => Ok(value.clone()),
                _ => Err(ConfigError(format!("plugin '{plugin}' config key '{}' must be a string", self.key))),
            },
        }
    }
}

impl ConfigValueKind {
    /// The value a pool gets when its config leaves the key out.
    pub fn default_value(&self) -> Value {
        match self {
            ConfigValueKind::Integer { default, .. } => Value::from(*default),
            ConfigValueKind::Bool { default } => Value::from(*default),
            ConfigValueKind::Enum { default, .. } => Value::from(default.as_ref()),
            ConfigValueKind::StringList => Value::Array(Vec::new()),
            ConfigValueKind::Secret => Value::String(String::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEYS: &[ConfigKey] = &[
        ConfigKey {
            key: Cow::Borrowed("level"),
            doc: Cow::Borrowed("zstd level"),
            value: ConfigValueKind::Integer { min: 1, max: 22, default: 3 },
        },
        ConfigKey {
            key: Cow::Borrowed("on_incompressible"),
            doc: Cow::Borrowed("what to do"),
            value: ConfigValueKind::Enum {
                values: Cow::Borrowed(&[Cow::Borrowed("reject"), Cow::Borrowed("store_raw")]),
                default: Cow::Borrowed("reject"),
            },
        },
    ];

    fn manifest() -> Manifest {
        Manifest {
            abi: 1,
            name: "zstd".into(),
            version: "1.0.0".into(),
            kind: PluginKind::Filter,
            description: "test".into(),
            config: Cow::Borrowed(KEYS),
            capabilities: Cow::Borrowed(&[]),
        }
    }

    #[test]
    fn defaults_fill_missing_keys() {
        let resolved = manifest().resolve_config(&json!({"level": 5})).unwrap();
        assert_eq!(Value::Object(resolved), json!({"level": 5, "on_incompressible": "reject"}));
        let resolved = manifest().resolve_config(&Value::Null).unwrap();
        assert_eq!(resolved["level"], json!(3));
    }

    #[test]
    fn unknown_keys_wrong_types_and_ranges_are_refused_with_the_reason() {
        let m = manifest();
        let err = m.resolve_config(&json!({"levle": 5})).unwrap_err().0;
        assert!(err.contains("no config key 'levle'") && err.contains("level, on_incompressible"), "{err}");
        let err = m.resolve_config(&json!({"level": 99})).unwrap_err().0;
        assert!(err.contains("from 1 to 22"), "{err}");
        let err = m.resolve_config(&json!({"level": "3"})).unwrap_err().0;
        assert!(err.contains("an integer"), "{err}");
        let err = m.resolve_config(&json!({"on_incompressible": "drop"})).unwrap_err().0;
        assert!(err.contains("one of reject, store_raw"), "{err}");
        let err = m.resolve_config(&json!([1])).unwrap_err().0;
        assert!(err.contains("must be an object"), "{err}");
    }

    #[test]
    fn manifest_json_round_trips() {
        let m = manifest();
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.contains(r#""type":"integer""#), "{text}");
        assert!(!text.contains("capabilities"), "no capabilities, no field: {text}");
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
        let storage = Manifest { capabilities: Cow::Borrowed(&[Capability::Storage]), ..m };
        let text = serde_json::to_string(&storage).unwrap();
        assert!(text.contains(r#""capabilities":["storage"]"#), "{text}");
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), storage);
    }
}
