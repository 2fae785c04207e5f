//! What the client commands print: the server's JSON in `--json` mode, else human views —
//! aligned tables, `key: value` fields, human sizes and durations — of plugins, pools and pages.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Write};

use serde::Serialize;
use serde_json::{Map, Value};
use tmem_api::manifest::{ConfigKey, ConfigValueKind};
use tmem_api::rest::{BackendInfo, Durability, PluginInfo, PluginVersion, PoolInfo, StoreResult};

use super::CliError;
use super::commands::SwapDevice;

// ----- output -----

/// Prints `value` as JSON in `--json` mode, else `human(value)`.
pub fn show<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T) -> String) -> Result<(), CliError> {
    if json {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| CliError::Message(format!("cannot print the response as JSON: {e}")))?;
        emit(&format!("{text}\n"))
    } else {
        emit(&human(value))
    }
}

/// Prints a confirmation (not in `--json` mode: an empty response has no JSON).
pub fn say(json: bool, line: &str) -> Result<(), CliError> {
    if json { Ok(()) } else { emit(&format!("{line}\n")) }
}

/// Writes to standard output; a closed pipe (`| head`) is not an error worth a message.
fn emit(text: &str) -> Result<(), CliError> {
    write_stdout(text.as_bytes())
}

/// Writes `bytes` to standard output, as [`emit`] does text.
pub fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Message(format!("cannot write to standard output: {e}"))),
    }
}

// ----- human output -----

/// Column alignment in a [`Table`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Columns of text aligned for a terminal, with a header row.
struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(columns: &[(&'static str, Align)]) -> Table {
        Table { columns: columns.to_vec(), rows: Vec::new() }
    }

    fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let header: Vec<String> = self.columns.iter().map(|(name, _)| name.to_string()).collect();
        let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| lines.iter().map(|cells| cells.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for cells in lines {
            let mut line = String::new();
            for (i, (cell, (_, align))) in cells.iter().zip(&self.columns).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[i] - cell.chars().count());
                match align {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines with the values aligned.
#[derive(Default)]
struct Fields {
    lines: Vec<(String, String)>,
}

impl Fields {
    fn add(&mut self, key: &str, value: impl fmt::Display) {
        self.lines.push((key.to_string(), value.to_string()));
    }

    fn render(&self, indent: &str) -> String {
        let width = self.lines.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (key, value) in &self.lines {
            let pad = " ".repeat(width - key.chars().count());
            out.push_str(format!("{indent}{key}:{pad}  {value}").trim_end());
            out.push('\n');
        }
        out
    }
}

/// `512 B`, `4 KiB`, `1.5 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1 << (10 * (unit + 1)) {
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    let scale = 1u64 << (10 * unit);
    if bytes.is_multiple_of(scale) {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

/// Microseconds, in the unit that reads best.
fn human_micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

fn human_duration(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `1 page`, `2 pages`.
pub fn pages(n: u64) -> String {
    if n == 1 { "1 page".into() } else { format!("{n} pages") }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

pub fn short_sha(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn or_dash(items: &[String]) -> String {
    if items.is_empty() { "-".into() } else { items.join(", ") }
}

/// `zstd 0.1.0 → ram 0.1.0`.
pub fn chain(backends: &[BackendInfo]) -> String {
    backends.iter().map(|b| format!("{} {}", b.plugin, b.version)).collect::<Vec<_>>().join(" → ")
}

/// `zstd 0.1.0 (level=1 ...) → ram 0.1.0`: generations of a hot swap may differ only in
/// config.
fn chain_with_config(backends: &[BackendInfo]) -> String {
    let link = |b: &BackendInfo| match config_text(&b.config) {
        config if config.is_empty() => format!("{} {}", b.plugin, b.version),
        config => format!("{} {} ({config})", b.plugin, b.version),
    };
    backends.iter().map(link).collect::<Vec<_>>().join(" → ")
}

/// `level=1 on_incompressible=reject`: strings bare, everything else as JSON.
fn config_text(config: &Map<String, Value>) -> String {
    config
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn store_outcome(result: &StoreResult) -> String {
    match (result.outcome.as_str(), &result.reason) {
        ("stored", _) => "stored".into(),
        ("stored_writethrough", _) => "stored (writethrough)".into(),
        ("rejected", Some(reason)) => format!("rejected: {reason}"),
        (outcome, Some(reason)) => format!("{outcome}: {reason}"),
        (outcome, None) => outcome.into(),
    }
}

pub fn plugin_table(plugins: &[PluginInfo]) -> String {
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("VERSION", Align::Left),
        ("KIND", Align::Left),
        ("SHA256", Align::Left),
        ("SIZE", Align::Right),
        ("SOURCE", Align::Left),
        ("USED BY", Align::Left),
    ]);
    for plugin in plugins {
        for v in &plugin.versions {
            table.row(vec![
                plugin.name.clone(),
                v.version.clone(),
                v.kind.clone(),
                short_sha(&v.sha256).to_string(),
                human_bytes(v.size),
                if v.bundled { "bundled" } else { "uploaded" }.to_string(),
                or_dash(&v.used_by),
            ]);
        }
    }
    table.render()
}

pub fn plugin_view(info: &PluginInfo) -> String {
    let mut out = String::new();
    let newest = info.versions.len().saturating_sub(1);
    for (i, v) in info.versions.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&plugin_version_view(v, i == newest));
    }
    if info.versions.is_empty() {
        out.push_str(&format!("{}: no versions\n", info.name));
    }
    out
}

fn plugin_version_view(v: &PluginVersion, default: bool) -> String {
    let mut fields = Fields::default();
    fields.add("name", &v.name);
    fields.add("version", if default { format!("{} (default)", v.version) } else { v.version.clone() });
    fields.add("sha256", &v.sha256);
    fields.add("kind", &v.kind);
    fields.add("abi", v.abi);
    fields.add("size", human_bytes(v.size));
    fields.add("source", if v.bundled { "bundled" } else { "uploaded" });
    fields.add("used by", or_dash(&v.used_by));
    fields.add("description", &v.description);
    let mut out = fields.render("");
    if v.config.is_empty() {
        out.push_str("config:       none\n");
        return out;
    }
    out.push_str("config:\n");
    let mut table = Table::new(&[
        ("KEY", Align::Left),
        ("TYPE", Align::Left),
        ("DEFAULT", Align::Left),
        ("RANGE", Align::Left),
        ("DOC", Align::Left),
    ]);
    for entry in &v.config {
        match serde_json::from_value::<ConfigKey>(entry.clone()) {
            Ok(key) => {
                let (kind, default, range) = match &key.value {
                    ConfigValueKind::Integer { min, max, default } => {
                        ("integer", default.to_string(), format!("{min}..={max}"))
                    }
                    ConfigValueKind::Bool { default } => ("bool", default.to_string(), String::new()),
                    ConfigValueKind::Enum { values, default } => (
                        "enum",
                        default.to_string(),
                        values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("|"),
                    ),
                    ConfigValueKind::StringList => ("strings", "[]".to_string(), String::new()),
                    ConfigValueKind::Secret => ("secret", "\"\"".to_string(), String::new()),
                };
                table.row(vec![key.key.to_string(), kind.into(), default, range, key.doc.to_string()]);
            }
            // A newer server may describe keys this client does not know: show them raw.
            Err(_) => table.row(vec![entry.to_string(), String::new(), String::new(), String::new(), String::new()]),
        }
    }
    for line in table.render().lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

fn counter(info: &PoolInfo, name: &str) -> u64 {
    info.counters.get(name).copied().unwrap_or(0)
}

fn limits(info: &PoolInfo) -> String {
    let mut parts = Vec::new();
    if let Some(pages) = info.max_pages {
        parts.push(format!("{pages} pages"));
    }
    if let Some(bytes) = info.max_bytes {
        parts.push(human_bytes(bytes));
    }
    or_dash(&parts)
}

fn modes(info: &PoolInfo) -> String {
    let mut parts = Vec::new();
    if info.writethrough {
        parts.push("writethrough".to_string());
    }
    if info.exclusive_gets {
        parts.push("exclusive-gets".to_string());
    }
    if info.persistent {
        parts.push("persistent".to_string());
    }
    or_dash(&parts)
}

fn state(info: &PoolInfo) -> &'static str {
    match (info.enabled, info.full) {
        (false, _) => "disabled",
        (true, true) => "full",
        (true, false) => "enabled",
    }
}

pub fn pool_table(pools: &[PoolInfo]) -> String {
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("PAGE", Align::Right),
        ("CHAIN", Align::Left),
        ("PAGES", Align::Right),
        ("BYTES", Align::Right),
        ("LIMIT", Align::Left),
        ("MODES", Align::Left),
        ("STATE", Align::Left),
    ]);
    for info in pools {
        table.row(vec![
            info.name.clone(),
            human_bytes(u64::from(info.page_size)),
            chain(&info.backends),
            counter(info, "stored_pages").to_string(),
            human_bytes(counter(info, "pool_total_size")),
            limits(info),
            modes(info),
            state(info).to_string(),
        ]);
    }
    table.render()
}

/// `tmem swap status`: one line per swap device, the columns of zramctl where they apply.
pub fn swap_table(devices: &[SwapDevice]) -> String {
    if devices.is_empty() {
        return "no swap device: `tmem swap on` makes one\n".into();
    }
    let mut table = Table::new(&[
        ("DEVICE", Align::Left),
        ("POOL", Align::Left),
        ("CHAIN", Align::Left),
        ("DISKSIZE", Align::Right),
        ("PAGES", Align::Right),
        ("DATA", Align::Right),
        ("COMPR", Align::Right),
        ("RATIO", Align::Right),
        ("MEM-USED", Align::Right),
        ("BACKING", Align::Right),
        ("SWAP-USED", Align::Right),
        ("PRIO", Align::Right),
    ]);
    for d in devices {
        table.row(vec![
            d.device.clone(),
            d.pool.clone(),
            d.chain.clone(),
            human_bytes(d.size_bytes),
            d.stored_pages.to_string(),
            human_bytes(d.data_bytes),
            human_bytes(d.compressed_bytes),
            d.ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}")),
            human_bytes(d.memory_bytes),
            d.backing_pages.to_string(),
            d.swap.as_ref().map_or_else(|| "-".into(), |s| human_bytes(s.used_bytes)),
            d.swap.as_ref().map_or_else(|| "-".into(), |s| s.priority.to_string()),
        ]);
    }
    table.render()
}

pub fn pool_view(info: &PoolInfo) -> String {
    let mut fields = Fields::default();
    fields.add("name", &info.name);
    fields.add(
        "state",
        if info.full { "full (refusing stores until usage falls below the threshold)" } else { state(info) },
    );
    fields.add("page size", info.page_size);
    fields.add("max pages", info.max_pages.map_or("none".to_string(), |p| p.to_string()));
    fields.add("max bytes", info.max_bytes.map_or("none".to_string(), |b| format!("{} ({b})", human_bytes(b))));
    fields.add("accept threshold", format!("{}%", info.accept_threshold_percent));
    fields.add("writethrough", yes_no(info.writethrough));
    fields.add("exclusive gets", yes_no(info.exclusive_gets));
    fields.add(
        "persistent",
        match (info.durability, info.flush_interval_ms) {
            (Some(Durability::Periodic), Some(ms)) => format!("yes, periodic durability (flushed every {ms} ms)"),
            (Some(Durability::Written), _) => {
                "yes, written durability (acknowledged once written to the kernel: survives the host's crash, not a power loss)".to_string()
            }
            (Some(_), _) => "yes, sync durability (acknowledged once on disk)".to_string(),
            (None, _) => "no (pages are lost when the host stops)".to_string(),
        },
    );
    fields.add("shards", info.shards);
    fields.add(
        "sandbox",
        format!("{} memory, {} ms per call", human_bytes(info.sandbox.memory_bytes), info.sandbox.call_timeout_ms),
    );
    fields.add(
        "tier",
        match (&info.tier, &info.tier_of) {
            (Some(tier), _) => format!(
                "lower tier {} ({} below; idle {} s, promote {}, pressure {}%)",
                tier.config.lower,
                pages(tier.lower_pages),
                tier.config.idle_seconds,
                match tier.config.promote {
                    tmem_api::rest::Promote::OnLoad => "on_load",
                    tmem_api::rest::Promote::Never => "never",
                },
                tier.config.pressure_percent
            ),
            (None, Some(upper)) => format!("the lower tier of {upper} (only {upper} reads and writes it)"),
            (None, None) => "none".to_string(),
        },
    );
    let frontends: Vec<String> = info
        .frontends
        .iter()
        .map(|f| {
            let counter = |k: &str| f.counters.get(k).copied().unwrap_or(0);
            match (&f.device, &f.address) {
                (Some(_), address) => format!(
                    "{} at {address} ({} writes, {} reads, {} to backing, {} taken back)",
                    f.name,
                    counter("writes"),
                    counter("reads"),
                    counter("to_backing"),
                    counter("taken_back")
                ),
                (None, _) => format!(
                    "{} ({} stores, {} loads, {} taken back)",
                    f.name,
                    counter("stores"),
                    counter("loads"),
                    counter("taken_back")
                ),
            }
        })
        .collect();
    fields.add("frontends", or_dash(&frontends));
    fields.add("uptime", human_duration(info.uptime_seconds));
    fields.add(
        "last fault",
        info.last_fault.as_ref().map_or("none".to_string(), |f| format!("{} {}: {}", f.plugin, f.kind, f.message)),
    );
    let mut out = fields.render("");

    out.push_str("chain:\n");
    out.push_str(&indent(&backend_table(&info.backends), "  "));
    if info.generations.len() > 1 {
        out.push_str("generations:\n");
        let mut table = Table::new(&[("ID", Align::Left), ("PAGES", Align::Right), ("CHAIN", Align::Left)]);
        for generation in &info.generations {
            let id =
                if generation.current { format!("{} (current)", generation.id) } else { generation.id.to_string() };
            table.row(vec![id, generation.pages.to_string(), chain_with_config(&generation.backends)]);
        }
        out.push_str(&indent(&table.render(), "  "));
    }

    out.push_str("counters:\n");
    let mut counters = Fields::default();
    for (name, value) in &info.counters {
        if name == "pool_total_size" {
            counters.add(name, format!("{value} ({})", human_bytes(*value)));
        } else {
            counters.add(name, value);
        }
    }
    out.push_str(&counters.render("  "));

    out.push_str("latency:\n");
    let mut table = Table::new(&[
        ("OP", Align::Left),
        ("COUNT", Align::Right),
        ("MEAN", Align::Right),
        ("P50", Align::Right),
        ("P99", Align::Right),
    ]);
    // The contract's order first, then anything else the server reports.
    let known = ["store", "load", "invalidate_page", "invalidate_area"];
    let others: BTreeSet<&String> = info.latency.keys().filter(|k| !known.contains(&k.as_str())).collect();
    let ops = known.iter().map(|k| k.to_string()).chain(others.into_iter().cloned());
    for op in ops {
        match info.latency.get(&op) {
            Some(l) if l.count > 0 => table.row(vec![
                op,
                l.count.to_string(),
                human_micros(l.mean_us),
                human_micros(l.p50_us),
                human_micros(l.p99_us),
            ]),
            Some(_) => table.row(vec![op, "0".into(), "-".into(), "-".into(), "-".into()]),
            None => {}
        }
    }
    out.push_str(&indent(&table.render(), "  "));
    out
}

fn backend_table(backends: &[BackendInfo]) -> String {
    let mut table = Table::new(&[
        ("PLUGIN", Align::Left),
        ("VERSION", Align::Left),
        ("SHA256", Align::Left),
        ("KIND", Align::Left),
        ("CONFIG", Align::Left),
    ]);
    for b in backends {
        table.row(vec![
            b.plugin.clone(),
            b.version.clone(),
            short_sha(&b.sha256).to_string(),
            b.kind.clone(),
            config_text(&b.config),
        ]);
    }
    table.render()
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|line| format!("{prefix}{line}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_by_characters() {
        let mut table = Table::new(&[("NAME", Align::Left), ("CHAIN", Align::Left), ("PAGES", Align::Right)]);
        table.row(vec!["demo".into(), "zstd 0.1.0 → ram 0.1.0".into(), "7".into()]);
        table.row(vec!["a-longer-name".into(), "ram 0.1.0".into(), "1234".into()]);
        assert_eq!(
            table.render(),
            "NAME           CHAIN                   PAGES\n\
             demo           zstd 0.1.0 → ram 0.1.0      7\n\
             a-longer-name  ram 0.1.0                1234\n"
        );
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(4096), "4 KiB");
        assert_eq!(human_bytes(1536 << 10), "1.5 MiB");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(3 << 30), "3 GiB");
        assert_eq!(human_micros(12.34), "12.3 µs");
        assert_eq!(human_micros(2500.0), "2.50 ms");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(3725), "1h 2m");
        assert_eq!(human_duration(90061), "1d 1h");
    }

    #[test]
    fn store_outcomes_read_well() {
        let r = |outcome: &str, reason: Option<&str>| StoreResult {
            outcome: outcome.into(),
            reason: reason.map(Into::into),
        };
        assert_eq!(store_outcome(&r("stored", None)), "stored");
        assert_eq!(store_outcome(&r("stored_writethrough", None)), "stored (writethrough)");
        assert_eq!(store_outcome(&r("rejected", Some("pool_limit_hit"))), "rejected: pool_limit_hit");
    }
}
