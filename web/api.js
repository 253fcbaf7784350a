// The public API as the page uses it: the signed-in token on every
// request, the server's sentence on a refusal, uploads with progress, and
// the live log of a build as Server-Sent Events read from a fetch stream
// (EventSource cannot send an Authorization header).

const TOKEN_KEY = 'kiln.token';

/** The token lives in sessionStorage: gone when the tab closes. */
export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set(token) { sessionStorage.setItem(TOKEN_KEY, token); },
  clear() { sessionStorage.removeItem(TOKEN_KEY); },
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra = {}) {
  return {Authorization: `Bearer ${session.token}`, ...extra};
}

async function refusal(response) {
  let code = 'error';
  let message = `the server answered ${response.status}`;
  try {
    const body = await response.json();
    if (typeof body.message === 'string') message = body.message;
    if (typeof body.error === 'string') code = body.error;
  } catch { /* not kiln's JSON */ }
  return new ApiError(response.status, code, message);
}

/** Sends a request; JSON in and out. Resolves to null for 204. */
export async function call(method, path, body, {signal} = {}) {
  const init = {method, headers: headers(), signal};
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await refusal(response);
  if (response.status === 204) return null;
  return response.json();
}

export const get = (path, options) => call('GET', path, undefined, options);

/** Downloads a file; resolves to {blob, etag}. */
export async function download(path) {
  const response = await fetch(path, {headers: headers()});
  if (!response.ok) throw await refusal(response);
  const etag = (response.headers.get('ETag') || '').replaceAll('"', '');
  return {blob: await response.blob(), etag};
}

/** POST /version with a FormData; onProgress(sent, total) as it goes. */
export function upload(form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/version');
    xhr.setRequestHeader('Authorization', `Bearer ${session.token}`);
    xhr.responseType = 'text';
    xhr.upload.addEventListener('progress', (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    });
    xhr.addEventListener('load', () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300 && body) return resolve(body);
      reject(new ApiError(xhr.status, body?.error || 'error',
        body?.message || `the server answered ${xhr.status}`));
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, 'network', 'the upload could not reach the server')));
    xhr.addEventListener('abort', () => reject(new ApiError(0, 'aborted', 'the upload was stopped')));
    xhr.send(form);
  });
}

/**
 * Splits SSE text into events; returns [events, rest], rest being an
 * unfinished event to prepend to the next piece.
 */
export function parseSse(text) {
  const events = [];
  const blocks = text.replaceAll('\r\n', '\n').split('\n\n');
  const rest = blocks.pop();
  for (const block of blocks) {
    const event = {event: 'message', id: null, data: []};
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const at = line.indexOf(':');
      const field = at < 0 ? line : line.slice(0, at);
      let value = at < 0 ? '' : line.slice(at + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event.event = value;
      else if (field === 'id') event.id = value;
      else if (field === 'data') event.data.push(value);
    }
    if (event.data.length || event.id !== null) {
      events.push({...event, data: event.data.join('\n')});
    }
  }
  return [events, rest];
}

const FOLLOW_RETRIES = 10;

/**
 * Follows build `id`'s log: onText(text) for each piece as the worker
 * writes it; resolves to the `end` event's data ({state, error, build}).
 * Reconnects with Last-Event-ID when the connection drops; stops when
 * `signal` aborts.
 */
export async function follow(id, onText, signal) {
  let lastId = null;
  let retries = 0;
  for (;;) {
    const extra = {Accept: 'text/event-stream'};
    if (lastId !== null) extra['Last-Event-ID'] = lastId;
    let response;
    try {
      response = await fetch(`/version_build/${encodeURIComponent(id)}/logs?follow=true`,
        {headers: headers(extra), signal});
    } catch (e) {
      if (signal?.aborted) throw e;
      response = null;
    }
    if (response && !response.ok) throw await refusal(response);
    if (response) {
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      try {
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          const [events, rest] = parseSse(buffer + value);
          buffer = rest;
          for (const event of events) {
            retries = 0;
            if (event.id !== null) lastId = event.id;
            let data = null;
            try { data = JSON.parse(event.data); } catch { continue; }
            if (event.event === 'log') onText(String(data.text ?? ''));
            else if (event.event === 'end') return data;
          }
        }
      } catch (e) {
        if (signal?.aborted) throw e;
      }
    }
    retries += 1;
    if (retries > FOLLOW_RETRIES) throw new ApiError(0, 'network', 'the log stream kept breaking; reload to try again');
    await new Promise((resolve) => setTimeout(resolve, 500 * Math.min(retries, 4)));
    if (signal?.aborted) throw new DOMException('aborted', 'AbortError');
  }
}
