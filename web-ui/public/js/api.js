// The dashboard's only way to the host: the REST API under /api/v1, with the token the user
// signed in with. The token lives in sessionStorage (this tab, this browser session) and is
// sent as `Authorization: Bearer ...`; nothing else is stored.
//
// Every failure becomes an ApiFailure carrying the API's own code and message
// ({"error": {"code", "message"}}), so views show the host's words where the user acted.

const TOKEN_KEY = 'tmem.token';
const BASE = '/api/v1';

export class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
}

const signedOutListeners = new Set();
/** Calls `f` when the host refuses the token (it was changed, or the host restarted with another). */
export function onSignedOut(f) {
  signedOutListeners.add(f);
}

async function failureOf(response) {
  let code = `http_${response.status}`;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code;
      message = body.error.message;
    }
  } catch {
    // Not JSON: keep the status line.
  }
  if (response.status === 401) {
    for (const f of signedOutListeners) f();
  }
  return new ApiFailure(response.status, code, message);
}

/**
 * Calls the API. `body` is sent as JSON unless it is a Blob/ArrayBuffer (sent as bytes).
 * Resolves to the parsed JSON (or null for 204); rejects with an ApiFailure.
 */
export async function api(method, path, body, { tokenOverride, signal } = {}) {
  const headers = { Authorization: `Bearer ${tokenOverride ?? token() ?? ''}` };
  let payload;
  if (body instanceof Blob || body instanceof ArrayBuffer || ArrayBuffer.isView(body)) {
    headers['Content-Type'] = 'application/octet-stream';
    payload = body;
  } else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(BASE + path, { method, headers, body: payload, signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiFailure(0, 'unreachable', `The host did not answer (${e.message}). Is tmem serve running?`);
  }
  if (!response.ok) throw await failureOf(response);
  if (response.status === 204) return null;
  const type = response.headers.get('Content-Type') || '';
  return type.includes('application/json') ? response.json() : response.arrayBuffer();
}

export const pools = {
  list: () => api('GET', '/pools'),
  get: (name) => api('GET', `/pools/${encodeURIComponent(name)}`),
  create: (config) => api('POST', '/pools', config),
  check: (config, signal) => api('POST', '/pools?dry_run=true', config, { signal }),
  patch: (name, patch) => api('PATCH', `/pools/${encodeURIComponent(name)}`, patch),
  remove: (name) => api('DELETE', `/pools/${encodeURIComponent(name)}`),
  invalidateAll: (name) => api('DELETE', `/pools/${encodeURIComponent(name)}/pages`),
  shrink: (name, targetPages) => api('POST', `/pools/${encodeURIComponent(name)}/shrink`, { target_pages: targetPages }),
};

export const tokens = {
  list: (pool) => api('GET', `/pools/${encodeURIComponent(pool)}/tokens`),
  create: (pool, scope, label) => api('POST', `/pools/${encodeURIComponent(pool)}/tokens`, { scope, label }),
  revoke: (pool, id) => api('DELETE', `/pools/${encodeURIComponent(pool)}/tokens/${encodeURIComponent(id)}`),
};

export const plugins = {
  list: () => api('GET', '/plugins'),
  get: (name) => api('GET', `/plugins/${encodeURIComponent(name)}`),
  remove: (name, version) =>
    api('DELETE', `/plugins/${encodeURIComponent(name)}${version ? `?version=${encodeURIComponent(version)}` : ''}`),
  /**
   * Uploads a module with upload progress (fetch cannot report it; XMLHttpRequest can).
   * `onProgress(fraction)` is called as bytes go out. Resolves to {status, body}.
   */
  upload(file, name, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      const query = name ? `?name=${encodeURIComponent(name)}` : '';
      xhr.open('POST', `${BASE}/plugins${query}`);
      xhr.setRequestHeader('Authorization', `Bearer ${token() ?? ''}`);
      xhr.setRequestHeader('Content-Type', 'application/wasm');
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) onProgress(e.loaded / e.total);
      };
      xhr.onerror = () => reject(new ApiFailure(0, 'unreachable', 'The upload did not reach the host.'));
      xhr.onload = () => {
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          // Leave null.
        }
        if (xhr.status >= 200 && xhr.status < 300) {
          resolve({ status: xhr.status, body });
        } else {
          if (xhr.status === 401) for (const f of signedOutListeners) f();
          const error = body && body.error ? body.error : { code: `http_${xhr.status}`, message: xhr.statusText };
          reject(new ApiFailure(xhr.status, error.code, error.message));
        }
      };
      xhr.send(file);
    });
  },
};

/**
 * Reads `GET /api/v1/stats/stream` (Server-Sent Events over fetch, since EventSource cannot
 * send the token) and calls `onSample(sample)` for each event, `onState('live'|'retrying')`
 * as the connection changes. Reconnects with backoff until `signal` aborts.
 */
export async function streamStats(onSample, onState, signal) {
  let delay = 500;
  while (!signal.aborted) {
    try {
      const response = await fetch(`${BASE}/stats/stream?interval_ms=1000`, {
        headers: { Authorization: `Bearer ${token() ?? ''}`, Accept: 'text/event-stream' },
        signal,
      });
      if (!response.ok) throw await failureOf(response);
      onState('live');
      delay = 500;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = event
            .split('\n')
            .filter((line) => line.startsWith('data:'))
            .map((line) => line.slice(5).trimStart())
            .join('\n');
          if (data) onSample(JSON.parse(data));
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiFailure && e.status === 401) return;
    }
    onState('retrying');
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 8000);
  }
}
