//! A loaded plugin: validated against the ABI, compiled, its manifest read. And every way a
//! module can be refused at load time, each with a message that says what is wrong.

use std::sync::Arc;

use tmem_api::abi::{self, export, import};
use tmem_api::manifest::{Manifest, PluginKind};
use wasmtime::{ExternType, FuncType, InstancePre, Module, ValType};

use super::instance::PluginState;

/// Why a module was refused. Nothing of a refused module stays registered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PluginLoadError {
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly module: {0}")]
    NotWasm(String),
    /// A component, not a core module.
    #[error("this is a WebAssembly component; tmem plugins are core modules (plugin ABI v{})", abi::ABI_VERSION)]
    IsComponent,
    /// The bytes start like Wasm but do not validate or compile.
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    /// No ABI marker export: not a tmem plugin.
    #[error("not a tmem plugin: it has no `{}` export (build it with tmem-sdk)", export::ABI_MARKER)]
    MissingAbiMarker,
    /// Built for another ABI version.
    #[error("plugin is built for plugin ABI v{found}, but this host speaks v{}", abi::ABI_VERSION)]
    WrongAbi {
        /// The version the module's marker names.
        found: String,
    },
    /// A required export is absent or has the wrong type.
    #[error("plugin export `{name}` {problem}")]
    BadExport {
        /// The export's name.
        name: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// An import the host does not provide (or not to this kind of plugin).
    #[error("plugin imports `{module}::{name}`, which {why}")]
    ForbiddenImport {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
        /// Why it is refused.
        why: String,
    },
    /// The manifest could not be read or makes no sense.
    #[error("plugin manifest: {0}")]
    BadManifest(String),
    /// The module is larger than the host accepts.
    #[error("plugin is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The module's size.
        size: usize,
        /// The host's limit.
        limit: usize,
    },
}

/// A plugin module the host has accepted: one version of one plugin.
#[derive(Clone)]
pub struct PluginModule {
    inner: Arc<Inner>,
}

struct Inner {
    sha256: String,
    size: usize,
    manifest: Manifest,
    pre: InstancePre<PluginState>,
}

impl std::fmt::Debug for PluginModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginModule")
            .field("name", &self.inner.manifest.name)
            .field("version", &self.inner.manifest.version)
            .field("sha256", &self.inner.sha256)
            .finish()
    }
}

impl PluginModule {
    pub(crate) fn new(sha256: String, size: usize, manifest: Manifest, pre: InstancePre<PluginState>) -> Self {
        PluginModule { inner: Arc::new(Inner { sha256, size, manifest, pre }) }
    }

    /// Hex sha256 of the module bytes: its identity.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    /// Size of the module in bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// What the plugin says about itself.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// Filter or store.
    pub fn kind(&self) -> PluginKind {
        self.inner.manifest.kind
    }

    pub(crate) fn pre(&self) -> &InstancePre<PluginState> {
        &self.inner.pre
    }
}

/// Checks the magic and layer of `bytes` before anything compiles them.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), PluginLoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(PluginLoadError::NotWasm("it does not start with the magic bytes \\0asm".into()));
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Ok(()),
        [_, _, 1, 0] => Err(PluginLoadError::IsComponent),
        _ => Err(PluginLoadError::NotWasm(format!("unknown binary version {:?}", &bytes[4..8]))),
    }
}

fn sig(params: &[ValType], results: &[ValType]) -> String {
    let name = |v: &ValType| match v {
        ValType::I32 => "i32",
        ValType::I64 => "i64",
        ValType::F32 => "f32",
        ValType::F64 => "f64",
        _ => "ref",
    };
    let p: Vec<&str> = params.iter().map(name).collect();
    let r: Vec<&str> = results.iter().map(name).collect();
    format!("({}) -> ({})", p.join(", "), r.join(", "))
}

fn func_sig(ty: &FuncType) -> String {
    let params: Vec<ValType> = ty.params().collect();
    let results: Vec<ValType> = ty.results().collect();
    sig(&params, &results)
}

use ValType::{I32, I64};

/// Exports every plugin must have, with their signatures.
const COMMON_EXPORTS: &[(&str, &[ValType], &[ValType])] = &[
    (export::ABI_MARKER, &[], &[]),
    (export::MANIFEST, &[], &[I64]),
    (export::ALLOC, &[I32], &[I32]),
    (export::INIT, &[I32, I32, I32], &[I64]),
    (export::IO_IN, &[], &[I32]),
    (export::IO_OUT, &[], &[I32]),
];

const FILTER_EXPORTS: &[(&str, &[ValType], &[ValType])] =
    &[(export::FILTER_ENCODE, &[I32], &[I64]), (export::FILTER_DECODE, &[I32], &[I64])];

const STORE_EXPORTS: &[(&str, &[ValType], &[ValType])] = &[
    (export::STORE_PUT, &[I64, I32], &[I64]),
    (export::STORE_GET, &[I64], &[I64]),
    (export::STORE_DELETE, &[I64], &[I64]),
    (export::STORE_CLEAR, &[], &[I64]),
];

/// Host imports with their signatures, and whether only stores may import them.
const HOST_IMPORTS: &[(&str, &[ValType], &[ValType], bool)] = &[
    (import::LOG, &[I32, I32, I32], &[], false),
    (import::PAGES_PUT, &[I64, I32, I32], &[I32], true),
    (import::PAGES_GET, &[I64, I32, I32], &[I32], true),
    (import::PAGES_DELETE, &[I64], &[I32], true),
    (import::PAGES_CLEAR, &[], &[], true),
    (import::NET_CONNECT, &[I32, I32], &[I32], true),
    (import::NET_SEND, &[I32, I32, I32], &[I32], true),
    (import::NET_RECV, &[I32, I32, I32], &[I32], true),
    (import::NET_CLOSE, &[I32], &[], true),
];

/// Checks the ABI marker, the common exports and every import. The kind-specific exports are
/// checked by [`check_kind`] once the manifest says which kind the plugin is.
pub(crate) fn check_shape(module: &Module) -> Result<(), PluginLoadError> {
    let markers: Vec<String> =
        module.exports().filter_map(|e| e.name().strip_prefix(abi::ABI_MARKER_PREFIX).map(str::to_owned)).collect();
    if !markers.iter().any(|v| *v == abi::ABI_VERSION.to_string()) {
        return Err(match markers.into_iter().next() {
            Some(found) => PluginLoadError::WrongAbi { found },
            None => PluginLoadError::MissingAbiMarker,
        });
    }
    check_exports(module, COMMON_EXPORTS)?;
    match module.get_export(export::MEMORY) {
        Some(ExternType::Memory(_)) => {}
        _ => {
            return Err(PluginLoadError::BadExport {
                name: export::MEMORY,
                problem: "is missing or not a memory".into(),
            });
        }
    }
    for imp in module.imports() {
        let forbidden = |why: String| PluginLoadError::ForbiddenImport {
            module: imp.module().to_owned(),
            name: imp.name().to_owned(),
            why,
        };
        if imp.module() != abi::HOST_MODULE {
            let hint = if imp.module().starts_with("wasi") {
                "is WASI; tmem plugins get no WASI (build for wasm32-unknown-unknown)".to_string()
            } else {
                format!("the host does not provide (only `{}::*` imports exist)", abi::HOST_MODULE)
            };
            return Err(forbidden(hint));
        }
        let Some((_, params, results, _)) = HOST_IMPORTS.iter().find(|(n, ..)| *n == imp.name()) else {
            return Err(forbidden("the host does not provide".into()));
        };
        match imp.ty() {
            ExternType::Func(ty) if func_sig(&ty) == sig(params, results) => {}
            ExternType::Func(ty) => {
                return Err(forbidden(format!(
                    "has signature {} in ABI v{} but the plugin declares {}",
                    sig(params, results),
                    abi::ABI_VERSION,
                    func_sig(&ty)
                )));
            }
            _ => return Err(forbidden("must be a function".into())),
        }
    }
    Ok(())
}

/// Checks the exports and imports that depend on the plugin's kind.
pub(crate) fn check_kind(module: &Module, manifest: &Manifest) -> Result<(), PluginLoadError> {
    match manifest.kind {
        PluginKind::Filter => {
            check_exports(module, FILTER_EXPORTS)?;
            if !manifest.capabilities.is_empty() {
                return Err(PluginLoadError::BadManifest(
                    "a filter asks for capabilities; only stores may (filters see pages, never storage or the network)"
                        .into(),
                ));
            }
            if let Some(imp) =
                module.imports().find(|i| HOST_IMPORTS.iter().any(|(n, .., store_only)| *store_only && *n == i.name()))
            {
                return Err(PluginLoadError::ForbiddenImport {
                    module: imp.module().to_owned(),
                    name: imp.name().to_owned(),
                    why: "only store plugins may use (this plugin is a filter)".into(),
                });
            }
            Ok(())
        }
        PluginKind::Store => {
            check_exports(module, STORE_EXPORTS)?;
            let wants_network = manifest.capabilities.contains(&tmem_api::manifest::Capability::Network);
            if let Some(imp) = module.imports().find(|i| i.name().starts_with("net_")).filter(|_| !wants_network) {
                return Err(PluginLoadError::ForbiddenImport {
                    module: imp.module().to_owned(),
                    name: imp.name().to_owned(),
                    why: "only plugins whose manifest asks for the network capability may use".into(),
                });
            }
            Ok(())
        }
    }
}

fn check_exports(module: &Module, wanted: &[(&'static str, &[ValType], &[ValType])]) -> Result<(), PluginLoadError> {
    for (name, params, results) in wanted {
        match module.get_export(name) {
            Some(ExternType::Func(ty)) if func_sig(&ty) == sig(params, results) => {}
            Some(ExternType::Func(ty)) => {
                return Err(PluginLoadError::BadExport {
                    name,
                    problem: format!(
                        "has signature {}, ABI v{} says {}",
                        func_sig(&ty),
                        abi::ABI_VERSION,
                        sig(params, results)
                    ),
                });
            }
            Some(_) => return Err(PluginLoadError::BadExport { name, problem: "is not a function".into() }),
            None => return Err(PluginLoadError::BadExport { name, problem: "is missing".into() }),
        }
    }
    Ok(())
}

/// Parses and checks the manifest text a probe instance returned.
pub(crate) fn parse_manifest(text: &[u8]) -> Result<Manifest, PluginLoadError> {
    let manifest: Manifest = serde_json::from_slice(text).map_err(|e| PluginLoadError::BadManifest(e.to_string()))?;
    if manifest.abi != abi::ABI_VERSION {
        return Err(PluginLoadError::WrongAbi { found: manifest.abi.to_string() });
    }
    let name_ok = !manifest.name.is_empty()
        && manifest.name.len() <= 64
        && manifest.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        return Err(PluginLoadError::BadManifest(format!(
            "name {:?} must be 1-64 characters of ASCII letters, digits, '-' and '_'",
            manifest.name
        )));
    }
    Ok(manifest)
}
