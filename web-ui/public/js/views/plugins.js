// Plugins: upload a Wasm module (file picker or drag and drop, with progress), list every
// registered plugin and version (kind, ABI, sha256, size, capabilities, the pools using it),
// and remove the versions nothing uses.

import { plugins as pluginsApi } from '../api.js';
import * as fmt from '../format.js';
import { busy, confirmAction, field, fill, h, messageBox, toast } from '../ui.js';

export function pluginsView(main) {
  const uploadBox = messageBox();
  const listBox = messageBox();
  const list = h('div', { class: 'table-wrap' });
  const fileInput = h('input', { type: 'file', id: 'plugin-file', accept: '.wasm,application/wasm', class: 'visually-hidden' });
  const nameInput = h('input', { type: 'text', id: 'plugin-name', name: 'name', placeholder: 'the name the plugin gives itself', autocomplete: 'off' });
  const progress = h('progress', { max: 1, value: 0, hidden: true, id: 'upload-progress' });
  const progressText = h('span', { class: 'muted' });
  const drop = h(
    'div',
    { class: 'dropzone', id: 'dropzone', tabindex: '0', role: 'button', 'aria-label': 'Choose or drop a .wasm file' },
    h('strong', {}, 'Drop a .wasm plugin here'),
    h('span', {}, ' or '),
    h('label', { for: 'plugin-file', class: 'button secondary' }, 'choose a file'),
    fileInput,
  );

  async function upload(file) {
    if (!file) return;
    uploadBox.clear();
    progress.hidden = false;
    progress.value = 0;
    progressText.textContent = `Uploading ${file.name} (${fmt.bytes(file.size)})…`;
    try {
      const { status, body } = await pluginsApi.upload(file, nameInput.value.trim() || null, (f) => {
        progress.value = f;
        progressText.textContent = `Uploading ${file.name}: ${Math.round(f * 100)}%`;
      });
      progress.value = 1;
      uploadBox.ok(
        status === 201
          ? `Registered ${body.name} ${body.version} (${body.kind}, sha256 ${body.sha256.slice(0, 12)}…).`
          : `${body.name} ${body.version} was already registered with these exact bytes.`,
      );
      toast(`Plugin ${body.name} ${body.version} uploaded.`);
      await load();
    } catch (e) {
      uploadBox.error(e);
    } finally {
      progressText.textContent = '';
      progress.hidden = true;
      fileInput.value = '';
    }
  }

  fileInput.addEventListener('change', () => upload(fileInput.files[0]));
  drop.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      fileInput.click();
    }
  });
  for (const type of ['dragenter', 'dragover']) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add('over');
    });
  }
  for (const type of ['dragleave', 'drop']) drop.addEventListener(type, () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    const files = [...(e.dataTransfer?.files ?? [])];
    if (files.length !== 1) {
      uploadBox.error({ message: 'Drop exactly one .wasm file.' });
      return;
    }
    upload(files[0]);
  });

  function versionRow(plugin, v) {
    const removable = !v.bundled && v.used_by.length === 0;
    const remove = h('button', { type: 'button', class: 'danger small', disabled: !removable, title: v.bundled ? 'Bundled with tmem' : v.used_by.length ? `Used by ${v.used_by.join(', ')}` : 'Remove this version' }, 'Remove');
    remove.addEventListener('click', async () => {
      if (!(await confirmAction(`Remove ${plugin.name} ${v.version}?`, `The module ${v.sha256.slice(0, 12)}… is deleted from the host.`, 'Remove'))) return;
      await busy(remove, listBox, async () => {
        await pluginsApi.remove(plugin.name, v.sha256);
        toast(`Removed ${plugin.name} ${v.version}.`);
        await load();
      });
    });
    return h(
      'tr',
      { dataset: { plugin: plugin.name, version: v.version } },
      h('td', {}, plugin.name, v.bundled ? h('span', { class: 'badge' }, 'bundled') : null),
      h('td', {}, v.version),
      h('td', {}, v.kind),
      h('td', { class: 'num' }, String(v.abi)),
      h('td', {}, h('code', { title: v.sha256 }, `${v.sha256.slice(0, 12)}…`)),
      h('td', { class: 'num' }, fmt.bytes(v.size)),
      h('td', {}, v.capabilities.length ? v.capabilities.join(', ') : '—'),
      h('td', { class: 'used-by' }, v.used_by.length ? v.used_by.map((p) => h('a', { href: `#/pools/${encodeURIComponent(p)}` }, p)) : h('span', { class: 'muted' }, 'unused')),
      h('td', {}, remove),
    );
  }

  async function load() {
    try {
      const plugins = await pluginsApi.list();
      listBox.clear();
      fill(
        list,
        h(
          'table',
          { class: 'plugins' },
          h('thead', {}, h('tr', {}, ['plugin', 'version', 'kind', 'ABI', 'sha256', 'size', 'needs', 'used by', ''].map((t) => h('th', {}, t)))),
          h('tbody', {}, plugins.flatMap((p) => [...p.versions].reverse().map((v) => versionRow(p, v)))),
        ),
      );
    } catch (e) {
      listBox.error(e);
    }
  }

  fill(
    main,
    h('div', { class: 'page-head' }, h('h1', {}, 'Plugins')),
    h(
      'section',
      { class: 'card' },
      h('h2', {}, 'Upload'),
      h('p', { class: 'hint' }, 'A filter or store built with the tmem SDK (wasm32). New bytes under an existing name add a version; pools keep the version they run until you hot swap them.'),
      field('Register as', nameInput, 'optional'),
      drop,
      h('div', { class: 'inline' }, progress, progressText),
      uploadBox.el,
    ),
    h('section', { class: 'card' }, h('h2', {}, 'Registered'), listBox.el, list),
  );
  load();
  return {};
}
