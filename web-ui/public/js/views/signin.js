// Sign in: the API token, checked against the host before it is kept (sessionStorage only).

import { api, setToken } from '../api.js';
import { fill, h, messageBox } from '../ui.js';

export function signInView(main, { onSignedIn }) {
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'current-password', required: true, spellcheck: 'false' });
  const box = messageBox();
  const button = h('button', { type: 'submit' }, 'Sign in');
  const form = h(
    'form',
    { class: 'card signin', onsubmit: submit },
    h('h1', {}, 'Sign in to tmem'),
    h('p', {}, 'Paste the API token. It is kept for this browser tab only.'),
    h('label', { class: 'field', for: 'token' }, h('span', { class: 'label' }, 'API token'), input),
    box.el,
    h('div', { class: 'actions' }, button),
    h(
      'p',
      { class: 'hint' },
      'The token is in the host\'s data dir (',
      h('code', {}, 'DATA_DIR/token'),
      ', or ',
      h('code', {}, 'TMEM_TOKEN'),
      '); ',
      h('code', {}, 'tmem demo'),
      ' prints a sign-in link.',
    ),
  );

  async function submit(event) {
    event.preventDefault();
    const candidate = input.value.trim();
    if (!candidate) return;
    button.disabled = true;
    box.clear();
    try {
      await api('GET', '/pools', undefined, { tokenOverride: candidate });
      setToken(candidate);
      onSignedIn();
    } catch (e) {
      box.error(e.status === 401 ? { message: 'The host refused this token.', code: e.code } : e);
      input.select();
    } finally {
      button.disabled = false;
    }
  }

  fill(main, form);
  input.focus();
  return {};
}
