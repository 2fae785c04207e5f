// Create pool: a form that builds the backend chain (filters, then one store) from the
// registered plugins, with a field for every config key the chosen version declares and a
// grant for every capability it asks for. As the user types, the config is checked by the
// host itself (`POST /api/v1/pools?dry_run=true`), so the form shows the API's own messages.

import { plugins as pluginsApi, pools as poolsApi } from '../api.js';
import * as fmt from '../format.js';
import { field, fill, h, messageBox, toast } from '../ui.js';

const PAGE_SIZES = [4096, 8192, 16384, 65536, 2097152];

/** A control for one declared config key; `read()` gives the value to send, or undefined for the default. */
function configControl(key, id) {
  const doc = key.doc;
  switch (key.type) {
    case 'integer': {
      const input = h('input', { type: 'number', id, min: key.min, max: key.max, placeholder: `default ${key.default}`, dataset: { key: key.key } });
      return { el: field(`${key.key}`, input, `${doc} (${key.min} to ${key.max})`), read: () => (input.value.trim() === '' ? undefined : Number(input.value)) };
    }
    case 'bool': {
      const input = h('input', { type: 'checkbox', id, checked: key.default, dataset: { key: key.key } });
      return { el: h('label', { class: 'check' }, input, `${key.key}: ${doc}`), read: () => (input.checked === key.default ? undefined : input.checked) };
    }
    case 'enum': {
      const select = h('select', { id, dataset: { key: key.key } }, key.values.map((v) => h('option', { value: v, selected: v === key.default }, v)));
      return { el: field(key.key, select, doc), read: () => (select.value === key.default ? undefined : select.value) };
    }
    case 'string_list': {
      const area = h('textarea', { id, rows: 2, placeholder: 'one per line', dataset: { key: key.key } });
      const read = () => {
        const items = area.value.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
        return items.length ? items : undefined;
      };
      return { el: field(key.key, area, doc), read };
    }
    case 'secret': {
      const input = h('input', { type: 'password', id, autocomplete: 'off', dataset: { key: key.key } });
      return { el: field(key.key, input, doc), read: () => (input.value === '' ? undefined : input.value) };
    }
    default:
      return { el: h('p', { class: 'hint' }, `${key.key}: ${doc} (type ${key.type} is set through the API)`), read: () => undefined };
  }
}

/** One link of the chain being built: plugin, version, config, grants. */
function linkEditor(catalog, kind, index, onChange, onRemove) {
  const choices = catalog.filter((p) => p.versions[p.versions.length - 1].kind === kind);
  const pluginSelect = h('select', { name: `plugin-${index}`, 'aria-label': `${kind} plugin` }, choices.map((p) => h('option', { value: p.name }, p.name)));
  const versionSelect = h('select', { name: `version-${index}`, 'aria-label': 'version' });
  const configBox = h('div', { class: 'config-fields' });
  const grantsBox = h('div', { class: 'grants' });
  const description = h('p', { class: 'description hint' });
  let controls = [];
  let grants = [];

  function version() {
    const plugin = choices.find((p) => p.name === pluginSelect.value);
    return plugin?.versions.find((v) => v.sha256 === versionSelect.value) ?? plugin?.versions[plugin.versions.length - 1];
  }

  function renderVersion() {
    const v = version();
    controls = (v?.config ?? []).map((key, i) => configControl(key, `cfg-${index}-${i}`));
    fill(configBox, controls.map((c) => c.el));
    grants = (v?.capabilities ?? []).map((cap) => {
      const input = h('input', { type: 'checkbox', name: `grant-${index}-${cap}`, value: cap });
      return { cap, input, el: h('label', { class: 'check grant' }, input, `Grant ${cap} — this plugin asks for it`) };
    });
    fill(grantsBox, grants.map((g) => g.el));
    fill(description, v?.description ?? '');
  }

  function renderVersions() {
    const plugin = choices.find((p) => p.name === pluginSelect.value);
    const versions = plugin ? [...plugin.versions].reverse() : [];
    fill(versionSelect, versions.map((v, i) => h('option', { value: v.sha256 }, `${v.version} (${v.sha256.slice(0, 8)})${i === 0 ? ' — newest' : ''}`)));
    renderVersion();
  }

  pluginSelect.addEventListener('change', () => {
    renderVersions();
    onChange();
  });
  versionSelect.addEventListener('change', () => {
    renderVersion();
    onChange();
  });
  const el = h(
    'fieldset',
    { class: `link-editor ${kind}`, dataset: { link: String(index) } },
    h('legend', {}, kind === 'store' ? 'Store (last)' : `Filter ${index + 1}`),
    h('div', { class: 'form-grid' }, field('Plugin', pluginSelect), field('Version', versionSelect)),
    description,
    configBox,
    grantsBox,
    onRemove ? h('button', { type: 'button', class: 'secondary small', onclick: onRemove }, 'Remove filter') : null,
  );
  renderVersions();
  return {
    el,
    empty: choices.length === 0,
    request() {
      const config = {};
      for (const c of controls) {
        const value = c.read();
        if (value !== undefined) config[c.el.querySelector('[data-key]').dataset.key] = value;
      }
      const request = { plugin: pluginSelect.value, version: versionSelect.value };
      if (Object.keys(config).length) request.config = config;
      const granted = grants.filter((g) => g.input.checked).map((g) => g.cap);
      if (granted.length) request.grants = granted;
      return request;
    },
  };
}

export function createView(main) {
  const box = messageBox();
  const status = h('div', { class: 'validation', 'aria-live': 'polite' });
  fill(main, h('div', { class: 'page-head' }, h('h1', {}, 'Create pool')), box.el);
  let checking = null;
  let timer = null;

  pluginsApi
    .list()
    .then((catalog) => build(catalog))
    .catch((e) => box.error(e));

  function build(catalog) {
    const name = h('input', { type: 'text', name: 'name', id: 'pool-name', required: true, maxlength: 64, pattern: '[A-Za-z0-9._-]+', placeholder: 'e.g. swap0', autocomplete: 'off' });
    const pageSize = h('select', { name: 'page_size' }, PAGE_SIZES.map((s) => h('option', { value: s }, fmt.bytes(s))));
    const maxPages = h('input', { type: 'number', name: 'max_pages', min: '1', placeholder: 'no limit' });
    const maxBytes = h('input', { type: 'text', name: 'max_bytes', placeholder: 'no limit (e.g. 256M)' });
    const threshold = h('input', { type: 'number', name: 'accept_threshold_percent', min: '1', max: '100', value: '90' });
    const writethrough = h('input', { type: 'checkbox', name: 'writethrough' });
    const exclusive = h('input', { type: 'checkbox', name: 'exclusive_gets' });
    const filters = [];
    const filterBox = h('div', { class: 'filters' });
    const store = linkEditor(catalog, 'store', 0, changed, null);
    const addFilter = h('button', { type: 'button', class: 'secondary', id: 'add-filter' }, 'Add filter');
    const submit = h('button', { type: 'submit', id: 'create' }, 'Create pool');

    function renderFilters() {
      fill(filterBox, filters.map((f) => f.el));
    }
    addFilter.addEventListener('click', () => {
      const editor = linkEditor(catalog, 'filter', filters.length, changed, () => {
        filters.splice(filters.indexOf(editor), 1);
        renderFilters();
        changed();
      });
      if (editor.empty) {
        box.error({ message: 'No filter plugins are registered. Upload one on the Plugins page.' });
        return;
      }
      filters.push(editor);
      renderFilters();
      changed();
    });

    function config() {
      const bytes = fmt.parseSize(maxBytes.value);
      if (Number.isNaN(bytes)) throw { message: `max bytes: "${maxBytes.value}" is not a size (write bytes, or a number with K, M, G or T).` };
      const c = {
        name: name.value.trim(),
        page_size: Number(pageSize.value),
        backends: [...filters.map((f) => f.request()), store.request()],
        accept_threshold_percent: Number(threshold.value || 90),
        writethrough: writethrough.checked,
        exclusive_gets: exclusive.checked,
      };
      if (maxPages.value.trim() !== '') c.max_pages = Number(maxPages.value);
      if (bytes !== null) c.max_bytes = bytes;
      return c;
    }

    function showStatus(kind, ...children) {
      status.className = `validation ${kind}`;
      fill(status, ...children);
    }

    async function check() {
      checking?.abort();
      const controller = new AbortController();
      checking = controller;
      let c;
      try {
        c = config();
      } catch (e) {
        showStatus('error', e.message);
        return false;
      }
      if (!c.name) {
        showStatus('pending', 'Give the pool a name.');
        return false;
      }
      try {
        const result = await poolsApi.check(c, controller.signal);
        showStatus('ok', '✓ Valid: ', fmt.chain(result.backends));
        return true;
      } catch (e) {
        if (e.name === 'AbortError') return false;
        showStatus('error', e.message, h('span', { class: 'code' }, ` (${e.code})`));
        return false;
      }
    }

    function changed() {
      clearTimeout(timer);
      showStatus('pending', 'Checking…');
      timer = setTimeout(check, 300);
    }

    const form = h(
      'form',
      { class: 'card create-form', id: 'create-form', novalidate: true },
      h('h2', {}, 'Pool'),
      h('div', { class: 'form-grid' }, field('Name', name, 'letters, digits, - _ .'), field('Page size', pageSize), field('Max pages', maxPages, 'empty: no limit'), field('Max bytes', maxBytes, 'empty: no limit'), field('Accept again below (%)', threshold, 'after a limit is hit')),
      h('div', { class: 'checks' }, h('label', { class: 'check' }, writethrough, 'Writethrough (the frontend also writes every page to its device)'), h('label', { class: 'check' }, exclusive, 'Exclusive gets (a load also removes the page)')),
      h('h2', {}, 'Backend chain'),
      h('p', { class: 'hint' }, 'Pages go through the filters in order, then into the store.'),
      filterBox,
      h('div', { class: 'actions' }, addFilter),
      store.el,
      status,
      h('div', { class: 'actions' }, submit),
    );
    form.addEventListener('input', changed);
    form.addEventListener('change', changed);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      clearTimeout(timer);
      submit.disabled = true;
      try {
        const c = config();
        const pool = await poolsApi.create(c);
        toast(`Pool ${pool.name} created: ${fmt.chain(pool.backends)}.`);
        location.hash = `#/pools/${encodeURIComponent(pool.name)}`;
      } catch (e) {
        showStatus('error', e.message, e.code ? h('span', { class: 'code' }, ` (${e.code})`) : null);
      } finally {
        submit.disabled = false;
      }
    });
    if (store.empty) box.error({ message: 'No store plugins are registered: a pool needs one (the bundled ram store should be there).' });
    main.append(form);
    name.focus();
  }

  return {
    destroy() {
      clearTimeout(timer);
      checking?.abort();
    },
  };
}
