// One pool: live charts (pages, bytes, operations, latency, rejects by reason), every counter,
// the chain with its plugin versions and generations, connected frontends; and the actions —
// limits and modes, hot swap and roll back, shrink, invalidate all, delete.

import { plugins as pluginsApi, pools as poolsApi, tokens as tokensApi } from '../api.js';
import { TimeChart } from '../charts.js';
import * as fmt from '../format.js';
import { live, REJECT_REASONS } from '../live.js';
import { busy, confirmAction, field, fill, h, messageBox, toast } from '../ui.js';
import { badges, limitsText, rejectRate } from './overview.js';

const CHARTS = [
  { key: 'pages', title: 'Stored pages', series: [{ label: 'pages' }], format: fmt.count, picks: [(p) => p.stored_pages] },
  {
    key: 'bytes',
    title: 'Memory',
    series: [{ label: 'store bytes' }, { label: 'plugin memory' }],
    format: fmt.bytes,
    picks: [(p) => p.pool_total_size, (p) => p.plugin_memory_bytes],
  },
  {
    key: 'ops',
    title: 'Operations per second',
    series: [{ label: 'stores' }, { label: 'loads' }, { label: 'invalidates' }, { label: 'rejects', color: '#cf222e' }],
    format: (v) => fmt.rate(v).replace('/s', ''),
    picks: [(p) => p.rates.succ_stores ?? null, (p) => p.rates.loads ?? null, (p) => p.rates.invalidates ?? null, (p) => (p.rates.succ_stores === undefined ? null : rejectRate(p))],
  },
  {
    key: 'latency',
    title: 'Latency (µs)',
    series: [{ label: 'store p50' }, { label: 'store p99' }, { label: 'load p50' }, { label: 'load p99' }],
    format: (v) => (v === 0 ? '0' : fmt.micros(v)),
    picks: [
      (p) => p.latency.store?.p50_us || null,
      (p) => p.latency.store?.p99_us || null,
      (p) => p.latency.load?.p50_us || null,
      (p) => p.latency.load?.p99_us || null,
    ],
  },
  {
    key: 'rejects',
    title: 'Rejects per second, by reason',
    series: REJECT_REASONS.map((r) => ({ label: r })),
    format: (v) => fmt.rate(v).replace('/s', ''),
    picks: REJECT_REASONS.map((r) => (p) => p.rates[r] ?? null),
  },
];

function optionalNumber(input) {
  const text = input.value.trim();
  return text === '' ? null : Number(text);
}

export function poolView(main, name) {
  let info = null;
  let destroyed = false;
  const charts = [];
  const head = h('div', { class: 'page-head' });
  const headBox = messageBox();
  const tiles = h('div', { class: 'stats tiles' });
  const tileValues = {};
  const tile = (key, label) => tiles.append(h('div', { class: 'stat' }, h('span', { class: 'label' }, label), (tileValues[key] = h('strong', { dataset: { stat: key } }, '—'))));
  tile('stored_pages', 'Stored pages');
  tile('pool_total_size', 'Bytes used');
  tile('compression_ratio', 'Compression');
  tile('store_rate', 'Stores');
  tile('load_rate', 'Loads');
  tile('reject_rate', 'Rejects');
  tile('plugin_memory_bytes', 'Plugin memory');
  tile('frontends', 'Frontends');
  const chartGrid = h('div', { class: 'chart-grid' });
  const counterBody = h('tbody');
  const chainCard = h('section', { class: 'card', id: 'chain' });
  const frontendsCard = h('section', { class: 'card', id: 'frontends' });
  const settingsCard = h('section', { class: 'card', id: 'settings' });
  const actionsCard = h('section', { class: 'card', id: 'actions' });
  const tokensCard = h('section', { class: 'card', id: 'tokens' });

  fill(
    main,
    h('p', { class: 'crumbs' }, h('a', { href: '#/' }, 'Pools'), ' / ', name),
    head,
    headBox.el,
    tiles,
    chartGrid,
    h('div', { class: 'columns' }, chainCard, h('section', { class: 'card', id: 'counters' }, h('h2', {}, 'Counters'), h('div', { class: 'table-wrap' }, h('table', { class: 'counters' }, h('thead', {}, h('tr', {}, h('th', {}, 'counter'), h('th', { class: 'num' }, 'value'), h('th', { class: 'num' }, 'per second'))), counterBody)))),
    h('div', { class: 'columns' }, settingsCard, actionsCard),
    frontendsCard,
    tokensCard,
  );

  for (const spec of CHARTS) {
    const box = h('div', { class: 'chart card', dataset: { chart: spec.key } });
    chartGrid.append(box);
    charts.push({ spec, chart: new TimeChart(box, { title: spec.title, series: spec.series, format: spec.format }) });
  }

  // ----- rendering from GET /pools/{name} -----

  function renderHead() {
    fill(
      head,
      h('h1', {}, name),
      h('span', { class: 'badges' }, badges(info, live.latest(name))),
      h('span', { class: 'muted' }, `${fmt.bytes(info.page_size)} pages · ${info.shards} shards · up ${Math.round(info.uptime_seconds)} s`),
    );
  }

  let swapVersions = [];
  let previousChain = null;

  async function renderChain(note) {
    const box = messageBox();
    if (note) box.ok(note);
    const generations = h(
      'table',
      { class: 'generations' },
      h('thead', {}, h('tr', {}, h('th', {}, 'generation'), h('th', {}, 'chain'), h('th', { class: 'num' }, 'pages'))),
      h(
        'tbody',
        {},
        info.generations.map((g) =>
          h(
            'tr',
            { class: g.current ? 'current' : '' },
            h('td', {}, `#${g.id}${g.current ? ' (current)' : ''}`),
            h('td', {}, g.backends.map((b, i) => [i ? ' → ' : '', h('span', { class: 'link' }, `${b.plugin} ${b.version} `, h('code', { title: b.sha256 }, b.sha256.slice(0, 8)))])),
            h('td', { class: 'num' }, fmt.count(g.pages)),
          ),
        ),
      ),
    );
    const links = h(
      'table',
      { class: 'links' },
      h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', {}, 'plugin'), h('th', {}, 'kind'), h('th', {}, 'version'), h('th', {}, 'config'))),
      h('tbody'),
    );
    swapVersions = [];
    const details = await Promise.all(info.backends.map((b) => pluginsApi.get(b.plugin).catch(() => null)));
    if (destroyed) return;
    info.backends.forEach((b, i) => {
      const versions = details[i]?.versions ?? [{ version: b.version, sha256: b.sha256 }];
      const select = h(
        'select',
        { name: `version-${i}`, dataset: { plugin: b.plugin }, 'aria-label': `${b.plugin} version` },
        versions.map((v) => h('option', { value: v.sha256, selected: v.sha256 === b.sha256 }, `${v.version} (${v.sha256.slice(0, 8)})`)),
      );
      swapVersions.push(select);
      links.tBodies[0].append(
        h(
          'tr',
          {},
          h('td', {}, String(i)),
          h('td', {}, b.plugin, b.grants?.length ? h('span', { class: 'badge' }, `grants: ${b.grants.join(', ')}`) : null),
          h('td', {}, b.kind),
          h('td', {}, select),
          h('td', {}, h('code', { class: 'config' }, JSON.stringify(b.config))),
        ),
      );
    });
    const swapButton = h('button', { type: 'button', id: 'swap' }, 'Hot swap to selected versions');
    swapButton.addEventListener('click', () =>
      busy(swapButton, box, async () => {
        const backends = info.backends.map((b, i) => ({ plugin: b.plugin, version: swapVersions[i].value, config: b.config, grants: b.grants }));
        if (backends.every((b, i) => b.version === info.backends[i].sha256)) {
          box.error({ message: 'Pick a different version first: the selected versions are the ones running.' });
          return;
        }
        const before = info.backends;
        info = await poolsApi.patch(name, { backends });
        previousChain = before;
        renderAll(`Swapped: new stores go through ${fmt.chain(info.backends)}; pages stored before stay readable through the chain that stored them.`);
      }),
    );
    const rollbackTo = previousChain ?? info.generations.filter((g) => !g.current).map((g) => g.backends).pop() ?? null;
    const rollbackButton = rollbackTo
      ? h('button', { type: 'button', id: 'rollback', class: 'secondary' }, `Roll back to ${fmt.chain(rollbackTo)}`)
      : null;
    rollbackButton?.addEventListener('click', () =>
      busy(rollbackButton, box, async () => {
        const backends = rollbackTo.map((b) => ({ plugin: b.plugin, version: b.sha256, config: b.config, grants: b.grants }));
        const before = info.backends;
        info = await poolsApi.patch(name, { backends });
        previousChain = before;
        renderAll(`Rolled back: new stores go through ${fmt.chain(info.backends)}.`);
      }),
    );
    const c = info.canary;
    const canaryText = !c
      ? null
      : c.state === 'running'
        ? `Canary: generation ${c.generation}'s stores are read back and compared before they are acknowledged — ${c.verified} of ${c.stores} verified.`
        : c.state === 'passed'
          ? `Canary: generation ${c.generation} passed (${c.verified} stores verified).`
          : c.state === 'rolled_back'
            ? `Canary FAILED: generation ${c.generation} was rolled back (${c.reason}); generation ${c.replaced_by} runs generation ${c.previous}'s chain again.`
            : `Canary FAILED on a new pool (${c.reason}): stores are disabled.`;
    const canary = canaryText
      ? h('p', { class: c.state === 'rolled_back' || c.state === 'disabled' ? 'canary alarm' : 'canary hint', id: 'canary' }, canaryText)
      : null;
    fill(
      chainCard,
      h('h2', {}, 'Chain'),
      h('div', { class: 'table-wrap' }, links),
      canary,
      h('div', { class: 'actions' }, swapButton, rollbackButton),
      box.el,
      h('h3', {}, 'Generations'),
      h('p', { class: 'hint' }, 'After a hot swap, pages stay with the chain that stored them until they are overwritten or invalidated.'),
      h('div', { class: 'table-wrap' }, generations),
      tierSection(info),
    );
  }

  /** A tiered pool: its lower tier, the flow between them and how idle its pages are. */
  function tierSection(info) {
    if (info.tier_of) {
      return h('p', { class: 'hint', id: 'tier-of' }, 'This pool is the lower tier of ', h('a', { href: `#/pools/${encodeURIComponent(info.tier_of)}` }, info.tier_of), ': only that pool reads and writes it.');
    }
    const t = info.tier;
    if (!t) return null;
    const counters = info.counters;
    let below = 0;
    const rows = t.idle_age.map((b) => {
      const pages = b.pages - below;
      below = b.pages;
      return h('tr', {}, h('td', {}, b.le_seconds === null ? 'older' : `< ${b.le_seconds} s`), h('td', {}, fmt.count(pages)));
    });
    return h(
      'div',
      { id: 'tier' },
      h('h3', {}, 'Lower tier'),
      h(
        'p',
        {},
        `${fmt.chain(info.backends)} ⇄ `,
        h('a', { href: `#/pools/${encodeURIComponent(t.config.lower)}` }, t.config.lower),
        `: pages idle ${t.config.idle_seconds} s go down (or sooner with the budget ${t.config.pressure_percent}% full); ` +
          `promote ${t.config.promote === 'on_load' ? 'on load' : 'never'}. ${fmt.count(t.lower_pages)} pages below; ` +
          `${fmt.count(counters.tier_demoted_pages)} moved down, ${fmt.count(counters.tier_promoted_pages)} back up.`,
      ),
      h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Idle'), h('th', {}, 'Pages here (last pass)'))), h('tbody', {}, rows))),
    );
  }

  function renderFrontends() {
    const rows = info.frontends.map((f) =>
      h(
        'tr',
        {},
        h('td', {}, f.name, f.kind ? h('span', { class: 'badge' }, f.kind) : null, f.address ? h('div', {}, h('code', {}, f.address)) : null),
        h('td', {}, Object.entries(f.counters).map(([k, v]) => h('span', { class: 'kv' }, `${k} ${fmt.count(v)}`))),
      ),
    );
    fill(
      frontendsCard,
      h('h2', {}, 'Connected frontends'),
      rows.length
        ? h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'frontend'), h('th', {}, 'counters'))), h('tbody', {}, rows)))
        : h('p', { class: 'muted' }, 'None. Frontends are userfaultfd regions (over the frontend socket) and block devices (NBD, ublk: tmem pool attach); shrink needs one unless the pool is writethrough.'),
    );
  }

  // The pool's scoped tokens: made here (shown once), listed without the tokens, revoked.
  async function renderTokens(made) {
    const box = messageBox();
    let list = [];
    try {
      list = await tokensApi.list(name);
    } catch (e) {
      box.error(e);
    }
    const scope = h('select', { name: 'token_scope', 'aria-label': 'Token scope' }, h('option', { value: 'frontend' }, 'frontend'), h('option', { value: 'peer' }, 'peer'));
    const label = h('input', { type: 'text', name: 'token_label', maxlength: '128', placeholder: 'label (who holds it)', 'aria-label': 'Token label' });
    const makeButton = h('button', { type: 'button', id: 'make-token' }, 'Make token');
    makeButton.addEventListener('click', () =>
      busy(makeButton, box, async () => {
        const t = await tokensApi.create(name, scope.value, label.value);
        await renderTokens(t);
      }),
    );
    const rows = list.map((t) => {
      const revoke = h('button', { type: 'button', class: 'danger', dataset: { revoke: t.id } }, 'Revoke');
      revoke.addEventListener('click', async () => {
        if (!(await confirmAction(`Revoke token ${t.id}?`, 'It opens nothing new, and the connections it opened end at their next request.', 'Revoke'))) return;
        await busy(revoke, box, async () => {
          await tokensApi.revoke(name, t.id);
          toast(`Token ${t.id} revoked.`);
          await renderTokens();
        });
      });
      return h('tr', { dataset: { token: t.id } }, h('td', {}, h('code', {}, t.id)), h('td', {}, t.scope), h('td', {}, t.label), h('td', {}, new Date(t.created_unix * 1000).toLocaleString()), h('td', {}, revoke));
    });
    fill(
      tokensCard,
      h('h2', {}, 'Tokens'),
      h('p', { class: 'hint' }, 'Frontend tokens attach regions and devices to this pool; peer tokens let another host\'s remote store keep pages here. The host keeps only their hashes.'),
      made ? h('div', { class: 'message ok', id: 'new-token' }, `New ${made.scope} token ${made.id} — copy it now, it is not shown again: `, h('code', {}, made.token)) : null,
      h('div', { class: 'inline' }, scope, label, makeButton),
      box.el,
      rows.length
        ? h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'id'), h('th', {}, 'scope'), h('th', {}, 'label'), h('th', {}, 'made'), h('th', {}, ''))), h('tbody', {}, rows)))
        : h('p', { class: 'muted' }, 'None. The API token attaches frontends too; peers need a peer token.'),
    );
  }

  function renderSettings() {
    const box = messageBox();
    const maxPages = h('input', { type: 'number', min: '0', name: 'max_pages', value: info.max_pages ?? '', placeholder: 'no limit' });
    const maxBytes = h('input', { type: 'text', name: 'max_bytes', value: info.max_bytes ?? '', placeholder: 'no limit (e.g. 64M)' });
    const threshold = h('input', { type: 'number', min: '1', max: '100', name: 'accept_threshold_percent', value: info.accept_threshold_percent });
    const check = (key, label) => h('label', { class: 'check' }, h('input', { type: 'checkbox', name: key, checked: info[key] }), label);
    const modes = [check('enabled', 'Accept stores'), check('writethrough', 'Writethrough'), check('exclusive_gets', 'Exclusive gets')];
    const durability = info.persistent
      ? h('select', { name: 'durability' }, ['sync', 'periodic'].map((d) => h('option', { value: d, selected: info.durability === d }, d)))
      : null;
    const interval = info.persistent ? h('input', { type: 'number', name: 'flush_interval_ms', min: '1', max: '60000', value: info.flush_interval_ms ?? '', placeholder: '1000' }) : null;
    const save = h('button', { type: 'submit' }, 'Save settings');
    const form = h(
      'form',
      { id: 'settings-form' },
      h('h2', {}, 'Limits and modes'),
      h('p', { class: 'muted' }, `Now: ${limitsText(info)}.`),
      h('div', { class: 'form-grid' }, field('Max pages', maxPages, 'empty: no limit'), field('Max bytes', maxBytes, 'e.g. 64M or 1G; empty: no limit'), field('Accept again below (%)', threshold)),
      h('div', { class: 'checks' }, modes),
      durability ? h('div', { class: 'form-grid' }, field('Durability', durability), field('Flush interval (ms)', interval, 'periodic only')) : null,
      box.el,
      h('div', { class: 'actions' }, save),
    );
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      busy(save, box, async () => {
        const bytes = fmt.parseSize(maxBytes.value);
        if (Number.isNaN(bytes)) throw { message: `"${maxBytes.value}" is not a size: write bytes, or a number with K, M, G or T.` };
        const patch = {
          max_pages: optionalNumber(maxPages),
          max_bytes: bytes,
          accept_threshold_percent: Number(threshold.value),
        };
        for (const input of form.querySelectorAll('input[type=checkbox]')) patch[input.name] = input.checked;
        if (durability) {
          patch.durability = durability.value;
          if (durability.value === 'periodic' && interval.value.trim() !== '') patch.flush_interval_ms = Number(interval.value);
        }
        info = await poolsApi.patch(name, patch);
        renderAll();
        toast('Settings saved.');
      });
    });
    fill(settingsCard, form);
  }

  function renderActions() {
    const shrinkBox = messageBox();
    const target = h('input', { type: 'number', min: '0', name: 'target_pages', placeholder: 'target pages', 'aria-label': 'Shrink to this many pages' });
    const shrinkButton = h('button', { type: 'button', id: 'shrink' }, 'Shrink');
    shrinkButton.addEventListener('click', () =>
      busy(shrinkButton, shrinkBox, async () => {
        if (target.value.trim() === '') throw { message: 'Give the number of pages the pool should shrink to.' };
        const r = await poolsApi.shrink(name, Number(target.value));
        shrinkBox.ok(`Shrunk from ${fmt.count(r.before)} to ${fmt.count(r.after)} pages: ${fmt.count(r.written_back)} taken back by frontends, ${fmt.count(r.dropped)} writethrough pages dropped.`);
        await refresh();
      }),
    );
    const dangerBox = messageBox();
    const invalidateButton = h('button', { type: 'button', id: 'invalidate-all', class: 'danger' }, 'Invalidate all pages');
    invalidateButton.addEventListener('click', async () => {
      if (!(await confirmAction(`Invalidate every page of ${name}?`, 'Every stored page is dropped (frontswap invalidate_area). The pool stays. This cannot be undone.', 'Invalidate all'))) return;
      await busy(invalidateButton, dangerBox, async () => {
        const r = await poolsApi.invalidateAll(name);
        dangerBox.ok(`Invalidated ${fmt.count(r.pages)} pages.`);
        await refresh();
      });
    });
    const deleteButton = h('button', { type: 'button', id: 'delete-pool', class: 'danger' }, 'Delete pool');
    deleteButton.addEventListener('click', async () => {
      if (!(await confirmAction(`Delete pool ${name}?`, 'Every page is invalidated and the pool is destroyed. This cannot be undone.', 'Delete pool'))) return;
      await busy(deleteButton, dangerBox, async () => {
        await poolsApi.remove(name);
        toast(`Pool ${name} deleted.`);
        location.hash = '#/';
      });
    });
    fill(
      actionsCard,
      h('h2', {}, 'Actions'),
      h('h3', {}, 'Shrink'),
      h('p', { class: 'hint' }, 'Frontends take pages back until the pool holds at most the target (writethrough pools drop their copies).'),
      h('div', { class: 'inline' }, target, shrinkButton),
      shrinkBox.el,
      h('h3', {}, 'Danger zone'),
      h('div', { class: 'actions' }, invalidateButton, deleteButton),
      dangerBox.el,
    );
  }

  function renderAll(chainNote) {
    renderHead();
    renderFrontends();
    renderTokens();
    renderSettings();
    renderActions();
    renderChain(chainNote);
  }

  async function refresh() {
    try {
      info = await poolsApi.get(name);
      headBox.clear();
      renderHead();
      renderFrontends();
      await renderChain();
    } catch (e) {
      headBox.error(e);
    }
  }

  // ----- live -----

  let seen = false;
  let refreshing = null;
  function onSample(sample) {
    const p = sample.pools.find((x) => x.name === name);
    if (!p) {
      if (seen) headBox.error({ message: `Pool ${name} is gone.`, code: 'pool_not_found' });
      return;
    }
    seen = true;
    tileValues.stored_pages.textContent = fmt.count(p.stored_pages);
    tileValues.pool_total_size.textContent = fmt.bytes(p.pool_total_size);
    tileValues.compression_ratio.textContent = fmt.ratio(p.compression_ratio);
    tileValues.store_rate.textContent = fmt.rate(p.rates.succ_stores);
    tileValues.load_rate.textContent = fmt.rate(p.rates.loads);
    tileValues.reject_rate.textContent = fmt.rate(rejectRate(p));
    tileValues.plugin_memory_bytes.textContent = fmt.bytes(p.plugin_memory_bytes);
    tileValues.frontends.textContent = fmt.count(p.frontends);
    for (const { spec, chart } of charts) {
      const [times, columns] = live.series(name, spec.picks);
      chart.setData(times, columns);
    }
    fill(
      counterBody,
      Object.entries(p.counters).map(([k, v]) =>
        h('tr', { dataset: { counter: k } }, h('td', {}, k), h('td', { class: 'num' }, fmt.count(v)), h('td', { class: 'num' }, p.rates[k] === undefined ? '' : fmt.rate(p.rates[k]))),
      ),
    );
    if (info && p.frontends !== info.frontends.length && !refreshing) {
      refreshing = refresh().finally(() => {
        refreshing = null;
      });
    }
  }

  let unsubscribe = () => {};
  poolsApi
    .get(name)
    .then((loaded) => {
      if (destroyed) return;
      info = loaded;
      renderAll();
      unsubscribe = live.subscribe(onSample);
    })
    .catch((e) => {
      fill(head, h('h1', {}, name));
      headBox.error(e);
    });

  return {
    destroy() {
      destroyed = true;
      unsubscribe();
      for (const { chart } of charts) chart.destroy();
    },
  };
}
