// kiln's page: sign in with a token, then applications, their versions,
// builds and channels, a build's live log, uploads, trials, promotions,
// downloads. One view at a time, picked by the URL's hash (#/, #/app/ID,
// #/build/ID); nothing reloads the page.

import {ApiError, call, download, follow, get, session, upload} from './api.js';
import {append, fields, h, labelled, micros, size, stateBadge, table, time, took} from './dom.js';

const PHASES = ['request_headers', 'request_body', 'response_headers', 'response_body', 'log'];
const DEFAULT_PHASES = ['request_headers', 'response_headers'];
const UNFINISHED = ['queued', 'running'];
/** How often a view with unfinished builds looks again. */
const POLL_MS = 2000;

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const statusLine = document.getElementById('status');

/** What the current view started (log streams, polls); stopped on leaving it. */
let viewAbort = new AbortController();

// ---- messages -------------------------------------------------------------

function say(text, kind = 'info') {
  statusLine.replaceChildren(h('p', {class: `message message-${kind}`, role: kind === 'error' ? 'alert' : null}, text));
}

function clearSay() {
  statusLine.replaceChildren();
}

/** Runs `fn`; a refusal is shown as the server's sentence. */
async function guarded(fn) {
  try {
    return await fn();
  } catch (e) {
    if (e.name === 'AbortError') return undefined;
    if (e instanceof ApiError && e.status === 401) {
      session.clear();
      say('That token was refused. Sign in again.', 'error');
      render();
      return undefined;
    }
    say(e.message || String(e), 'error');
    return undefined;
  }
}

/** A confirmation in a modal dialog; resolves to true for "Delete". */
function confirmDelete(text) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  dialog.returnValue = '';
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), {once: true});
  });
}

function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

// ---- the router -----------------------------------------------------------

function route() {
  const hash = location.hash;
  let m;
  if ((m = hash.match(/^#\/app\/([0-9a-f-]{36})$/))) return (signal) => appView(m[1], signal);
  if ((m = hash.match(/^#\/build\/([0-9a-f-]{36})$/))) return (signal) => buildView(m[1], signal);
  return appsView;
}

function render() {
  viewAbort.abort();
  viewAbort = new AbortController();
  renderNav();
  const view = session.token ? route() : signInView;
  main.replaceChildren(h('p', {class: 'loading'}, 'Loading…'));
  guarded(async () => {
    let content;
    try {
      content = await view(viewAbort.signal);
    } catch (e) {
      if (e.name !== 'AbortError') main.replaceChildren(h('p', {}, h('a', {href: '#/'}, 'Back to the applications')));
      throw e;
    }
    if (content) {
      main.replaceChildren(content);
      const heading = main.querySelector('h1');
      if (heading) {
        heading.tabIndex = -1;
        heading.focus({preventScroll: true});
        document.title = `${heading.textContent} · kiln`;
      }
    }
  });
}

function renderNav() {
  if (!session.token) return nav.replaceChildren();
  nav.replaceChildren(
    h('a', {href: '#/'}, 'Applications'),
    h('button', {type: 'button', class: 'link', on: {click: () => { session.clear(); clearSay(); go('#/'); }}}, 'Sign out'));
}

window.addEventListener('hashchange', () => {
  // The skip link's #main is not a view.
  if (location.hash === '#main') return;
  clearSay();
  render();
});

// ---- sign in ----------------------------------------------------------------

function signInView() {
  const token = h('input', {type: 'password', name: 'token', id: 'token', autocomplete: 'off', required: true, spellcheck: 'false'});
  const form = h('form', {class: 'card narrow', on: {submit: async (e) => {
    e.preventDefault();
    session.set(token.value.trim());
    const apps = await guarded(() => get('/application'));
    if (apps === undefined) return;
    clearSay();
    render();
  }}},
  h('h1', {}, 'Sign in'),
  h('p', {}, 'With an owner token (kiln token create --owner N, or .kiln/admin.token). It is kept in this tab only, until the tab is closed.'),
  labelled('Token', token),
  h('button', {type: 'submit', class: 'primary'}, 'Sign in'));
  return form;
}

// ---- applications ----------------------------------------------------------

async function appsView(signal) {
  const apps = await get('/application', {signal});
  const name = h('input', {name: 'name', required: true, maxlength: 200});
  const notes = h('input', {name: 'notes'});
  const create = h('form', {class: 'card', on: {submit: (e) => {
    e.preventDefault();
    guarded(async () => {
      const app = await call('POST', '/application', {name: name.value.trim(), notes: notes.value});
      say(`Created application ${app.name}.`);
      go(`#/app/${app.id}`);
    });
  }}},
  h('h2', {}, 'New application'),
  h('div', {class: 'row'}, labelled('Name', name), labelled('Notes', notes)),
  h('button', {type: 'submit', class: 'primary'}, 'Create'));

  return h('div', {},
    h('h1', {}, 'Applications'),
    h('section', {class: 'card'},
      table('Your applications', ['Name', 'Created', 'Notes'],
        apps.map((app) => [h('a', {href: `#/app/${app.id}`}, app.name), time(app.created), app.notes]),
        'No applications yet: create one below.')),
    create);
}

// ---- one application ---------------------------------------------------------

async function appView(id, signal) {
  const [app, versions, builds, channels] = await Promise.all([
    get(`/application/${id}`, {signal}),
    get(`/version?application_id=${id}`, {signal}),
    get(`/version_build?application_id=${id}&limit=50`, {signal}),
    get(`/application/${id}/channels`, {signal}),
  ]);
  const buildsBox = h('div', {});
  const versionsBox = h('div', {});
  const channelsBox = h('div', {});
  const state = {versions, builds, channels};

  const refresh = async () => {
    const [v, b, c] = await Promise.all([
      get(`/version?application_id=${id}`, {signal}),
      get(`/version_build?application_id=${id}&limit=50`, {signal}),
      get(`/application/${id}/channels`, {signal}),
    ]);
    Object.assign(state, {versions: v, builds: b, channels: c});
    draw();
  };
  const draw = () => {
    buildsBox.replaceChildren(buildsTable(state.builds));
    versionsBox.replaceChildren(versionsTable(app, state.versions, refresh));
    channelsBox.replaceChildren(channelsSection(app, state.channels, state.versions, refresh));
  };
  draw();
  // Unfinished builds finish without a reload: look again while any is.
  const timer = setInterval(() => {
    if (state.builds.some((b) => UNFINISHED.includes(b.state))) guarded(refresh);
  }, POLL_MS);
  signal.addEventListener('abort', () => clearInterval(timer));

  const remove = h('button', {type: 'button', class: 'danger', on: {click: async () => {
    if (!await confirmDelete(`Delete application ${app.name} with all its versions, builds and channels?`)) return;
    guarded(async () => {
      await call('DELETE', `/application/${id}`);
      say(`Deleted application ${app.name}.`);
      go('#/');
    });
  }}}, 'Delete application');

  return h('div', {},
    h('nav', {class: 'crumbs', 'aria-label': 'Breadcrumb'}, h('a', {href: '#/'}, 'Applications'), ' / '),
    h('h1', {}, app.name),
    app.notes ? h('p', {class: 'notes'}, app.notes) : null,
    h('section', {class: 'card', 'aria-labelledby': 'channels-h'}, h('h2', {id: 'channels-h'}, 'Channels'), channelsBox),
    uploadSection(app, state),
    h('section', {class: 'card', 'aria-labelledby': 'builds-h'}, h('h2', {id: 'builds-h'}, 'Builds'), buildsBox),
    h('section', {class: 'card', 'aria-labelledby': 'versions-h'}, h('h2', {id: 'versions-h'}, 'Versions'), versionsBox),
    h('section', {class: 'card danger-zone'}, h('h2', {}, 'Delete'), remove));
}

function buildsTable(builds) {
  return table('Builds, newest first', ['Version', 'State', 'Created', 'Took', 'Error'],
    builds.map((b) => ({
      props: {dataset: {build: b.id}},
      cells: [h('a', {href: `#/build/${b.id}`}, b.version), stateBadge(b.state), time(b.created), took(b),
        b.error ? h('span', {class: 'error-text'}, b.error) : ''],
    })),
    'No builds yet: upload a version.');
}

function startup(profile) {
  const s = profile?.startup;
  if (!s) return '–';
  return h('span', {class: 'startup', title: `median of ${s.runs} runs`},
    `cwasm load ${micros(s.cwasm_load_us)} · instantiate ${micros(s.instantiate_us)} · first response ${micros(s.first_response_us)}`);
}

function versionsTable(app, versions, refresh) {
  return table('Versions, newest first', ['Version', 'Created', 'Size', 'sha256', 'Startup', ''],
    versions.map((v) => [
      h('a', {href: `#/build/${v.id}`}, v.version), time(v.created), size(v.binary_size),
      h('code', {class: 'hash'}, v.binary_sha256), startup(v.profile),
      h('div', {class: 'buttons'},
        downloadButton(app, v),
        deleteVersionButton(v, refresh)),
    ]),
    'No versions yet: a version exists once its build succeeds.');
}

function downloadButton(app, version) {
  return h('button', {type: 'button', on: {click: () => guarded(async () => {
    const {blob, etag} = await download(`/version/${version.id}/binary`);
    if (crypto.subtle) {
      const digest = await crypto.subtle.digest('SHA-256', await blob.arrayBuffer());
      const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
      if (hex !== version.binary_sha256 || (etag && etag !== hex)) {
        throw new Error(`The download's sha256 is ${hex}, not the version's ${version.binary_sha256}: not saved.`);
      }
    }
    const url = URL.createObjectURL(blob);
    const a = h('a', {href: url, download: `${app.name}-${version.version}.wasm`});
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    say(`Downloaded ${app.name} ${version.version} (${size(blob.size)}), sha256 checked.`);
  })}}, 'Download .wasm');
}

function deleteVersionButton(version, after) {
  return h('button', {type: 'button', class: 'danger', on: {click: async () => {
    if (!await confirmDelete(`Delete version ${version.version} with its build, binary and logs?`)) return;
    guarded(async () => {
      await call('DELETE', `/version/${version.id}`);
      say(`Deleted version ${version.version}.`);
      await after();
    });
  }}}, 'Delete');
}

function channelsSection(app, channels, versions, refresh) {
  const rows = channels.map((c) => {
    const last = c.history?.[0];
    return {
      props: {dataset: {channel: c.name}},
      cells: [
        h('strong', {}, c.name),
        h('a', {href: `#/build/${c.version.id}`}, c.version.version),
        String(c.revision), time(c.updated),
        last ? `${last.action} by ${last.by}` : '–',
        h('button', {type: 'button', on: {click: () => guarded(async () => {
          const moved = await call('POST', `/application/${app.id}/channels/${encodeURIComponent(c.name)}/rollback`);
          say(`Channel ${moved.name} rolled back to ${moved.version.version}.`);
          await refresh();
        })}}, 'Roll back'),
      ],
    };
  });
  return h('div', {},
    table('Channels', ['Channel', 'Version', 'Revision', 'Updated', 'Last change', ''], rows,
      'No channels yet: promote a version to one (production, staging, any name).'),
    versions.length ? promoteForm(app, versions, refresh) : null);
}

function promoteForm(app, versions, after, fixed) {
  const channel = h('input', {name: 'channel', value: 'production', required: true, pattern: '[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}'});
  const pick = fixed ? null : h('select', {name: 'version'},
    versions.map((v) => h('option', {value: v.id}, `${v.version} (${v.id.slice(0, 8)})`)));
  return h('form', {class: 'row promote', on: {submit: (e) => {
    e.preventDefault();
    guarded(async () => {
      const versionId = fixed ? fixed.id : pick.value;
      const moved = await call('PUT', `/application/${app.id}/channels/${encodeURIComponent(channel.value.trim())}`,
        {version_id: versionId});
      say(`Channel ${moved.name} now serves ${moved.version.version} (revision ${moved.revision}).`);
      await after(moved);
    });
  }}},
  pick ? labelled('Version', pick) : null,
  labelled('Channel', channel),
  h('button', {type: 'submit', class: 'primary'}, 'Promote'));
}

function nextVersion(versions, builds) {
  const all = [...versions, ...builds].map((v) => v.version)
    .map((v) => v.match(/^(\d+)\.(\d+)\.(\d+)$/)).filter(Boolean)
    .map((m) => m.slice(1).map(Number))
    .sort((a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]);
  const top = all.pop();
  return top ? `${top[0]}.${top[1]}.${top[2] + 1}` : '0.1.0';
}

function uploadSection(app, state) {
  const version = h('input', {name: 'version', required: true, value: nextVersion(state.versions, state.builds),
    pattern: '\\d+\\.\\d+\\.\\d+(-[0-9A-Za-z.\\-]+)?(\\+[0-9A-Za-z.\\-]+)?'});
  const phases = PHASES.map((p) => h('input', {type: 'checkbox', name: 'phases', value: p, checked: DEFAULT_PHASES.includes(p)}));
  const conf = h('textarea', {name: 'conf', rows: 2});
  const notes = h('input', {name: 'notes'});
  const file = h('input', {type: 'file', name: 'source_code', id: 'source', required: true,
    accept: '.tar.gz,.tgz,.zip,application/gzip,application/zip'});
  const chosen = h('span', {class: 'chosen'}, 'No archive chosen');
  const progress = h('progress', {max: 100, value: 0, hidden: true});
  const progressText = h('span', {class: 'progress-text', 'aria-live': 'polite'});
  const submit = h('button', {type: 'submit', class: 'primary'}, 'Upload and build');
  let dropped = null;

  const show = () => {
    const f = dropped || file.files[0];
    chosen.textContent = f ? `${f.name} (${size(f.size)})` : 'No archive chosen';
  };
  file.addEventListener('change', () => { dropped = null; show(); });
  const zone = h('label', {class: 'drop', for: 'source', on: {
    dragover: (e) => { e.preventDefault(); zone.classList.add('over'); },
    dragleave: () => zone.classList.remove('over'),
    drop: (e) => {
      e.preventDefault();
      zone.classList.remove('over');
      const f = e.dataTransfer.files[0];
      if (!f) return;
      dropped = f;
      file.required = false;
      show();
    },
  }}, h('strong', {}, 'Drop a .tar.gz or .zip of the project here'), ' or choose one: ', file, chosen);

  const form = h('form', {class: 'card', 'aria-labelledby': 'upload-h', on: {submit: (e) => {
    e.preventDefault();
    const source = dropped || file.files[0];
    if (!source) return say('Choose an archive of the project first.', 'error');
    const data = new FormData();
    data.append('plugin_id', app.id);
    data.append('version', version.value.trim());
    data.append('plugin_language', 'rust');
    data.append('phases', JSON.stringify(phases.filter((p) => p.checked).map((p) => p.value)));
    if (conf.value) data.append('conf', conf.value);
    if (notes.value) data.append('notes', notes.value);
    data.append('source_code', source, source.name);
    submit.disabled = true;
    progress.hidden = false;
    guarded(async () => {
      try {
        const build = await upload(data, (sent, total) => {
          progress.value = Math.round((sent / total) * 100);
          progressText.textContent = `${size(sent)} of ${size(total)}`;
        });
        say(`Uploaded ${build.version}: build queued.`);
        go(`#/build/${build.id}`);
      } finally {
        submit.disabled = false;
      }
    });
  }}},
  h('h2', {id: 'upload-h'}, 'Upload a version'),
  h('div', {class: 'row'}, labelled('Version', version, 'semver; a version is never rebuilt'), labelled('Notes', notes)),
  h('fieldset', {class: 'phases'}, h('legend', {}, 'Phases the filter handles'),
    phases.map((p) => h('label', {class: 'check'}, p, ` ${p.value}`))),
  labelled('Configuration', conf, 'handed to the plugin as its configuration'),
  zone,
  h('div', {class: 'row'}, submit, progress, progressText));
  return form;
}

// ---- one build ---------------------------------------------------------------

async function buildView(id, signal) {
  let build = await get(`/version_build/${id}`, {signal});
  const app = await get(`/application/${build.application_id}`, {signal});
  const summary = h('div', {});
  const log = h('pre', {class: 'log', id: 'log', role: 'log', 'aria-label': 'Build log', tabindex: 0});
  const logNote = h('p', {class: 'log-note'});
  const versionBox = h('div', {});
  const heading = h('h1', {}, `${app.name} ${build.version} `, stateBadge(build.state));

  const drawSummary = () => {
    heading.replaceChildren(`${app.name} ${build.version} `, stateBadge(build.state));
    const stages = build.profile?.stages_ms;
    summary.replaceChildren(fields([
      ['State', stateBadge(build.state)],
      ['Build id', h('code', {}, build.id)],
      ['Attempt', String(build.attempt)],
      ['Worker', build.worker],
      ['Created', time(build.created)],
      ['Started', time(build.started)],
      ['Finished', time(build.finished)],
      ['Took', took(build)],
      ['Phases', build.phases.join(', ')],
      ['Error', build.error ? h('span', {class: 'error-text'}, build.error) : null],
      ['Stages', stages ? Object.entries(stages).map(([k, v]) => `${k} ${v} ms`).join(', ') : null],
    ]));
    if (UNFINISHED.includes(build.state)) {
      summary.append(h('button', {type: 'button', class: 'danger', on: {click: () => guarded(async () => {
        build = await call('POST', `/version_build/${id}/cancel`);
        drawSummary();
      })}}, 'Cancel build'));
    }
  };
  drawSummary();

  const showVersion = async () => {
    if (build.state !== 'succeeded') return versionBox.replaceChildren();
    const [version, channels] = await Promise.all([
      get(`/version/${id}`, {signal}),
      get(`/application/${app.id}/channels`, {signal}),
    ]);
    const serving = channels.filter((c) => c.version.id === id).map((c) => c.name);
    const servingLine = h('p', {id: 'serving'}, serving.length ? `Serving on: ${serving.join(', ')}` : 'Not on a channel.');
    versionBox.replaceChildren(
      h('section', {class: 'card', 'aria-labelledby': 'version-h'},
        h('h2', {id: 'version-h'}, `Version ${version.version}`),
        fields([
          ['Size', size(version.binary_size)],
          ['sha256', h('code', {class: 'hash', id: 'sha256'}, version.binary_sha256)],
          ['Startup', startup(version.profile)],
          ['Configuration', version.conf ? h('code', {}, version.conf) : null],
          ['Notes', version.notes],
        ]),
        servingLine,
        h('div', {class: 'buttons'}, downloadButton(app, version),
          deleteVersionButton(version, () => go(`#/app/${app.id}`))),
        h('h3', {}, 'Promote to a channel'),
        promoteForm(app, [version], async (moved) => {
          const names = new Set(serving);
          names.add(moved.name);
          servingLine.textContent = `Serving on: ${[...names].join(', ')}`;
        }, version)),
      trySection(version));
  };

  // The live log: what was written so far at once, then each piece as the
  // worker sends it, then the end with the build's state.
  guarded(async () => {
    logNote.textContent = UNFINISHED.includes(build.state) ? 'Following the live log…' : '';
    const end = await follow(id, (text) => {
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.append(document.createTextNode(text));
      if (atBottom) log.scrollTop = log.scrollHeight;
    }, signal);
    logNote.textContent = '';
    build = end.build || await get(`/version_build/${id}`, {signal});
    drawSummary();
    if (end.state !== 'succeeded' && end.state !== undefined) {
      say(`Build ${build.version} ${end.state}${end.error ? `: ${end.error}` : ''}`, end.state === 'cancelled' ? 'info' : 'error');
    }
    await showVersion();
  });

  return h('div', {},
    h('nav', {class: 'crumbs', 'aria-label': 'Breadcrumb'},
      h('a', {href: '#/'}, 'Applications'), ' / ', h('a', {href: `#/app/${app.id}`}, app.name), ' / '),
    heading,
    h('section', {class: 'card'}, summary),
    versionBox,
    h('section', {class: 'card', 'aria-labelledby': 'log-h'}, h('h2', {id: 'log-h'}, 'Build log'), logNote, log));
}

// ---- trying a version ----------------------------------------------------------

function headerLines(text) {
  return text.split('\n').map((l) => l.trim()).filter(Boolean).map((line) => {
    const at = line.indexOf(':', line.startsWith(':') ? 1 : 0);
    if (at < 1) throw new Error(`A header is "name: value"; "${line}" is not.`);
    return [line.slice(0, at).trim(), line.slice(at + 1).trim()];
  });
}

function headersTable(caption, headers) {
  return table(caption, ['Header', 'Value'], headers.map(([k, v]) => [h('code', {}, k), h('code', {}, v)]), 'No headers.');
}

function trySection(version) {
  const method = h('input', {name: 'method', value: 'GET', required: true, size: 8, list: 'methods'});
  const methods = h('datalist', {id: 'methods'}, ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS'].map((m) => h('option', {value: m})));
  const path = h('input', {name: 'path', value: '/', required: true});
  const headers = h('textarea', {name: 'headers', rows: 3, placeholder: 'user-agent: curl\naccept: */*', spellcheck: 'false'});
  const body = h('textarea', {name: 'body', rows: 2, spellcheck: 'false'});
  const result = h('div', {id: 'try-result', 'aria-live': 'polite'});
  const form = h('form', {class: 'try', on: {submit: (e) => {
    e.preventDefault();
    guarded(async () => {
      const request = {method: method.value.trim(), path: path.value, headers: headerLines(headers.value), body: body.value};
      result.replaceChildren(h('p', {class: 'loading'}, 'Running the plugin…'));
      try {
        result.replaceChildren(trialResult(await call('POST', `/version/${version.id}/try`, request)));
      } catch (err) {
        result.replaceChildren();
        throw err;
      }
    });
  }}},
  methods,
  h('div', {class: 'row'}, labelled('Method', method), labelled('Path', path)),
  labelled('Headers', headers, 'one "name: value" a line'),
  labelled('Body', body),
  h('button', {type: 'submit', class: 'primary'}, 'Try it'));
  return h('section', {class: 'card', 'aria-labelledby': 'try-h'},
    h('h2', {id: 'try-h'}, 'Try it on a request'),
    h('p', {}, 'Runs this version in kiln\'s proxy-wasm host, as Envoy would, against a stub origin that answers 200.'),
    form, result);
}

function trialResult(r) {
  const parts = [];
  if (r.response) {
    parts.push(h('h3', {}, `The client gets ${r.response.status}`),
      headersTable('Response headers', r.response.headers),
      r.response.body ? h('pre', {class: 'body'}, r.response.body) : null);
  }
  if (r.local_response) {
    parts.push(h('p', {}, `The plugin answered itself with ${r.local_response.status}; nothing reached the origin.`));
  } else if (r.forwarded) {
    parts.push(h('h3', {}, 'The request as it reached the origin'),
      headersTable('Forwarded request headers', r.forwarded.headers),
      r.forwarded.body ? h('pre', {class: 'body'}, r.forwarded.body) : null);
  } else if (!r.response) {
    parts.push(h('p', {}, 'The plugin held the request (it never resumed it).'));
  }
  parts.push(h('h3', {}, 'The plugin\'s log'),
    r.logs.length ? h('pre', {class: 'body'}, r.logs.map((l) => `[${l.level}] ${l.message}\n`).join('')) : h('p', {class: 'empty'}, 'Nothing logged.'),
    h('p', {class: 'timing'}, `instantiate ${micros(r.instantiate_us)} · exchange ${micros(r.exchange_us)}`));
  return append(h('div', {class: 'result'}), parts);
}

render();
