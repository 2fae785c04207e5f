//! `const` constructors for the config keys a plugin declares in `CONFIG`.
//!
//! ```
//! use tmem_sdk::{ConfigKey, config};
//! const CONFIG: &[ConfigKey] = &[
//!     config::integer("level", "compression level", 1, 22, 3),
//!     tmem_sdk::one_of!("mode", "what to do", ["fast", "small"], "fast"),
//!     config::boolean("verify", "decode after encode", false),
//! ];
//! ```

use std::borrow::Cow;

use tmem_api::manifest::{ConfigKey, ConfigValueKind};

/// A whole number in `min..=max`, `default` when the pool leaves it out.
pub const fn integer(key: &'static str, doc: &'static str, min: i64, max: i64, default: i64) -> ConfigKey {
    ConfigKey {
        key: Cow::Borrowed(key),
        doc: Cow::Borrowed(doc),
        value: ConfigValueKind::Integer { min, max, default },
    }
}

/// `true` or `false`.
pub const fn boolean(key: &'static str, doc: &'static str, default: bool) -> ConfigKey {
    ConfigKey { key: Cow::Borrowed(key), doc: Cow::Borrowed(doc), value: ConfigValueKind::Bool { default } }
}

/// One string out of a fixed set: `one_of!("key", "doc", ["a", "b"], "a")`, usable in `const`.
#[macro_export]
macro_rules! one_of {
    ($key:expr, $doc:expr, [$($value:expr),+ $(,)?], $default:expr) => {
        $crate::ConfigKey {
            key: ::std::borrow::Cow::Borrowed($key),
            doc: ::std::borrow::Cow::Borrowed($doc),
            value: $crate::ConfigValueKind::Enum {
                values: ::std::borrow::Cow::Borrowed(&[$(::std::borrow::Cow::Borrowed($value)),+]),
                default: ::std::borrow::Cow::Borrowed($default),
            },
        }
    };
}

/// A list of strings, empty by default.
pub const fn string_list(key: &'static str, doc: &'static str) -> ConfigKey {
    ConfigKey { key: Cow::Borrowed(key), doc: Cow::Borrowed(doc), value: ConfigValueKind::StringList }
}

/// A secret string key (a token): empty by default; the host never shows its value back.
pub const fn secret(key: &'static str, doc: &'static str) -> ConfigKey {
    ConfigKey { key: Cow::Borrowed(key), doc: Cow::Borrowed(doc), value: ConfigValueKind::Secret }
}
