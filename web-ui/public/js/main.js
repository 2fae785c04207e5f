// The dashboard's entry point: sign-in state, the hash router (#/, #/pools/NAME, #/create,
// #/plugins), the host totals in the top bar, and the one live statistics stream.
//
// A sign-in link may carry the token in the fragment (`/#token=...`, as `tmem demo` prints):
// the fragment never reaches the server; it is moved to sessionStorage and wiped from the
// address bar at once.

import { api, onSignedOut, setToken, signOut, token } from './api.js';
import * as fmt from './format.js';
import { live } from './live.js';
import { fill, h, toast } from './ui.js';
import { createView } from './views/create.js';
import { overviewView } from './views/overview.js';
import { pluginsView } from './views/plugins.js';
import { poolView } from './views/pool.js';
import { signInView } from './views/signin.js';

const main = document.getElementById('main');
let current = null;
let stopTotals = null;

const ROUTES = [
  [/^#?\/?$/, 'overview', () => overviewView],
  [/^#\/pools\/([^/]+)$/, 'overview', () => poolView],
  [/^#\/create$/, 'create', () => createView],
  [/^#\/plugins$/, 'plugins', () => pluginsView],
];

function showChrome(signedIn) {
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('totals').hidden = !signedIn;
  document.getElementById('signout').hidden = !signedIn;
  if (!signedIn) document.getElementById('live').hidden = true;
}

// Used / the limit stores are held to (the smaller of the operator's limit and the governor's
// target), with the operator's limit beside it when the governor holds stores to less.
function budgetText(memory) {
  if (!memory) return '–';
  const limit = (bytes) => (bytes == null ? 'no limit' : fmt.bytes(bytes));
  const effective = memory.effective_limit_bytes ?? memory.limit_bytes;
  const text = `${fmt.bytes(memory.used_bytes)} / ${limit(effective)}`;
  return effective !== memory.limit_bytes ? `${text} (limit ${limit(memory.limit_bytes)})` : text;
}

// The memory governor: its target, the machine's memory pressure, its last decision.
function governorText(memory) {
  const g = memory && memory.governor;
  if (!g) return '–';
  if (!g.enabled) return 'off';
  const target = g.target_bytes == null ? 'no target' : `target ${fmt.bytes(g.target_bytes)}`;
  const psi = g.psi_some_avg10 == null ? 'no PSI' : `PSI ${g.psi_some_avg10.toFixed(1)}%`;
  return `${target} · ${psi} · ${g.last_decision ?? '–'}${g.last_reason ? ` (${g.last_reason})` : ''}`;
}

function renderTotals(sample) {
  const t = sample.host;
  const item = (label, value, key) => h('span', { class: 'total', dataset: { total: key } }, h('span', { class: 'label' }, label), h('strong', {}, value));
  fill(
    document.getElementById('totals'),
    item('pools', fmt.count(t.pools), 'pools'),
    item('curr_pages', fmt.count(t.curr_pages), 'curr_pages'),
    item('memory', fmt.bytes(t.pool_total_size + t.plugin_memory_bytes), 'memory'),
    item('budget', budgetText(t.memory), 'budget'),
    item('governor', governorText(t.memory), 'governor'),
    item('plugin faults', fmt.count(t.plugin_faults), 'plugin_faults'),
  );
  if (t.integrity_failures > 0) {
    // A plugin returned wrong bytes (refused, never handed out): say so where it is seen.
    const alarm = item('integrity failures', fmt.count(t.integrity_failures), 'integrity_failures');
    alarm.classList.add('alarm');
    alarm.title = 'Loads refused because a plugin returned bytes that differ from the stored page (checksum mismatch). See the pool counters and the host log.';
    document.getElementById('totals').append(alarm);
  }
}

function route() {
  current?.destroy?.();
  current = null;
  main.replaceChildren();
  if (!token()) {
    showChrome(false);
    current = signInView(main, { onSignedIn: signedIn });
    return;
  }
  showChrome(true);
  const hash = location.hash || '#/';
  for (const [pattern, nav, view] of ROUTES) {
    const m = pattern.exec(hash);
    if (!m) continue;
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.nav === nav);
    current = view()(main, ...m.slice(1).map(decodeURIComponent));
    main.focus({ preventScroll: true });
    return;
  }
  fill(main, h('section', { class: 'card' }, h('h1', {}, 'Not found'), h('p', {}, 'There is no such page. '), h('a', { href: '#/' }, 'Back to the overview')));
}

function signedIn() {
  live.start();
  stopTotals = live.subscribe(renderTotals);
  if (!location.hash || location.hash === '#/') route();
  else location.hash = '#/';
}

function signedOut(reason) {
  stopTotals?.();
  stopTotals = null;
  live.stop();
  signOut();
  if (reason) toast(reason, 'error');
  route();
}

async function start() {
  const m = /^#token=([^&]+)/.exec(location.hash);
  if (m) {
    const candidate = decodeURIComponent(m[1]);
    history.replaceState(null, '', `${location.pathname}#/`);
    try {
      await api('GET', '/pools', undefined, { tokenOverride: candidate });
      setToken(candidate);
    } catch (e) {
      toast(`The sign-in link's token was refused: ${e.message}`, 'error');
    }
  }
  document.getElementById('signout').addEventListener('click', () => signedOut());
  onSignedOut(() => {
    if (token()) signedOut('The host refused the token (it may have changed). Sign in again.');
  });
  window.addEventListener('hashchange', route);
  if (token()) {
    live.start();
    stopTotals = live.subscribe(renderTotals);
  }
  route();
}

start();
