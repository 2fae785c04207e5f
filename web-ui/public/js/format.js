// Numbers for people: byte sizes, counts, rates, ratios, latencies.

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function bytes(n) {
  if (n === null || n === undefined) return '—';
  let i = 0;
  let v = n;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${UNITS[i]}`;
}

export function count(n) {
  if (n === null || n === undefined) return '—';
  return Number(n).toLocaleString('en-US');
}

export function rate(perSecond) {
  if (perSecond === null || perSecond === undefined) return '—';
  if (perSecond >= 1e6) return `${(perSecond / 1e6).toFixed(2)}M/s`;
  if (perSecond >= 1e4) return `${(perSecond / 1e3).toFixed(1)}k/s`;
  return `${perSecond < 10 ? perSecond.toFixed(1) : Math.round(perSecond)}/s`;
}

export function ratio(r) {
  return r === null || r === undefined ? '—' : `${r.toFixed(2)}×`;
}

export function micros(us) {
  if (!us) return '—';
  return us >= 1000 ? `${(us / 1000).toFixed(2)} ms` : `${us.toFixed(us < 10 ? 1 : 0)} µs`;
}

export function percent(part, whole) {
  return whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : '—';
}

/** Parses "64M", "1.5GiB", "4096" into bytes; null when empty; NaN when unreadable. */
export function parseSize(text) {
  const s = String(text).trim();
  if (s === '') return null;
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(s);
  if (!m) return NaN;
  const power = { '': 0, k: 1, m: 2, g: 3, t: 4 }[m[2].toLowerCase()];
  return Math.round(Number(m[1]) * 1024 ** power);
}

/** `zstd 0.1.0 → ram 0.1.0` */
export function chain(backends) {
  return backends.map((b) => `${b.plugin} ${b.version}`).join(' → ');
}
