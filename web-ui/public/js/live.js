// The live statistics hub: one `GET /api/v1/stats/stream` connection for the whole page, a
// rolling history of samples per pool (five minutes at one sample a second), and the views
// that subscribe to it. Views never poll; they redraw from the history when a sample lands.

import { streamStats } from './api.js';

const KEEP = 300;

let controller = null;
const subscribers = new Set();
const history = new Map(); // pool name -> [{t, pool}] oldest first
let latestHost = null;
let latestSample = null;
let state = 'connecting';

function onSample(sample) {
  const t = sample.at_ms / 1000;
  const names = new Set();
  for (const pool of sample.pools) {
    names.add(pool.name);
    let points = history.get(pool.name);
    if (!points) history.set(pool.name, (points = []));
    points.push({ t, pool });
    if (points.length > KEEP) points.splice(0, points.length - KEEP);
  }
  for (const name of history.keys()) if (!names.has(name)) history.delete(name);
  latestHost = sample.host;
  latestSample = sample;
  for (const f of subscribers) f(sample);
}

function onState(s) {
  state = s;
  const el = document.getElementById('live');
  el.hidden = false;
  el.textContent = s === 'live' ? '● live' : '○ reconnecting…';
  el.className = `live ${s}`;
}

export const live = {
  start() {
    if (controller) return;
    controller = new AbortController();
    streamStats(onSample, onState, controller.signal);
  },
  stop() {
    controller?.abort();
    controller = null;
    history.clear();
    latestHost = null;
    latestSample = null;
  },
  /** Calls `f(sample)` on every sample (at once with the latest, if any); returns the unsubscribe. */
  subscribe(f) {
    subscribers.add(f);
    if (latestSample) f(latestSample);
    return () => subscribers.delete(f);
  },
  /** [times, column per pick] of a pool's history; `pick(poolSample)` returns one value per column. */
  series(name, picks) {
    const points = history.get(name) || [];
    return [points.map((p) => p.t), picks.map((pick) => points.map((p) => pick(p.pool)))];
  },
  latest(name) {
    const points = history.get(name);
    return points ? points[points.length - 1].pool : null;
  },
  host: () => latestHost,
  state: () => state,
};

/** Stores rejected per second: every reject reason together. */
export const REJECT_REASONS = [
  'pool_limit_hit',
  'reject_compress_poor',
  'reject_compress_fail',
  'reject_alloc_fail',
  'reject_plugin_fault',
  'remote_unavailable',
  'reject_disabled',
];

export function rate(pool, counter) {
  return pool.rates[counter] ?? null;
}
