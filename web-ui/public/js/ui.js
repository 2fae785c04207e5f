// Small DOM helpers shared by the views: element building, messages where the user acted,
// toasts, and the confirmation dialog. No HTML strings: text is always set as text.

/** h('div', {class: 'x', onclick: f}, child, 'text', ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (key in el && typeof value !== 'string') {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? '' : value);
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** An inline message box (role=alert for errors) that views put next to the control that failed. */
export function messageBox() {
  const el = h('div', { class: 'message', hidden: true });
  return {
    el,
    error(e) {
      el.className = 'message error';
      el.setAttribute('role', 'alert');
      fill(el, h('strong', {}, 'Refused: '), e.message || String(e), e.code ? h('span', { class: 'code' }, ` (${e.code})`) : null);
      el.hidden = false;
    },
    ok(text) {
      el.className = 'message ok';
      el.removeAttribute('role');
      fill(el, text);
      el.hidden = false;
    },
    clear() {
      el.hidden = true;
      el.replaceChildren();
    },
  };
}

export function toast(text, kind = 'ok') {
  const el = h('div', { class: `toast ${kind}` }, text);
  document.getElementById('toasts').append(el);
  setTimeout(() => el.remove(), 5000);
}

/** Asks the user to confirm; resolves to true or false. */
export function confirmAction(title, text, confirmLabel) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  const ok = document.getElementById('confirm-ok');
  const cancel = document.getElementById('confirm-cancel');
  ok.textContent = confirmLabel;
  return new Promise((resolve) => {
    const done = (answer) => {
      ok.removeEventListener('click', yes);
      cancel.removeEventListener('click', no);
      dialog.removeEventListener('cancel', no);
      dialog.close();
      resolve(answer);
    };
    const yes = () => done(true);
    const no = () => done(false);
    ok.addEventListener('click', yes);
    cancel.addEventListener('click', no);
    dialog.addEventListener('cancel', no);
    dialog.showModal();
    cancel.focus();
  });
}

/** Runs `action` with `button` disabled; errors go to `box`. Resolves to the action's result or undefined. */
export async function busy(button, box, action) {
  button.disabled = true;
  box?.clear();
  try {
    return await action();
  } catch (e) {
    if (box) box.error(e);
    else toast(e.message, 'error');
    return undefined;
  } finally {
    button.disabled = false;
  }
}

/** A labelled field wrapper. */
export function field(label, control, hint) {
  return h('label', { class: 'field' }, h('span', { class: 'label' }, label), control, hint ? h('span', { class: 'hint' }, hint) : null);
}
