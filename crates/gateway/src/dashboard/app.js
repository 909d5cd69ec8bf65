// shardswarm dashboard. Live state comes from GET /api/events (server-sent events, read with
// fetch rather than EventSource, which cannot send headers); the chat streams from
// POST /v1/chat/completions. When the peer runs with --api-key, the first 401 shows a small
// form asking for the key; it is kept in localStorage["shardswarm.apiKey"] and sent as
// `Authorization: Bearer KEY` on every API call. No framework, no build step.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const RATE_WINDOW_MS = 5000; // rates are averaged over this window (node statuses are polled)
  const CHART_SPAN_MS = 120000; // the chart shows the last two minutes

  const state = {
    snap: null,
    samples: [], // {t, down, up}: swarm bytes received, this peer's bytes sent
    history: [], // chat messages sent so far: {role, content}
    abort: null,
  };

  // ---- helpers -------------------------------------------------------------------------------

  const KEY_ITEM = 'shardswarm.apiKey';
  let memoryKey = ''; // where localStorage is unavailable

  function apiKey() {
    try {
      return localStorage.getItem(KEY_ITEM) || memoryKey;
    } catch (_) {
      return memoryKey;
    }
  }

  function storeKey(key) {
    memoryKey = key;
    try {
      if (key) localStorage.setItem(KEY_ITEM, key);
      else localStorage.removeItem(KEY_ITEM);
    } catch (_) {
      /* memory only */
    }
    $('key-forget').hidden = !key;
  }

  // Shows the key form (once, however many callers ask) and resolves when a key is entered.
  const keyWaiters = [];
  function askKey() {
    const form = $('key-form');
    const wrong = apiKey() !== '';
    form.dataset.wrong = String(wrong);
    $('key-label').textContent = wrong
      ? 'The API key was refused; enter the right one.'
      : "This peer's API needs a key (its --api-key).";
    if (form.hidden) {
      form.hidden = false;
      $('key-input').focus();
    }
    return new Promise((resolve) => keyWaiters.push(resolve));
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const key = apiKey();
    if (key) h.Authorization = 'Bearer ' + key;
    return h;
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'class') e.className = v;
      else if (k === 'style') e.setAttribute('style', v);
      else if (k.startsWith('data-') || k === 'title') e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function short(id, keep) {
    const n = keep || 8;
    return id && id.length > n + 4 ? '…' + id.slice(-n) : id || '';
  }

  function human(bytes) {
    const units = ['B', 'kB', 'MB', 'GB', 'TB'];
    let v = Math.max(0, bytes);
    let i = 0;
    while (v >= 1000 && i < units.length - 1) {
      v /= 1000;
      i++;
    }
    return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 1 : 0)) + ' ' + units[i];
  }

  function ranges(list) {
    const v = [...list].sort((a, b) => a - b);
    const out = [];
    for (let i = 0; i < v.length; i++) {
      let j = i;
      while (j + 1 < v.length && v[j + 1] === v[j] + 1) j++;
      out.push(j > i ? v[i] + '–' + v[j] : String(v[i]));
      i = j;
    }
    return out.join(', ');
  }

  // Reads a text/event-stream body, calling onEvent({event, data}) for each event.
  async function readSse(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true }).replace(/\r\n/g, '\n');
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let event = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line === '' || line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let v = colon < 0 ? '' : line.slice(colon + 1);
          if (v.startsWith(' ')) v = v.slice(1);
          if (field === 'event') event = v;
          else if (field === 'data') data.push(v);
        }
        if (data.length) {
          if (onEvent({ event, data: data.join('\n') }) === false) {
            reader.cancel().catch(() => {});
            return;
          }
        }
      }
    }
  }

  // ---- live state ----------------------------------------------------------------------------

  function setLive(live, text) {
    const c = $('conn');
    c.dataset.live = String(live);
    c.textContent = text;
  }

  async function follow() {
    let delay = 1000;
    for (;;) {
      try {
        const r = await fetch('/api/events', {
          headers: headers({ Accept: 'text/event-stream' }),
          cache: 'no-store',
        });
        if (r.status === 401) {
          setLive(false, 'API key needed');
          await askKey();
          continue;
        }
        if (!r.ok) throw new Error('HTTP ' + r.status);
        setLive(true, 'live');
        delay = 1000;
        await readSse(r, (ev) => {
          if (ev.event === 'snapshot') render(JSON.parse(ev.data));
          else if (ev.event === 'error') setLive(false, ev.data);
        });
        setLive(false, 'disconnected; retrying…');
      } catch (e) {
        setLive(false, 'disconnected (' + e.message + '); retrying…');
      }
      await new Promise((res) => setTimeout(res, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }

  function render(snap) {
    state.snap = snap;
    renderHeader(snap);
    renderBanner(snap.status);
    renderMatrix(snap);
    renderNodes(snap);
    sample(snap);
    drawChart();
  }

  function renderHeader(snap) {
    const s = snap.status;
    $('model').textContent = s.total_shards
      ? `${s.model || 'model'} · ${s.model_id} · ${s.total_shards} shards`
      : 'no catalog yet';
    $('self').textContent = `this ${snap.role}: ${short(snap.peer_id)}`;
    $('self').title = snap.peer_id;
  }

  function renderBanner(s) {
    const b = $('banner');
    if (!s.total_shards) {
      b.dataset.ready = 'unknown';
      b.textContent = 'No catalog yet: waiting for the server.';
    } else if (s.swarm_ready) {
      b.dataset.ready = 'true';
      b.textContent = `Swarm ready: all ${s.total_shards} shards loaded.`;
    } else {
      b.dataset.ready = 'false';
      b.textContent = `Not ready: missing shards ${ranges(s.missing)} (loaded by no live node).`;
    }
  }

  // Servers first, then nodes; this peer first within its role.
  function orderedNodes(snap) {
    const rank = (n) => (n.role === 'server' ? 0 : 1);
    return [...snap.status.nodes].sort(
      (a, b) =>
        rank(a) - rank(b) ||
        (b.peer_id === snap.peer_id) - (a.peer_id === snap.peer_id) ||
        a.peer_id.localeCompare(b.peer_id),
    );
  }

  function cellState(node, index) {
    if ((node.loaded || []).includes(index)) return { state: 'loaded', text: 'loaded' };
    if ((node.verified || []).includes(index)) return { state: 'verified', text: 'verified' };
    const d = (node.downloading || []).find((d) => d.index === index);
    if (d) {
      const pct = d.size ? Math.floor((d.have * 100) / d.size) : 0;
      return { state: 'downloading', text: pct + '%', pct };
    }
    return { state: 'missing', text: '—' };
  }

  function renderMatrix(snap) {
    const s = snap.status;
    const nodes = orderedNodes(snap);
    const table = $('matrix');
    const head = el(
      'tr',
      {},
      el('th', {}, 'shard'),
      ...nodes.map((n) =>
        el(
          'th',
          { class: 'node', title: n.peer_id, 'data-peer': n.peer_id },
          short(n.peer_id, 6),
          el('small', {}, n.peer_id === snap.peer_id ? n.role + ' (this)' : n.role),
        ),
      ),
    );
    const rows = s.shards.map((sh) =>
      el(
        'tr',
        { 'data-shard': sh.index },
        el(
          'th',
          { class: 'shard' },
          '#' + sh.index,
          el('small', {}, `layers ${sh.layers[0]}–${sh.layers[1]} · ${human(sh.size)}`),
        ),
        ...nodes.map((n) => {
          const c = cellState(n, sh.index);
          return el(
            'td',
            {},
            el(
              'span',
              {
                class: 'cell',
                'data-state': c.state,
                'data-shard': sh.index,
                'data-peer': n.peer_id,
                style: c.pct !== undefined ? `--pct: ${c.pct}%` : undefined,
                title: `shard ${sh.index} on ${n.peer_id}: ${c.state}`,
              },
              c.text,
            ),
          );
        }),
      ),
    );
    table.replaceChildren(el('thead', {}, head), el('tbody', {}, ...rows));
  }

  function renderNodes(snap) {
    const byId = new Map(snap.peers.map((p) => [p.peer_id, p]));
    const known = new Set();
    const rows = [];
    for (const n of orderedNodes(snap)) {
      known.add(n.peer_id);
      rows.push(nodeRow(snap, n, byId.get(n.peer_id)));
    }
    // Connected peers the status does not list yet (not polled, or not shardswarm peers).
    for (const p of snap.peers) {
      if (!known.has(p.peer_id)) rows.push(nodeRow(snap, null, p));
    }
    $('nodes').tBodies[0].replaceChildren(...rows);
  }

  function nodeRow(snap, n, p) {
    const id = n ? n.peer_id : p.peer_id;
    const self = id === snap.peer_id;
    const role = n ? n.role : p.role || 'unknown';
    const transport = self
      ? el('span', { class: 'tag self' }, 'this peer')
      : p
        ? el('span', { class: 'tag ' + p.transport }, p.transport.toUpperCase())
        : el('span', { class: 'tag' }, 'not connected');
    const rtt = p && p.rtt_ms !== null && p.rtt_ms !== undefined ? p.rtt_ms.toFixed(1) + ' ms' : '—';
    let shards = '—';
    if (n) {
      const parts = [];
      if (n.loaded.length) parts.push('loaded ' + ranges(n.loaded));
      const onlyVerified = n.verified.filter((i) => !n.loaded.includes(i));
      if (onlyVerified.length) parts.push('verified ' + ranges(onlyVerified));
      // A status polled before a download ended may still list it: what is held wins.
      const fetching = n.downloading
        .map((d) => d.index)
        .filter((i) => !n.verified.includes(i) && !n.loaded.includes(i));
      if (fetching.length) parts.push('fetching ' + ranges(fetching));
      shards = parts.join(' · ') || 'none';
    }
    let up = n ? n.bytes_up || 0 : 0;
    let down = n ? n.bytes_down || 0 : 0;
    if (self) {
      up = snap.bytes.uploaded;
      down = snap.bytes.downloaded_server + snap.bytes.downloaded_peer;
    }
    const addrs = (p && p.connections.length ? p.connections : n ? n.addresses : p.listen_addresses)
      // The peer ID is in the row already.
      .map((a) => (a.endsWith('/p2p/' + id) ? a.slice(0, -('/p2p/' + id).length) : a));
    return el(
      'tr',
      { 'data-peer': id },
      el('td', { class: 'mono', title: id }, short(id)),
      el('td', {}, role),
      el('td', {}, transport),
      el('td', {}, rtt),
      el('td', {}, shards),
      el('td', {}, n || self ? human(up) : '—'),
      el('td', {}, n || self ? human(down) : '—'),
      el('td', { class: 'addr' }, el('div', {}, (addrs || []).join('\n'))),
    );
  }

  // ---- throughput chart ----------------------------------------------------------------------

  function sample(snap) {
    let down = 0;
    for (const n of snap.status.nodes) {
      down += n.peer_id === snap.peer_id
        ? snap.bytes.downloaded_server + snap.bytes.downloaded_peer
        : n.bytes_down || 0;
    }
    state.samples.push({ t: snap.time_ms, down, up: snap.bytes.uploaded });
    const oldest = snap.time_ms - CHART_SPAN_MS - RATE_WINDOW_MS;
    while (state.samples.length > 2 && state.samples[0].t < oldest) state.samples.shift();
  }

  // Rates (bytes/s) at each sample, averaged over the window before it.
  function rates() {
    const out = [];
    const s = state.samples;
    let j = 0;
    for (let i = 1; i < s.length; i++) {
      while (j < i - 1 && s[i].t - s[j + 1].t >= RATE_WINDOW_MS) j++;
      const dt = (s[i].t - s[j].t) / 1000;
      if (dt <= 0) continue;
      out.push({
        t: s[i].t,
        down: Math.max(0, (s[i].down - s[j].down) / dt),
        up: Math.max(0, (s[i].up - s[j].up) / dt),
      });
    }
    return out;
  }

  function drawChart() {
    const canvas = $('chart');
    const r = rates();
    const last = r[r.length - 1] || { down: 0, up: 0 };
    $('rate-down').textContent = human(last.down) + '/s';
    $('rate-up').textContent = human(last.up) + '/s';
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const css = getComputedStyle(document.documentElement);
    const now = state.snap ? state.snap.time_ms : Date.now();
    const max = Math.max(1024, ...r.map((p) => Math.max(p.down, p.up))) * 1.15;
    const pad = { l: 4, r: 4, t: 16, b: 4 };
    const x = (t) => pad.l + ((t - (now - CHART_SPAN_MS)) / CHART_SPAN_MS) * (w - pad.l - pad.r);
    const y = (v) => h - pad.b - (v / max) * (h - pad.t - pad.b);
    ctx.strokeStyle = css.getPropertyValue('--line');
    ctx.lineWidth = 1;
    for (let k = 0; k <= 2; k++) {
      const yy = Math.round(y((max / 1.15) * (k / 2))) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.l, yy);
      ctx.lineTo(w - pad.r, yy);
      ctx.stroke();
    }
    ctx.fillStyle = css.getPropertyValue('--muted');
    ctx.font = '11px system-ui, sans-serif';
    ctx.fillText(human(max / 1.15) + '/s', pad.l + 2, pad.t - 4);
    for (const [key, color] of [
      ['down', '--verified'],
      ['up', '--downloading'],
    ]) {
      ctx.strokeStyle = css.getPropertyValue(color);
      ctx.lineWidth = 2;
      ctx.beginPath();
      r.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p[key])) : ctx.moveTo(x(p.t), y(p[key]))));
      ctx.stroke();
    }
  }

  // ---- chat ----------------------------------------------------------------------------------

  function addMessage(cls, text) {
    const log = $('chat-log');
    const m = el('div', { class: 'msg ' + cls }, text);
    log.append(m);
    log.scrollTop = log.scrollHeight;
    return m;
  }

  function errorText(body, status) {
    try {
      const e = JSON.parse(body).error;
      if (e && e.message) return e.message;
    } catch (_) {
      /* not JSON */
    }
    return body || 'HTTP ' + status;
  }

  async function send(prompt) {
    const maxTokens = Math.max(1, parseInt($('chat-max-tokens').value, 10) || 128);
    const messages = state.history.concat([{ role: 'user', content: prompt }]);
    addMessage('user', prompt);
    const answer = addMessage('assistant', '');
    answer.dataset.state = 'streaming';
    answer.dataset.chunks = '0';
    const abort = new AbortController();
    state.abort = abort;
    $('chat-send').disabled = true;
    $('chat-stop').disabled = false;
    let text = '';
    let failed = null;
    try {
      const r = await fetch('/v1/chat/completions', {
        method: 'POST',
        headers: headers({ 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
        body: JSON.stringify({
          model: (state.snap && state.snap.status.model) || 'shardswarm',
          messages,
          stream: true,
          max_tokens: maxTokens,
        }),
        signal: abort.signal,
      });
      if (r.status === 401) {
        failed = errorText(await r.text(), r.status);
        askKey();
      } else if (!r.ok) {
        failed = errorText(await r.text(), r.status);
      } else {
        await readSse(r, (ev) => {
          if (ev.data === '[DONE]') return false;
          let chunk;
          try {
            chunk = JSON.parse(ev.data);
          } catch (_) {
            return true;
          }
          if (chunk.error) {
            failed = chunk.error.message || 'the generation failed';
            return false;
          }
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            text += delta.content;
            answer.textContent = text;
            answer.dataset.chunks = String(Number(answer.dataset.chunks) + 1);
            $('chat-log').scrollTop = $('chat-log').scrollHeight;
          }
          return true;
        });
      }
    } catch (e) {
      if (e.name !== 'AbortError') failed = e.message;
    }
    state.abort = null;
    $('chat-send').disabled = false;
    $('chat-stop').disabled = true;
    if (failed !== null) {
      answer.dataset.state = 'error';
      if (!text) answer.remove();
      const m = addMessage('error', failed);
      m.dataset.state = 'error';
      return;
    }
    answer.dataset.state = 'done';
    if (!text) answer.textContent = '(empty answer)';
    state.history = messages.concat([{ role: 'assistant', content: text }]);
  }

  $('chat-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('chat-input');
    const prompt = input.value.trim();
    if (!prompt || state.abort) return;
    input.value = '';
    send(prompt);
  });
  $('chat-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      $('chat-form').requestSubmit();
    }
  });
  $('chat-stop').addEventListener('click', () => state.abort && state.abort.abort());
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('key-input').value.trim();
    if (!key) return;
    $('key-input').value = '';
    storeKey(key);
    $('key-form').hidden = true;
    for (const resolve of keyWaiters.splice(0)) resolve();
  });
  $('key-forget').addEventListener('click', () => storeKey(''));
  $('key-forget').hidden = !apiKey();
  window.addEventListener('resize', drawChart);

  follow();
})();
