// Overview: every pool with its chain, limits and live figures (pages, bytes, compression,
// store/load/reject rates) and a live chart each. Pool configs come from GET /pools (again
// only when the set of pools changes); the figures come from the live stream.

import { pools as poolsApi } from '../api.js';
import { TimeChart } from '../charts.js';
import * as fmt from '../format.js';
import { live } from '../live.js';
import { fill, h, messageBox } from '../ui.js';

export function limitsText(pool) {
  const parts = [];
  if (pool.max_pages !== null && pool.max_pages !== undefined) parts.push(`${fmt.count(pool.max_pages)} pages`);
  if (pool.max_bytes !== null && pool.max_bytes !== undefined) parts.push(fmt.bytes(pool.max_bytes));
  return parts.length ? `at most ${parts.join(' and ')}` : 'no limit';
}

export function badges(pool, sample) {
  const enabled = sample ? sample.enabled : pool.enabled;
  const full = sample ? sample.full : pool.full;
  return [
    !enabled ? h('span', { class: 'badge warn' }, 'disabled') : null,
    full ? h('span', { class: 'badge bad' }, 'full') : null,
    pool.persistent ? h('span', { class: 'badge' }, 'persistent') : null,
    pool.writethrough ? h('span', { class: 'badge' }, 'writethrough') : null,
    pool.exclusive_gets ? h('span', { class: 'badge' }, 'exclusive gets') : null,
    pool.tier_of ? h('span', { class: 'badge', dataset: { tierOf: pool.tier_of } }, `lower tier of ${pool.tier_of}`) : null,
  ];
}

/** The line of a tiered pool: where its idle pages go, and the flow both ways. */
function tierLine(pool) {
  if (!pool.tier) return [null, null];
  const flow = h('span', { class: 'muted', dataset: { stat: 'tier_flow' } }, '');
  const line = h(
    'p',
    { class: 'chain tier', dataset: { tier: pool.tier.config.lower } },
    '⇣ idle ',
    `${pool.tier.config.idle_seconds} s → `,
    h('a', { href: `#/pools/${encodeURIComponent(pool.tier.config.lower)}` }, pool.tier.config.lower),
    ' ',
    flow,
  );
  return [line, flow];
}

/** Stores refused per second, every reason together. */
export function rejectRate(sample) {
  return sample.rates.failed_stores ?? 0;
}

function poolCard(pool) {
  const stats = {};
  const stat = (key, label) => h('div', { class: 'stat' }, h('span', { class: 'label' }, label), (stats[key] = h('strong', { dataset: { stat: key } }, '—')));
  const chartBox = h('div', { class: 'chart' });
  const badgeBox = h('span', { class: 'badges' }, badges(pool));
  const [tier, tierFlow] = tierLine(pool);
  const card = h(
    'article',
    { class: 'card pool-card', dataset: { pool: pool.name } },
    h('header', {}, h('h2', {}, h('a', { href: `#/pools/${encodeURIComponent(pool.name)}` }, pool.name)), badgeBox),
    h('p', { class: 'chain' }, fmt.chain(pool.backends)),
    tier,
    h('p', { class: 'muted' }, `${fmt.bytes(pool.page_size)} pages, ${limitsText(pool)}`),
    h(
      'div',
      { class: 'stats' },
      stat('stored_pages', 'Stored pages'),
      stat('pool_total_size', 'Bytes used'),
      stat('compression_ratio', 'Ratio'),
      stat('store_rate', 'Stores'),
      stat('load_rate', 'Loads'),
      stat('reject_rate', 'Rejects'),
    ),
    chartBox,
  );
  let chart = null;
  return {
    el: card,
    update(sample) {
      stats.stored_pages.textContent = fmt.count(sample.stored_pages);
      stats.pool_total_size.textContent = fmt.bytes(sample.pool_total_size);
      stats.compression_ratio.textContent = fmt.ratio(sample.compression_ratio);
      stats.store_rate.textContent = fmt.rate(sample.rates.succ_stores);
      stats.load_rate.textContent = fmt.rate(sample.rates.loads);
      const stores = (sample.rates.succ_stores ?? 0) + rejectRate(sample);
      stats.reject_rate.textContent = `${fmt.rate(rejectRate(sample))} (${fmt.percent(rejectRate(sample), stores)})`;
      fill(badgeBox, badges(pool, sample));
      if (tierFlow) {
        const down = sample.counters.tier_demoted_pages ?? 0;
        const up = sample.counters.tier_promoted_pages ?? 0;
        tierFlow.textContent = `(${fmt.count(down)} down at ${fmt.rate(sample.rates.tier_demoted_pages)}, ${fmt.count(up)} up at ${fmt.rate(sample.rates.tier_promoted_pages)})`;
      }
      chart ??= new TimeChart(chartBox, {
        title: 'Operations per second',
        series: [{ label: 'stores' }, { label: 'loads' }, { label: 'rejects', color: '#cf222e' }],
        format: (v) => fmt.rate(v).replace('/s', ''),
        height: 150,
      });
      const [times, columns] = live.series(pool.name, [(p) => p.rates.succ_stores ?? null, (p) => p.rates.loads ?? null, (p) => (p.rates.succ_stores === undefined ? null : rejectRate(p))]);
      chart.setData(times, columns);
    },
    destroy() {
      chart?.destroy();
    },
  };
}

export function overviewView(main) {
  const box = messageBox();
  const list = h('div', { class: 'pool-grid' });
  fill(
    main,
    h('div', { class: 'page-head' }, h('h1', {}, 'Pools'), h('a', { class: 'button', href: '#/create' }, 'Create pool')),
    box.el,
    list,
  );
  let cards = new Map();
  let known = '';
  let loading = null;

  async function load() {
    try {
      const pools = await poolsApi.list();
      for (const card of cards.values()) card.destroy();
      cards = new Map();
      known = pools.map((p) => p.name).sort().join('\n');
      if (pools.length === 0) {
        fill(list, h('div', { class: 'card empty' }, h('p', {}, 'No pools yet.'), h('a', { class: 'button', href: '#/create' }, 'Create the first pool')));
      } else {
        fill(list);
        for (const pool of pools) {
          const card = poolCard(pool);
          cards.set(pool.name, card);
          list.append(card.el);
        }
      }
      box.clear();
    } catch (e) {
      box.error(e);
    }
  }

  loading = load();
  const unsubscribe = live.subscribe(async (sample) => {
    await loading;
    const names = sample.pools.map((p) => p.name).sort().join('\n');
    if (names !== known) {
      known = names;
      loading = load();
      await loading;
    }
    for (const pool of sample.pools) cards.get(pool.name)?.update(pool);
  });

  return {
    destroy() {
      unsubscribe();
      for (const card of cards.values()) card.destroy();
    },
  };
}
