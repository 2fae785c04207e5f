// The dashboard in a real headless Chromium (Debian's, driven by playwright-core), against a
// real `tmem serve`. tests/all/dashboard.rs starts the host, attaches a frontend to the pool
// this test creates (so shrink has somewhere to send pages), and runs this file with:
//
//   TMEM_URL, TMEM_TOKEN        the host and its API token
//   TMEM_PLUGIN_V1, _V2         the `versioned` fixture's two modules (plugins/versioned-v1, -v2)
//   TMEM_ARTIFACTS              where screenshots and the console log go
//   CHROMIUM                    the browser (default /usr/bin/chromium)
//
// The journey: sign in (a wrong token first), upload a plugin (file picker, then a second
// version by drag and drop, then a bad file), create a pool from it (inline validation with
// the API's messages), drive page traffic through the API and watch counters and charts move,
// set a limit and see rejects, hot swap and roll back, shrink, invalidate all, make and revoke
// a token, delete — at
// 1280px and on a narrow window. Any console error other than the HTTP refusals the test
// provokes on purpose fails it.

import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';

const URL_ = process.env.TMEM_URL;
const TOKEN = process.env.TMEM_TOKEN;
const V1 = process.env.TMEM_PLUGIN_V1;
const V2 = process.env.TMEM_PLUGIN_V2;
const ARTIFACTS = process.env.TMEM_ARTIFACTS || 'test-artifacts';
const POOL = 'web';
const PAGE = 4096;

let browser;
let context;
let page;
const consoleLog = [];
const unexpected = [];

/** The browser's own note on an HTTP error answer the test asked for (401, 400, ...). */
const PROVOKED_HTTP_ERROR = /^Failed to load resource: the server responded with a status of (400|401|404|409|413) /;

async function shot(name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

async function api(method, path, body, contentType = 'application/octet-stream') {
  const response = await fetch(`${URL_}/api/v1${path}`, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': contentType },
    body,
  });
  return response;
}

/** A compressible page whose first bytes say which offset and which round wrote it. */
function pageBytes(offset, round) {
  const bytes = new Uint8Array(PAGE);
  const tag = new TextEncoder().encode(`offset ${offset} round ${round} `);
  for (let i = 0; i < PAGE; i++) bytes[i] = tag[i % tag.length];
  return bytes;
}

/** Drives stores and loads through the REST page API until stopped. */
function traffic(pagesPerTick, offsets) {
  let running = true;
  let round = 0;
  const loop = (async () => {
    while (running) {
      round += 1;
      const puts = [];
      for (let i = 0; i < pagesPerTick; i++) {
        const offset = (round * pagesPerTick + i) % offsets;
        puts.push(api('PUT', `/pools/${POOL}/pages/${offset}`, pageBytes(offset, round)).then((r) => r.arrayBuffer()));
        puts.push(api('GET', `/pools/${POOL}/pages/${(offset * 7) % offsets}`).then((r) => r.arrayBuffer()));
      }
      await Promise.all(puts);
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  return async () => {
    running = false;
    await loop;
  };
}

async function statNumber(selector) {
  const text = await page.locator(selector).first().textContent();
  return Number(text.replace(/[^0-9.]/g, ''));
}

async function chartPixels(key) {
  return page.locator(`[data-chart="${key}"] canvas`).evaluate((c) => c.toDataURL());
}

before(async () => {
  for (const [name, value] of Object.entries({ TMEM_URL: URL_, TMEM_TOKEN: TOKEN, TMEM_PLUGIN_V1: V1, TMEM_PLUGIN_V2: V2 })) {
    assert.ok(value, `${name} must be set (tests/all/dashboard.rs sets it)`);
  }
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.on('console', (message) => {
    const line = `[${message.type()}] ${message.text()}`;
    consoleLog.push(line);
    if (message.type() === 'error' && !PROVOKED_HTTP_ERROR.test(message.text())) unexpected.push(line);
  });
  page.on('pageerror', (error) => {
    consoleLog.push(`[pageerror] ${error.stack || error}`);
    unexpected.push(`[pageerror] ${error.message}`);
  });
});

after(async () => {
  writeFileSync(join(ARTIFACTS, 'console.log'), consoleLog.join('\n') + '\n');
  await browser?.close();
});

/** Selects the option of `select` whose label starts with `prefix`. */
async function selectByLabelPrefix(select, prefix) {
  const value = await select.evaluate((el, prefix) => [...el.options].find((o) => o.label.startsWith(prefix))?.value, prefix);
  assert.ok(value, `an option starting with ${prefix}`);
  await select.selectOption(value);
}

test('an operator manages tmem from the dashboard', { timeout: 300_000 }, async (t) => {
  // Steps run in order; after a failure the rest are skipped (each would only time out), and
  // the page at the failure is saved.
  let failed = false;
  const step = (name, body) =>
    t.test(name, async (s) => {
      if (failed) return s.skip('an earlier step failed');
      try {
        await body();
      } catch (e) {
        failed = true;
        await shot(`failed-${name.slice(0, 40).replace(/[^a-z0-9]+/gi, '-')}`).catch(() => {});
        throw e;
      }
    });

  await step('sign in: a wrong token is refused where it was typed, the right one opens the overview', async () => {
    await page.goto(URL_);
    await page.locator('#token').fill('not-the-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').filter({ hasText: 'The host refused this token.' }).waitFor();
    await shot('01-sign-in-refused');
    await page.locator('#token').fill(TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Pools' }).waitFor();
    await page.locator('[data-pool="demo"]').waitFor();
    await page.locator('#live', { hasText: 'live' }).waitFor();
    await page.locator('[data-total="curr_pages"]').waitFor();
    assert.equal(await page.evaluate(() => localStorage.length), 0, 'the token is not kept beyond the session');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('tmem.token')), TOKEN);
    await shot('02-overview');
  });

  await step('plugins: upload by file picker and by drag and drop, refuse a bad file', async () => {
    await page.getByRole('link', { name: 'Plugins' }).click();
    await page.getByRole('heading', { name: 'Registered' }).waitFor();
    await page.locator('#plugin-file').setInputFiles(V1);
    await page.locator('.message.ok', { hasText: 'Registered versioned 1.0.0' }).waitFor();
    await page.locator('tr[data-plugin="versioned"][data-version="1.0.0"]').waitFor();

    // Drag and drop the second version: a real DataTransfer carrying the file's bytes.
    const bytes = [...readFileSync(V2)];
    const transfer = await page.evaluateHandle(
      ({ bytes, name }) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], name, { type: 'application/wasm' }));
        return dt;
      },
      { bytes, name: basename(V2) },
    );
    await page.locator('#dropzone').dispatchEvent('dragenter', { dataTransfer: transfer });
    await page.locator('#dropzone').dispatchEvent('drop', { dataTransfer: transfer });
    await page.locator('.message.ok', { hasText: 'Registered versioned 2.0.0' }).waitFor();
    await page.locator('tr[data-plugin="versioned"][data-version="2.0.0"]').waitFor();

    // A large file shows upload progress, then the host's refusal where the user dropped it.
    await page.evaluate(() => {
      window.progressSeen = [];
      const bar = document.getElementById('upload-progress');
      new MutationObserver(() => window.progressSeen.push(bar.value)).observe(bar, { attributes: true });
      bar.addEventListener('change', () => window.progressSeen.push(bar.value));
      const text = bar.nextElementSibling;
      new MutationObserver(() => window.progressSeen.push(text.textContent)).observe(text, { childList: true, characterData: true, subtree: true });
    });
    await page.locator('#plugin-file').setInputFiles({ name: 'big.wasm', mimeType: 'application/wasm', buffer: Buffer.alloc(8 << 20, 7) });
    const refusal = page.getByRole('alert');
    await refusal.waitFor();
    assert.match(await refusal.textContent(), /invalid_plugin/);
    const seen = await page.evaluate(() => window.progressSeen);
    assert.ok(seen.some((s) => typeof s === 'string' && /^Uploading big\.wasm: \d+%$/.test(s)), `upload progress was shown: ${JSON.stringify(seen.slice(0, 10))}`);
    await shot('03-plugins');
  });

  await step('create a pool from the uploaded plugin, validated inline by the API', async () => {
    await page.getByRole('link', { name: 'Create pool' }).click();
    await page.locator('#create-form').waitFor();
    await page.locator('#pool-name').fill('bad name!');
    await page.locator('.validation.error').waitFor();
    assert.match(await page.locator('.validation').textContent(), /invalid_pool/);
    await page.locator('#pool-name').fill('demo');
    await page.locator('.validation.error', { hasText: 'pool_exists' }).waitFor();
    await page.locator('#pool-name').fill(POOL);
    await page.locator('#add-filter').click();
    const filter = page.locator('fieldset.filter');
    await filter.locator('select[name="plugin-0"]').selectOption('versioned');
    await selectByLabelPrefix(filter.locator('select[name="version-0"]'), '1.0.0');
    const store = page.locator('fieldset.store');
    await store.locator('select').first().selectOption('sled');
    await page.locator('.validation.error', { hasText: 'storage' }).waitFor();
    await store.locator('select').first().selectOption('ram');
    await page.locator('.validation.ok', { hasText: 'versioned 1.0.0 → ram' }).waitFor();
    await shot('04-create-pool');
    await page.locator('#create').click();
    await page.waitForURL(/#\/pools\/web$/);
    await page.getByRole('heading', { name: POOL }).waitFor();
  });

  await step('pool page: traffic through the API moves the counters and the charts; its frontend is listed', async () => {
    await page.locator('[data-stat="frontends"]', { hasText: '1' }).waitFor({ timeout: 30_000 });
    await page.locator('#frontends td', { hasText: 'dashboard-test-device' }).waitFor({ timeout: 30_000 });
    const before = await chartPixels('ops');
    const stop = traffic(20, 300);
    await page.waitForFunction(() => Number(document.querySelector('[data-stat="stored_pages"]').textContent.replace(/\D/g, '')) >= 200, null, { timeout: 60_000 });
    await page.waitForFunction(() => /[1-9]/.test(document.querySelector('[data-stat="store_rate"]').textContent), null, { timeout: 30_000 });
    const succ = Number((await page.locator('tr[data-counter="succ_stores"] td').nth(1).textContent()).replace(/\D/g, ''));
    assert.ok(succ >= 200, `succ_stores ${succ}`);
    assert.notEqual(await chartPixels('ops'), before, 'the operations chart was redrawn with the traffic');
    const pagesChart = await chartPixels('pages');
    await new Promise((r) => setTimeout(r, 2500));
    assert.notEqual(await chartPixels('pages'), pagesChart, 'the chart keeps moving, sample after sample');
    await shot('05-pool-live');

    // A page limit through the settings form: stores beyond it are refused, by reason.
    await page.locator('#settings-form input[name="max_pages"]').fill('250');
    await page.locator('#settings-form').getByRole('button', { name: 'Save settings' }).click();
    await page.locator('.toast', { hasText: 'Settings saved.' }).waitFor();
    await page.waitForFunction(() => Number(document.querySelector('tr[data-counter="pool_limit_hit"] td:nth-child(2)').textContent.replace(/\D/g, '')) > 0, null, { timeout: 60_000 });
    await stop();
    const info = await (await api('GET', `/pools/${POOL}`)).json();
    assert.equal(info.max_pages, 250);
    assert.ok(info.counters.pool_limit_hit > 0);
    await shot('06-pool-limit-rejects');
  });

  await step('hot swap to 2.0.0 keeps old pages readable, and rolls back', async () => {
    // A page the pool holds: an overwrite refused at the page limit above dropped its old
    // copy (the duplicate-store rule), so not every offset the traffic wrote is present.
    let probe = null;
    let before = null;
    for (let offset = 0; offset < 300 && probe === null; offset++) {
      const response = await api('GET', `/pools/${POOL}/pages/${offset}`);
      if (response.status === 200) [probe, before] = [offset, response];
      else await response.arrayBuffer();
    }
    assert.notEqual(probe, null, 'the pool holds pages of the traffic');
    const bytes = new Uint8Array(await before.arrayBuffer());
    await selectByLabelPrefix(page.locator('select[data-plugin="versioned"]'), '2.0.0');
    await page.locator('#swap').click();
    await page.locator('#chain .message.ok', { hasText: 'Swapped' }).waitFor();
    await page.locator('#chain tr.current', { hasText: 'versioned 2.0.0' }).waitFor();
    assert.equal(await page.locator('#chain table.generations tbody tr').count(), 2, 'the old generation still holds pages');
    const after = await api('GET', `/pools/${POOL}/pages/${probe}`);
    assert.equal(after.status, 200, 'a page stored by 1.0.0 is read back through 1.0.0 after the swap');
    assert.deepEqual(new Uint8Array(await after.arrayBuffer()), bytes);
    const put = await api('PUT', `/pools/${POOL}/pages/100000`, pageBytes(100000, 0));
    assert.ok([201, 507].includes(put.status), `store after the swap: ${put.status}`);
    await shot('07-hot-swapped');
    await page.locator('#rollback').click();
    await page.locator('#chain .message.ok', { hasText: 'Rolled back' }).waitFor();
    await page.locator('#chain tr.current', { hasText: 'versioned 1.0.0' }).waitFor();
    const info = await (await api('GET', `/pools/${POOL}`)).json();
    assert.equal(info.backends[0].version, '1.0.0');
  });

  await step('shrink hands pages to the frontend; invalidate all asks first', async () => {
    await page.locator('input[name="target_pages"]').fill('10');
    await page.locator('#shrink').click();
    const done = page.locator('#actions .message.ok', { hasText: 'Shrunk from' });
    await done.waitFor();
    assert.match(await done.textContent(), /to 10 pages: [1-9][\d,]* taken back by frontends/);
    const info = await (await api('GET', `/pools/${POOL}`)).json();
    assert.equal(info.counters.stored_pages, 10);
    await page.locator('[data-stat="stored_pages"]', { hasText: /^10$/ }).waitFor();

    await page.locator('#invalidate-all').click();
    await page.locator('#confirm').getByRole('button', { name: 'Cancel' }).click();
    assert.equal((await (await api('GET', `/pools/${POOL}`)).json()).counters.stored_pages, 10, 'cancel changes nothing');
    await page.locator('#invalidate-all').click();
    await shot('08-confirm-invalidate');
    await page.locator('#confirm-ok').click();
    await page.locator('#actions .message.ok', { hasText: 'Invalidated 10 pages.' }).waitFor();
    await shot('09-pool-after-actions');
  });

  await step('tokens: made (shown once), listed without the secret, revoked after confirming', async () => {
    await page.locator('select[name="token_scope"]').selectOption('peer');
    await page.locator('input[name="token_label"]').fill('host b');
    await page.locator('#make-token').click();
    const made = page.locator('#new-token code');
    await made.waitFor();
    const secret = (await made.textContent()).trim();
    assert.match(secret, /^tmem_peer_[0-9a-f]{64}$/);
    const listed = await (await api('GET', `/pools/${POOL}/tokens`)).json();
    assert.equal(listed.length, 1);
    assert.deepEqual([listed[0].scope, listed[0].label, listed[0].token], ['peer', 'host b', undefined]);
    const row = page.locator(`#tokens tr[data-token="${listed[0].id}"]`);
    await row.waitFor();
    assert.ok(!(await page.locator('#tokens table').textContent()).includes(secret), 'the list never shows the token');
    await shot('09b-tokens');
    await row.getByRole('button', { name: 'Revoke' }).click();
    await page.locator('#confirm-ok').click();
    await row.waitFor({ state: 'detached' });
    assert.deepEqual(await (await api('GET', `/pools/${POOL}/tokens`)).json(), []);
  });

  await step('a narrow window: no sideways scrolling, everything reachable', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await new Promise((r) => setTimeout(r, 1200));
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the pool page scrolls sideways by ${overflow}px at 390px`);
    await shot('10-pool-narrow');
    await page.getByRole('link', { name: 'Overview' }).click();
    await page.locator('[data-pool="web"]').waitFor();
    assert.ok((await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)) <= 0, 'the overview fits 390px');
    await shot('11-overview-narrow');
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  await step('delete the pool (after confirming); the overview drops it', async () => {
    await page.locator('[data-pool="web"] h2 a').click();
    await page.locator('#delete-pool').click();
    await page.locator('#confirm-ok').click();
    await page.getByRole('heading', { name: 'Pools' }).waitFor();
    await page.locator('[data-pool="web"]').waitFor({ state: 'detached' });
    assert.equal((await api('GET', `/pools/${POOL}`)).status, 404);
    await shot('12-overview-after-delete');
  });

  await step('a plugin version nothing uses any more can be removed', async () => {
    await page.getByRole('link', { name: 'Plugins' }).click();
    const row = page.locator('tr[data-plugin="versioned"][data-version="2.0.0"]');
    await row.getByRole('button', { name: 'Remove' }).click();
    await page.locator('#confirm-ok').click();
    await row.waitFor({ state: 'detached' });
    const left = await (await api('GET', '/plugins/versioned')).json();
    assert.deepEqual(left.versions.map((v) => v.version), ['1.0.0']);
    assert.ok(await page.locator('tr[data-plugin="zstd"] button', { hasText: 'Remove' }).isDisabled(), 'a bundled plugin cannot be removed');
    await shot('13-plugins-after-remove');
  });

  await step('tiers: a tiered pool shows its lower tier and the flow between them', async () => {
    const json = 'application/json';
    const lower = { name: 'cold', backends: [{ plugin: 'zstd', config: { level: 9 } }, { plugin: 'ram' }] };
    assert.equal((await api('POST', '/pools', JSON.stringify(lower), json)).status, 201);
    const upper = { name: 'warm', backends: [{ plugin: 'lz4' }, { plugin: 'ram' }], tier: { lower: 'cold', idle_seconds: 1 } };
    assert.equal((await api('POST', '/pools', JSON.stringify(upper), json)).status, 201);
    for (let offset = 0; offset < 20; offset++) {
      assert.equal((await api('PUT', `/pools/warm/pages/${offset}`, pageBytes(offset, 0))).status, 201);
    }
    await page.getByRole('link', { name: 'Overview' }).click();
    await page.locator('[data-pool="warm"] [data-tier="cold"]').waitFor();
    await page.locator('[data-pool="cold"] [data-tier-of="warm"]').waitFor();
    // The host's own mover moves the idle pages down within a few seconds.
    await page.waitForFunction(() => /^\(20 down/.test(document.querySelector('[data-pool="warm"] [data-stat="tier_flow"]')?.textContent ?? ''), null, { timeout: 30_000 });
    await shot('14-overview-tiers');
    await page.locator('[data-pool="warm"] h2 a').click();
    await page.locator('#tier', { hasText: '20 pages below' }).waitFor({ timeout: 30_000 });
    await shot('15-pool-tier');
    assert.equal((await api('GET', `/pools/warm/pages/3`)).status, 200, 'a demoted page reads back through the upper pool');
    assert.equal((await api('PUT', `/pools/cold/pages/3`, pageBytes(3, 0))).status, 409, 'the lower pool refuses the page API');
    assert.equal((await api('DELETE', '/pools/warm')).status, 204);
    assert.equal((await api('DELETE', '/pools/cold')).status, 204);
  });

  await step('no console errors', () => {
    assert.deepEqual(unexpected, [], `console errors:\n${unexpected.join('\n')}`);
  });
});
