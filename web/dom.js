// Building the page's elements. Text always goes in as text nodes, never
// as HTML: what the server sends (names, notes, build logs) is the
// customer's, and a build log holds their code.

/**
 * h('a', {href: '#/', class: 'x', on: {click: f}}, 'text', child)
 * Attributes are set with setAttribute; `on` adds listeners; strings and
 * numbers become text nodes; null, undefined and false are skipped.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'on') {
      for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (key === 'value' || key === 'checked') {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** A table with a header row; a row is an array of cells (text or nodes), or {props, cells}. */
export function table(caption, headers, rows, empty) {
  if (rows.length === 0) return h('p', {class: 'empty'}, empty);
  return h('div', {class: 'scroll'},
    h('table', {},
      h('caption', {class: 'visually-hidden'}, caption),
      h('thead', {}, h('tr', {}, headers.map((t) => h('th', {scope: 'col'}, t)))),
      h('tbody', {}, rows.map((row) => {
        const {props = {}, cells} = Array.isArray(row) ? {cells: row} : row;
        return h('tr', props, cells.map((c) => h('td', {}, c)));
      }))));
}

/** A definition list of [term, description] pairs, skipping empty ones. */
export function fields(pairs) {
  return h('dl', {class: 'fields'},
    pairs.filter(([, v]) => v !== undefined && v !== null && v !== '')
      .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

export function labelled(label, input, hint) {
  return h('label', {class: 'field'}, h('span', {}, label), input, hint ? h('small', {}, hint) : null);
}

/** Bytes for people: 912 B, 14.2 KiB, 1.3 MiB. */
export function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

export function time(iso) {
  if (!iso) return '–';
  const date = new Date(iso);
  return h('time', {datetime: iso, title: iso}, date.toLocaleString());
}

/** How long a build ran. */
export function took(build) {
  if (!build.started || !build.finished) return '–';
  const ms = new Date(build.finished) - new Date(build.started);
  return ms >= 0 ? `${(ms / 1000).toFixed(1)} s` : '–';
}

export function stateBadge(state) {
  return h('span', {class: `state state-${state}`, dataset: {state}}, state);
}

/** Microseconds for people. */
export function micros(us) {
  return us >= 1000 ? `${(us / 1000).toFixed(1)} ms` : `${us} µs`;
}
