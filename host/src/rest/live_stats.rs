//! Live statistics for dashboards: `GET /api/v1/stats` (one [`StatsSample`] of every pool)
//! and `GET /api/v1/stats/stream` (a sample every interval as Server-Sent Events).
//!
//! A sample carries what a chart needs and nothing it does not: levels (pages, bytes,
//! compression ratio), every counter, and what changed since the stream's previous sample —
//! per-second rates of the growing counters and the latency quantiles of the interval, taken
//! from the difference of two histogram snapshots ([`HistogramSnapshot::since`]). A stream
//! keeps its own previous sample, so clients never diff counters themselves and two
//! dashboards never disturb each other. Pool configs (chains, limits) are not repeated here:
//! they change only through the API, and `GET /api/v1/pools` has them.
//!
//! The stream is an ordinary `/api/v1` route behind the token. Browsers read it with
//! `fetch` and a stream reader (the `EventSource` API cannot send an `Authorization` header).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tmem_api::rest::{ErrorBody, HostTotals, LatencyWindow, PoolSample, StatsSample, StatsStreamQuery};

use super::error::{ApiError, Json, Query};
use crate::host::Host;
use crate::pool::Pool;
use crate::stats::{CounterSnapshot, GAUGES, HistogramSnapshot, Op};

/// The shortest and longest interval a stream may ask for.
const INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

/// What a sampler remembers of a pool between two samples.
struct PoolBefore {
    counters: CounterSnapshot,
    latency: Vec<HistogramSnapshot>,
}

/// Takes [`StatsSample`]s of a host, each relative to the sampler's previous one.
#[derive(Default)]
pub struct StatsSampler {
    before: HashMap<String, PoolBefore>,
    at: Option<Instant>,
}

impl StatsSampler {
    /// A sample of every pool now; rates and latency cover the time since the previous call
    /// (latency covers the pool's life on the first call, and rates are empty).
    pub fn sample(&mut self, host: &Host) -> StatsSample {
        let now = Instant::now();
        let interval = self.at.map(|at| now.duration_since(at));
        self.at = Some(now);
        let mut host_totals = HostTotals::default();
        let mut before = HashMap::with_capacity(self.before.len());
        let mut pools = Vec::new();
        for pool in host.pools() {
            let counters = pool.counters();
            let latency: Vec<HistogramSnapshot> = Op::ALL.iter().map(|&op| pool.latency(op)).collect();
            let previous = self.before.remove(pool.name());
            let sample = pool_sample(&pool, &counters, &latency, previous.as_ref().zip(interval));
            host_totals.pools += 1;
            host_totals.curr_pages += sample.stored_pages;
            host_totals.pool_total_size += sample.pool_total_size;
            host_totals.plugin_memory_bytes += sample.plugin_memory_bytes;
            host_totals.plugin_faults += counters.plugin_faults;
            host_totals.integrity_failures += counters.integrity_failures;
            host_totals.frontends += sample.frontends;
            pools.push(sample);
            before.insert(pool.name().to_string(), PoolBefore { counters, latency });
        }
        self.before = before;
        StatsSample {
            at_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            interval_ms: interval.map_or(0, |d| d.as_millis() as u64),
            host: HostTotals {
                memory: super::memory::memory_info(host),
                instance_slots_limit: host.engine().slots().limit() as u64,
                instance_slots_reserved: host.engine().slots().reserved() as u64,
                ..host_totals
            },
            pools,
        }
    }
}

fn pool_sample(
    pool: &Pool,
    counters: &CounterSnapshot,
    latency: &[HistogramSnapshot],
    previous: Option<(&PoolBefore, Duration)>,
) -> PoolSample {
    let window = |h: &HistogramSnapshot| {
        let us = |q| h.quantile_ns(q).unwrap_or(0) as f64 / 1000.0;
        LatencyWindow { count: h.count(), p50_us: us(0.5), p99_us: us(0.99) }
    };
    let (rates, latency) = match previous {
        Some((before, interval)) => {
            let seconds = interval.as_secs_f64().max(1e-3);
            let rates = counters
                .named()
                .into_iter()
                .zip(before.counters.named())
                .filter(|((name, _), _)| !GAUGES.contains(name))
                .map(|((name, now), (_, then))| (name.to_string(), now.saturating_sub(then) as f64 / seconds))
                .collect();
            let latency = Op::ALL
                .iter()
                .zip(latency.iter().zip(&before.latency))
                .map(|(op, (now, then))| (op.name().to_string(), window(&now.since(then))));
            (rates, latency.collect())
        }
        None => {
            (BTreeMap::new(), Op::ALL.iter().zip(latency).map(|(op, h)| (op.name().to_string(), window(h))).collect())
        }
    };
    let page_bytes = counters.stored_pages as f64 * f64::from(pool.page_size());
    PoolSample {
        name: pool.name().to_string(),
        stored_pages: counters.stored_pages,
        pool_total_size: counters.pool_total_size,
        compression_ratio: (counters.stored_pages > 0 && counters.pool_total_size > 0)
            .then(|| page_bytes / counters.pool_total_size as f64),
        full: pool.is_full(),
        enabled: pool.enabled(),
        plugin_memory_bytes: pool.plugin_memory_bytes(),
        frontends: pool.frontends().len() as u64,
        counters: counters.named().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        rates,
        latency,
    }
}

/// Every pool's statistics now (latency over each pool's life; no rates).
#[utoipa::path(
    get, path = "/api/v1/stats", tag = "stats",
    responses((status = 200, body = StatsSample)),
    security(("token" = []))
)]
pub async fn stats(State(host): State<Arc<Host>>) -> Json<StatsSample> {
    Json(StatsSampler::default().sample(&host))
}

/// A [`StatsSample`] every `interval_ms` as Server-Sent Events (`data: {json}`), the first at
/// once; rates and latency cover the time since the previous event.
#[utoipa::path(
    get, path = "/api/v1/stats/stream", tag = "stats",
    params(StatsStreamQuery),
    responses(
        (status = 200, description = "`text/event-stream`; each event's data is a StatsSample", content_type = "text/event-stream", body = StatsSample),
        (status = 400, description = "An interval out of range", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn stats_stream(
    State(host): State<Arc<Host>>,
    Query(query): Query<StatsStreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    if !INTERVAL_RANGE_MS.contains(&query.interval_ms) {
        return Err(ApiError::bad_request(
            "invalid_interval",
            format!(
                "interval_ms must be {} to {}, not {}",
                INTERVAL_RANGE_MS.start(),
                INTERVAL_RANGE_MS.end(),
                query.interval_ms
            ),
        ));
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(query.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let events = futures_util::stream::unfold(
        (host, StatsSampler::default(), ticker),
        |(host, mut sampler, mut ticker)| async move {
            ticker.tick().await;
            let sample = sampler.sample(&host);
            let event = Event::default()
                .json_data(&sample)
                .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
            Some((Ok(event), (host, sampler, ticker)))
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
