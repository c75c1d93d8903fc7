// rackcast console: one page over the admin API (/api/v1). Preact + htm, no build step.
// Pages are hash routes (#/, #/streams/NAME, #/cluster, #/host, #/keys, #/tokens, #/users,
// #/audit); live values are polled from the API every POLL_MS and never need a reload.
// Every failed request shows the API's own error message.

import { html, render, useState, useEffect, useRef, useCallback } from '/console/vendor/htm-preact-standalone.module.js';

const POLL_MS = 2000;
/// Points kept per client-side chart series (2 s apart: 10 minutes).
const HISTORY = 300;

// ---- API client

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

const session = { csrf: null };

async function call(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && session.csrf) headers['x-csrf-token'] = session.csrf;
  let response;
  try {
    response = await fetch('/api/v1' + path, {
      method, headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, `The appliance did not answer (${e.message}). Is it running, and is the network up?`);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const message = (data && data.error) || text.trim() || response.statusText;
    throw new ApiError(response.status, `${message} (HTTP ${response.status})`);
  }
  return data;
}

/// Polls `path` every POLL_MS while mounted; `onData` sees every answer (for histories).
function usePoll(path, onData) {
  const [state, setState] = useState({ data: null, error: null });
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick(t => t + 1), []);
  useEffect(() => {
    if (!path) return undefined;
    let alive = true;
    let timer = null;
    const run = async () => {
      try {
        const data = await call('GET', path);
        if (!alive) return;
        if (onData) onData(data);
        setState({ data, error: null });
      } catch (e) {
        if (!alive) return;
        if (e.status === 401) window.dispatchEvent(new Event('rackcast-logged-out'));
        setState(s => ({ data: s.data, error: e }));
      }
      if (alive) timer = setTimeout(run, POLL_MS);
    };
    run();
    return () => { alive = false; clearTimeout(timer); };
  }, [path, tick]);
  return { ...state, reload };
}

// ---- formatting

const kbps = bps => bps == null ? '–' : bps >= 1e6 ? `${(bps / 1e6).toFixed(2)} Mbit/s` : `${Math.round(bps / 1e3)} kbit/s`;
const bytes = n => n == null ? '–' : n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${Math.round(n / 1024)} KiB`;
const when = secs => secs == null ? '–' : new Date(secs * 1000).toLocaleString();
const duration = secs => {
  const d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600), m = Math.floor(secs % 3600 / 60);
  return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : `${m} min ${secs % 60} s`;
};
const pct = x => x == null ? '–' : `${(x * 100).toFixed(0)} %`;
/// Short axis labels: 1.2M, 800k, 3.4G.
const short = v => v == null ? '' : Math.abs(v) >= 1e9 ? `${+(v / 1e9).toFixed(1)}G` : Math.abs(v) >= 1e6 ? `${+(v / 1e6).toFixed(1)}M` : Math.abs(v) >= 1e3 ? `${+(v / 1e3).toFixed(1)}k` : `${+v.toFixed(2)}`;

// ---- shared pieces

function ErrorBanner({ error, onClose }) {
  if (!error) return null;
  return html`<div class="banner error" role="alert">
    ${onClose && html`<button onClick=${onClose} aria-label="Dismiss">×</button>`}
    <strong>Error.</strong> ${error.message}
  </div>`;
}

/// Runs a write and reports its failure in the page's banner.
function useAction() {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const run = useCallback(async (fn) => {
    setBusy(true); setError(null);
    try { return await fn(); } catch (e) { setError(e); return undefined; } finally { setBusy(false); }
  }, []);
  return { error, busy, run, clear: () => setError(null) };
}

function Card({ label, value, sub }) {
  return html`<div class="card"><div class="label">${label}</div><div class="value">${value}</div>${sub && html`<div class="sub">${sub}</div>`}</div>`;
}

/// A uPlot line chart of `series` ([{label, stroke, values}]) over `times` (seconds).
function Chart({ title, times, series, format, axis }) {
  const box = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    if (!box.current || typeof uPlot === 'undefined') return undefined;
    const width = Math.max(240, box.current.clientWidth);
    const opts = {
      width, height: 180,
      scales: { x: { time: true } },
      axes: [
        { stroke: '#8a97a6', grid: { stroke: '#2a3440' } },
        { stroke: '#8a97a6', grid: { stroke: '#2a3440' }, size: 56, values: (u, vals) => vals.map(v => axis ? axis(v) : short(v)) },
      ],
      series: [{}, ...series.map(s => ({ label: s.label, stroke: s.stroke, width: 2, value: (u, v) => v == null ? '–' : format ? format(v) : v }))],
    };
    plot.current = new uPlot(opts, [times, ...series.map(s => s.values)], box.current);
    return () => { plot.current.destroy(); plot.current = null; };
  }, [series.length]);
  useEffect(() => {
    if (plot.current) plot.current.setData([times, ...series.map(s => s.values)]);
  });
  return html`<div class="chart"><div class="title">${title}</div><div ref=${box}></div></div>`;
}

/// A live preview of `stream` through dash.js; `rendition` null lets ABR choose.
function Preview({ stream, rungs }) {
  const video = useRef(null);
  const player = useRef(null);
  const [rendition, setRendition] = useState('');
  const [state, setState] = useState('starting');
  useEffect(() => {
    if (!stream || typeof dashjs === 'undefined') return undefined;
    const p = dashjs.MediaPlayer().create();
    p.updateSettings({ streaming: { delay: { liveDelayFragmentCount: 3 } }, debug: { logLevel: 1 } });
    p.on(dashjs.MediaPlayer.events.ERROR, e => setState(`player error: ${e.error && (e.error.message || e.error.code) || 'unknown'}`));
    p.on(dashjs.MediaPlayer.events.PLAYBACK_PLAYING, () => setState('playing'));
    p.on(dashjs.MediaPlayer.events.PLAYBACK_WAITING, () => setState('buffering'));
    video.current.muted = true;
    p.initialize(video.current, `/live/${encodeURIComponent(stream)}/manifest.mpd`, true);
    player.current = p;
    setRendition('');
    return () => { p.destroy(); player.current = null; };
  }, [stream]);
  const choose = (id) => {
    setRendition(id);
    const p = player.current;
    if (!p) return;
    p.updateSettings({ streaming: { abr: { autoSwitchBitrate: { video: id === '' } } } });
    if (id !== '') {
      const reps = p.getRepresentationsByType('video') || [];
      const rep = reps.find(r => r.id === id);
      if (rep) p.setRepresentationForTypeById('video', rep.id, true);
    }
  };
  return html`<div class="player">
    <video ref=${video} playsinline data-stream=${stream}></video>
    <div class="controls">
      <label>Rendition <select value=${rendition} onChange=${e => choose(e.target.value)}>
        <option value="">auto (ABR)</option>
        ${(rungs || []).map(r => { const id = r.split('@')[0]; return html`<option value=${id}>${r}</option>`; })}
      </select></label>
      <span class="badge ${state === 'playing' ? 'ok' : state.startsWith('player error') ? 'bad' : ''}" data-player-state=${state}>${state}</span>
      <a href=${`/live/${encodeURIComponent(stream)}/manifest.mpd`} target="_blank" rel="noopener">MPD</a>
      <a href=${`/live/${encodeURIComponent(stream)}/master.m3u8`} target="_blank" rel="noopener">HLS</a>
    </div>
  </div>`;
}

// Client-side histories (delivered bitrate, viewers, host), kept across polls.
const histories = new Map();
function remember(key, t, value) {
  let h = histories.get(key);
  if (!h) { h = { times: [], values: [], last: null }; histories.set(key, h); }
  h.times.push(t); h.values.push(value);
  if (h.times.length > HISTORY) { h.times.shift(); h.values.shift(); }
  return h;
}
/// Bits per second from a growing byte counter, per key.
function rate(key, t, total) {
  const h = histories.get('rate:' + key) || { prev: null };
  histories.set('rate:' + key, h);
  let bps = null;
  if (h.prev && t > h.prev.t && total >= h.prev.total) bps = (total - h.prev.total) * 8 / (t - h.prev.t);
  h.prev = { t, total };
  return bps;
}
function series(key) { return histories.get(key) || { times: [], values: [] }; }

// ---- pages

function Dashboard() {
  const [selected, setSelected] = useState(null);
  const node = usePoll('/node');
  const streams = usePoll('/streams', list => {
    const t = Date.now() / 1000;
    for (const s of list) {
      const bps = rate('delivered:' + s.stream, t, s.delivered_bytes);
      s.delivered_bps = bps;
      if (bps != null) remember('delivered:' + s.stream, t, bps);
      remember('viewers:' + s.stream, t, s.viewers);
    }
  });
  const list = streams.data || [];
  const current = list.find(s => s.stream === selected) || list[0];
  const viewers = list.reduce((n, s) => n + s.viewers, 0);
  const delivered = list.reduce((n, s) => n + (s.delivered_bps || 0), 0);
  const n = node.data;
  return html`<div>
    <h1>Live streams</h1>
    ${n && n.publishing_open && html`<div class="banner warn"><strong>Publishing is open.</strong> No stream key is in force, so anyone who reaches the RTMP port may publish any stream name. Create a key on the <a href="#/keys">Keys</a> page.</div>`}
    <${ErrorBanner} error=${streams.error || node.error} />
    <div class="cards">
      <${Card} label="Live streams" value=${list.length} />
      <${Card} label="Viewers" value=${viewers} sub="distinct clients, last 30 s" />
      <${Card} label="Delivered" value=${kbps(delivered)} sub="from this node" />
      <${Card} label="CPU" value=${n ? pct(n.host.cpu_usage) : '–'} sub=${n ? `${n.host.cpus} cores, load ${n.host.load_average ? n.host.load_average[0].toFixed(2) : '–'}` : ''} />
      <${Card} label="Transcode" value=${n ? n.backends.join(', ') : '–'} sub=${n ? `${n.transcode_usage.cpu_cores_used.toFixed(2)} of ${n.transcode_usage.cpu_cores_budget.toFixed(2)} CPU cores admitted` : ''} />
    </div>
    <div class="grid cols-2">
      <div class="panel">
        <table>
          <thead><tr><th>Stream</th><th>Ladder</th><th class="num">Uplink</th><th class="num">Viewers</th><th class="num">Delivered</th><th class="num">Lag</th><th>State</th></tr></thead>
          <tbody>
            ${list.map(s => html`<tr class=${current && s.stream === current.stream ? 'selected' : ''} data-stream=${s.stream} onClick=${() => setSelected(s.stream)}>
              <td><a href=${`#/streams/${encodeURIComponent(s.stream)}`}>${s.stream}</a></td>
              <td class="mono">${s.rungs.join(' ')}</td>
              <td class="num">${s.uplink_kbps == null ? '–' : `${s.uplink_kbps} kbit/s`}</td>
              <td class="num">${s.viewers}</td>
              <td class="num">${kbps(s.delivered_bps)}</td>
              <td class="num">${s.lag_ms == null ? '–' : `${(s.lag_ms / 1000).toFixed(1)} s`}</td>
              <td>${s.stalled ? html`<span class="badge bad">stalled</span>` : html`<span class="badge ok">live</span>`}</td>
            </tr>`)}
          </tbody>
        </table>
        ${list.length === 0 && !streams.error && html`<p class="empty">No stream is being published to this node. Publish to <code>rtmp://HOST:1935/live/KEY</code>.</p>`}
      </div>
      <div class="panel">
        <h2>Preview ${current ? html`<span class="muted">· ${current.stream}</span>` : ''}</h2>
        ${current ? html`<${Preview} stream=${current.stream} rungs=${current.rungs} key=${current.stream} />` : html`<p class="empty">Select a live stream.</p>`}
      </div>
    </div>
  </div>`;
}

function StreamPage({ name }) {
  const action = useAction();
  const [hold, setHold] = useState(300);
  const [notice, setNotice] = useState(null);
  const detail = usePoll(`/streams/${encodeURIComponent(name)}`, d => {
    const t = Date.now() / 1000;
    const bps = rate('delivered:' + name, t, d.delivered_bytes);
    if (bps != null) remember('delivered:' + name, t, bps);
    remember('viewers:' + name, t, d.viewers);
  });
  const d = detail.data;
  const uplink = d ? d.status.uplink_history || [] : [];
  const start = d && d.status.plan_history.length ? Date.now() / 1000 - (uplink.length ? uplink[uplink.length - 1].at_ms / 1000 : 0) : Date.now() / 1000;
  const uplinkTimes = uplink.map(s => start + s.at_ms / 1000);
  const delivered = series('delivered:' + name);
  const viewers = series('viewers:' + name);
  const lever = async (what, method, body, message) => {
    const done = await action.run(() => call(method, `/streams/${encodeURIComponent(name)}/${what}`, body));
    if (done) setNotice(message + ': ' + done.result);
    detail.reload();
  };
  const notLive = detail.error && detail.error.status === 404;
  return html`<div>
    <h1><a href="#/">Streams</a> / ${name}</h1>
    <${ErrorBanner} error=${action.error} onClose=${action.clear} />
    ${notice && html`<div class="banner info">${notice}</div>`}
    ${notLive ? html`<div class="banner warn">${detail.error.message}</div>` : html`<${ErrorBanner} error=${detail.error} />`}
    <div class="panel row" style="margin-bottom:1rem">
      <button class="danger" disabled=${action.busy || !d} onClick=${() => confirm(`Disconnect the publisher of ${name}? It may publish again.`) && lever('kick', 'POST', undefined, 'Kicked')}>Kick publisher</button>
      <label>Stop for <input type="number" min="1" max="604800" value=${hold} onInput=${e => setHold(+e.target.value)} style="width:7rem"/> s</label>
      <button class="danger" disabled=${action.busy} onClick=${() => confirm(`Stop ${name} and refuse its publishes for ${hold} s?`) && lever('stop', 'POST', { hold_seconds: hold }, 'Stopped')}>Stop stream</button>
      <button disabled=${action.busy} onClick=${() => lever('stop', 'DELETE', undefined, 'Resumed')}>Resume</button>
    </div>
    ${d && html`<div>
      <div class="cards">
        <${Card} label="Source" value=${d.source ? `${d.source[0]}×${d.source[1]}` : '–'} />
        <${Card} label="Uplink" value=${d.uplink_kbps == null ? '–' : `${d.uplink_kbps} kbit/s`} sub="measured upload" />
        <${Card} label="Viewers" value=${d.viewers} />
        <${Card} label="Segments" value=${d.segments} sub=${`lag ${d.lag_ms == null ? '–' : (d.lag_ms / 1000).toFixed(1) + ' s'}`} />
        <${Card} label="Backend" value=${d.backend ?? '–'} sub=${d.status && d.status.transcode ? d.status.transcode.device : ''} />
        <${Card} label="Ingest" value=${bytes(d.ingest_bytes)} />
      </div>
      <div class="grid cols-2">
        <div class="grid">
          <div class="panel grid cols-even">
            <${Chart} title="Upload bandwidth (measured) and source bitrate" times=${uplinkTimes} format=${kbps}
              series=${[{ label: 'uplink', stroke: '#4aa3ff', values: uplink.map(s => s.throughput_bps) },
                        { label: 'source', stroke: '#f2b134', values: uplink.map(s => s.source_bitrate_bps) }]} />
            <${Chart} title="Delivered bitrate (this node, since this page opened)" times=${delivered.times} format=${kbps}
              series=${[{ label: 'delivered', stroke: '#3ecf8e', values: delivered.values }]} />
          </div>
          <div class="panel">
            <h2>Ladder</h2>
            <table><thead><tr><th>Rendition</th><th>Size</th><th class="num">Bitrate</th></tr></thead><tbody>
              ${(d.status.plan ? d.status.plan.rungs : []).map(r => html`<tr><td class="mono">${r.id}</td><td>${r.width}×${r.height}</td><td class="num">${r.bitrate_kbps} kbit/s</td></tr>`)}
            </tbody></table>
            <h2 style="margin-top:1rem">Plan history</h2>
            <table><thead><tr><th class="num">At</th><th>Reason</th><th>Rungs</th></tr></thead><tbody>
              ${d.status.plan_history.slice().reverse().map(p => html`<tr><td class="num">${(p.at_ms / 1000).toFixed(1)} s</td><td>${p.reason}</td><td class="mono">${p.rungs.join(' ')}</td></tr>`)}
            </tbody></table>
          </div>
        </div>
        <div class="grid">
          <div class="panel"><h2>Preview</h2><${Preview} stream=${name} rungs=${d.rungs} /></div>
          <div class="panel">
            <h2>Health</h2>
            <table><tbody>
              <tr><td>State</td><td>${d.stalled ? html`<span class="badge bad">stalled</span>` : html`<span class="badge ok">producing</span>`}</td></tr>
              <tr><td>Segment production lag</td><td>${d.lag_ms == null ? '–' : `${d.lag_ms} ms`}</td></tr>
              <tr><td>Stalls</td><td>${d.status.health.stalls}</td></tr>
              <tr><td>Timestamp discontinuities</td><td>${d.status.health.discontinuities}</td></tr>
              <tr><td>Re-anchors to the clock</td><td>${d.status.health.reanchors}</td></tr>
              <tr><td>Rungs shed (overload)</td><td>${d.status.health.shed}${d.status.health.rung_cap != null ? ` (cap ${d.status.health.rung_cap})` : ''}</td></tr>
              <tr><td>Paced (publisher too fast)</td><td>${d.status.health.paced ? 'yes' : 'no'}</td></tr>
            </tbody></table>
            <h2 style="margin-top:1rem">Recent events</h2>
            ${d.status.health.recent.length
              ? html`<table><tbody>${d.status.health.recent.slice().reverse().map(e => html`<tr data-event><td>${when(e.at)}</td><td>${e.what}</td></tr>`)}</tbody></table>`
              : html`<p class="empty">No faults since the publish started.</p>`}
            <${Chart} title="Viewers" times=${viewers.times} series=${[{ label: 'viewers', stroke: '#4aa3ff', values: viewers.values }]} />
          </div>
        </div>
      </div>
    </div>`}
  </div>`;
}

const NODE_COLOURS = ['#4aa3ff', '#3ecf8e', '#f2b134', '#c678dd', '#ff7b72', '#56d4dd', '#e5c07b', '#98c379'];

function Ring({ cluster }) {
  const size = 360, c = size / 2, r = 140;
  const nodes = [...new Set(cluster.ring.map(p => p.node))].sort();
  const colour = id => NODE_COLOURS[nodes.indexOf(id) % NODE_COLOURS.length] || '#8a97a6';
  const xy = (at, radius) => [c + radius * Math.sin(at * 2 * Math.PI), c - radius * Math.cos(at * 2 * Math.PI)];
  return html`<svg class="ring" viewBox="0 0 ${size} ${size}" width="100%" style="max-width:${size}px" role="img" aria-label="consistent-hash ring">
    <circle class="axis" cx=${c} cy=${c} r=${r} />
    ${cluster.ring.map(p => { const [x1, y1] = xy(p.at, r - 9); const [x2, y2] = xy(p.at, r + 9); return html`<line x1=${x1} y1=${y1} x2=${x2} y2=${y2} stroke=${colour(p.node)} stroke-width="1.5" />`; })}
    ${cluster.placements.map(s => { const [x, y] = xy(s.at, r - 30); const [lx, ly] = xy(s.at, r - 52); return html`<g data-placement=${s.stream}>
      <circle cx=${x} cy=${y} r="5" fill=${colour(s.live_on || s.owner)} stroke="#fff" stroke-width="1" />
      <text x=${lx} y=${ly} text-anchor="middle">${s.stream}</text></g>`; })}
    <text x=${c} y=${c - 6} text-anchor="middle">${nodes.length} live node${nodes.length === 1 ? '' : 's'}</text>
    <text x=${c} y=${c + 12} text-anchor="middle" class="muted">${cluster.vnodes} points each</text>
  </svg>
  <div class="row">${nodes.map(id => html`<span><span class="legend-dot" style="background:${colour(id)}"></span>${id}</span>`)}</div>`;
}

function ClusterPage() {
  const cluster = usePoll('/cluster');
  const tiers = usePoll('/tiers');
  const [probe, setProbe] = useState('');
  const [placement, setPlacement] = useState(null);
  const action = useAction();
  const c = cluster.data;
  const lookup = async (e) => {
    e.preventDefault();
    const p = await action.run(() => call('GET', `/cluster/ring/${encodeURIComponent(probe)}`));
    if (p) setPlacement(p);
  };
  const t = tiers.data;
  return html`<div>
    <h1>Cluster</h1>
    <${ErrorBanner} error=${cluster.error} />
    ${c && !c.federated && html`<div class="banner info">This node runs alone (no <code>cluster.nodes</code> or <code>cluster.discovery</code> in its config): it has every role and owns every stream.</div>`}
    ${c && html`<div class="grid cols-2">
      <div class="panel">
        <h2>Members <span class="muted">as ${c.node_id} sees them</span></h2>
        <table><thead><tr><th>Node</th><th>Roles</th><th>Region</th><th>Health</th><th>RTMP</th><th>HTTP</th><th>From</th><th>Streams</th><th class="num">Tier hits</th></tr></thead><tbody>
          ${c.members.map(m => html`<tr data-member=${m.id}><td>${m.id}${m.id === c.node_id ? html` <span class="badge">this node</span>` : ''}</td>
            <td>${m.roles.join(', ')}</td><td>${m.region}</td>
            <td>${m.up ? html`<span class="badge ok">up</span>` : html`<span class="badge bad">down</span>`}${m.draining ? html` <span class="badge warn" title="SIGTERM: out of the ring, handing its streams over">draining</span>` : ''}</td>
            <td class="mono">${m.rtmp}</td><td class="mono">${m.http}</td><td class="mono">${m.source}</td><td>${m.streams.join(', ') || html`<span class="muted">none</span>`}</td>
            <td class="num" title=${m.tier ? `${m.tier.requests} requests, ${m.tier.hits} hits, ${m.tier.coalesced} coalesced, ${m.tier.misses} misses` : 'no caching tier'}>${m.tier ? pct(m.tier_hit_ratio) : '–'}</td></tr>`)}
        </tbody></table>
        <h2 style="margin-top:1rem">Caching tier of this node</h2>
        ${t ? html`<table><tbody>
            <tr><td>Role</td><td>${t.role}</td></tr>
            <tr><td>Hit ratio (hits + coalesced)</td><td>${pct(t.hit_ratio)}</td></tr>
            <tr><td>Requests / hits / misses / coalesced</td><td>${t.counters.requests} / ${t.counters.hits} / ${t.counters.misses} / ${t.counters.coalesced}</td></tr>
            <tr><td>Upstream requests / errors</td><td>${t.counters.upstream_requests} / ${t.counters.upstream_errors}</td></tr>
            <tr><td>Cached</td><td>${bytes(t.counters.bytes_cached)} of ${bytes(t.counters.capacity_bytes)}, ${t.counters.entries} entries</td></tr>
          </tbody></table>`
          : html`<p class="empty">${tiers.error ? tiers.error.message : '…'}</p>`}
        <h2 style="margin-top:1rem">Where does a stream go?</h2>
        <form class="inline" onSubmit=${lookup}><input placeholder="stream id" value=${probe} onInput=${e => setProbe(e.target.value)} required /><button>Look up</button></form>
        <${ErrorBanner} error=${action.error} onClose=${action.clear} />
        ${placement && html`<p data-lookup=${placement.stream}>Owner <strong>${placement.owner || 'none (no live node up)'}</strong>; failover order ${placement.order.join(' → ')}; ${placement.live_on ? `live on ${placement.live_on}` : 'not live'}.</p>`}
      </div>
      <div class="panel"><h2>Ring</h2><${Ring} cluster=${c} /></div>
    </div>`}
  </div>`;
}

function HostPage() {
  const node = usePoll('/node', n => {
    const t = Date.now() / 1000;
    remember('cpu', t, n.host.cpu_usage);
    remember('mem', t, n.host.memory_used_bytes);
    remember('load', t, n.host.load_average ? n.host.load_average[0] : null);
  });
  const n = node.data;
  const cpu = series('cpu'), mem = series('mem'), load = series('load');
  return html`<div>
    <h1>Host</h1>
    <${ErrorBanner} error=${node.error} />
    ${n && html`<div>
      <div class="cards">
        <${Card} label="Node" value=${n.id} sub=${`rackcast ${n.version}`} />
        <${Card} label="Roles" value=${n.roles.join(', ')} />
        <${Card} label="Uptime" value=${duration(n.uptime_seconds)} />
        <${Card} label="CPU" value=${pct(n.host.cpu_usage)} sub=${`${n.host.cpus} cores`} />
        <${Card} label="Memory" value=${bytes(n.host.memory_used_bytes)} sub=${`of ${bytes(n.host.memory_total_bytes)}`} />
        <${Card} label="Load" value=${n.host.load_average ? n.host.load_average.map(x => x.toFixed(2)).join(' ') : '–'} sub="1, 5, 15 min" />
      </div>
      ${n.host.gpus.length > 0 && html`<div class="panel" style="margin-bottom:1rem">
        <h2>GPUs</h2>
        <table><thead><tr><th>#</th><th>Model</th><th>Driver</th><th class="num">GPU</th><th class="num">Encoder</th><th class="num">Decoder</th><th class="num">NVENC sessions</th><th class="num">Memory</th><th class="num">Temperature</th></tr></thead><tbody>
          ${n.host.gpus.map(g => html`<tr data-gpu=${g.index}><td>${g.index}</td><td>${g.name}</td><td>${g.driver || '–'}</td>
            <td class="num">${g.utilization_percent ?? '–'} %</td><td class="num">${g.encoder_utilization_percent ?? '–'} %</td><td class="num">${g.decoder_utilization_percent ?? '–'} %</td>
            <td class="num">${g.encoder_sessions ?? '–'}</td><td class="num">${bytes(g.memory_used_bytes)} / ${bytes(g.memory_total_bytes)}</td><td class="num">${g.temperature_celsius ?? '–'} °C</td></tr>`)}
        </tbody></table>
      </div>`}
      <div class="grid cols-even">
        <div class="panel"><${Chart} title="CPU busy" times=${cpu.times} format=${pct} axis=${pct} series=${[{ label: 'cpu', stroke: '#4aa3ff', values: cpu.values }]} /></div>
        <div class="panel"><${Chart} title="Memory used" times=${mem.times} format=${bytes} series=${[{ label: 'memory', stroke: '#3ecf8e', values: mem.values }]} /></div>
        <div class="panel"><${Chart} title="Load (1 min)" times=${load.times} series=${[{ label: 'load', stroke: '#f2b134', values: load.values }]} /></div>
        <div class="panel">
          <h2>Encoding</h2>
          <table><tbody>
            <tr><td>Backends</td><td><strong>${n.backends.join(', ')}</strong> (in preference order)</td></tr>
            ${n.backends_skipped.map(s => html`<tr><td>Skipped</td><td>${s}</td></tr>`)}
            <tr><td>CPU share</td><td>${n.host.cpu_share.cores.toFixed(2)} cores (${n.host.cpu_share.quota_cores != null ? `cgroup quota ${n.host.cpu_share.quota_cores.toFixed(2)}` : 'no CPU quota'}, ${n.host.cpu_share.affinity} CPUs)</td></tr>
            <tr><td>CPU budget</td><td>${n.transcode_usage.cpu_cores_used.toFixed(2)} of ${n.transcode_usage.cpu_cores_budget.toFixed(2)} cores admitted (cost model x${n.transcode_usage.cost_scale.toFixed(2)} on this host)</td></tr>
            ${n.transcode_usage.devices.filter(d => d.encoder_sessions || d.decoder_sessions).map(d => html`<tr><td>${d.backend} ${d.device}</td><td>${d.encoder_sessions} encoder, ${d.decoder_sessions} decoder sessions</td></tr>`)}
            <tr><td>Refused / fewer rungs</td><td>${n.transcode_usage.refused} / ${n.transcode_usage.reduced}</td></tr>
            <tr><td>GPUs</td><td data-gpus>${n.host.gpus.length ? n.host.gpus.map(g => g.name).join(', ') : `not present (${n.host.gpus_absent})`}</td></tr>
            <tr><td>Live streams</td><td>${n.live_streams}</td></tr>
          </tbody></table>
        </div>
      </div>
    </div>`}
  </div>`;
}

/// A secret just created, shown once.
function Secret({ title, value, hint, onClose }) {
  return html`<div class="banner info" data-secret>
    <button onClick=${onClose}>Done</button>
    <strong>${title}</strong> It is shown only now: copy it.
    <code class="secret">${value}</code>
    <span class="muted">${hint}</span>
  </div>`;
}

function KeysPage() {
  const keys = usePoll('/keys');
  const node = usePoll('/node');
  const changed = () => { keys.reload(); node.reload(); };
  const action = useAction();
  const [stream, setStream] = useState('');
  const [created, setCreated] = useState(null);
  const create = async (e) => {
    e.preventDefault();
    const key = await action.run(() => call('POST', '/keys', { stream }));
    if (key) { setCreated(key); setStream(''); changed(); }
  };
  const revoke = async (k) => {
    if (!confirm(`Revoke key ${k.id} of ${k.stream}? New publishes with it are refused; a live stream goes on.`)) return;
    await action.run(() => call('DELETE', `/keys/${k.id}`));
    changed();
  };
  return html`<div>
    <h1>Stream keys</h1>
    ${node.data && (node.data.publishing_open
      ? html`<div class="banner warn"><strong>Publishing is open:</strong> no key is in force, so a key is just the stream's name. Creating a key makes every publish need one.</div>`
      : html`<div class="banner info">Publishing needs a stream key (or a signed publish key).</div>`)}
    <${ErrorBanner} error=${action.error || keys.error} onClose=${action.clear} />
    ${created && html`<${Secret} title=${`Key for ${created.stream}.`} value=${created.key} onClose=${() => setCreated(null)}
      hint=${`In OBS: Server rtmp://${location.hostname}:${node.data ? node.data.rtmp_port : 1935}/live, Stream Key the value above. Viewers watch /live/${created.stream}/manifest.mpd.`} />`}
    <div class="panel">
      <form class="inline" onSubmit=${create}>
        <label>New key for stream</label><input name="stream" placeholder="studio-a" value=${stream} onInput=${e => setStream(e.target.value)} required />
        <button class="primary" disabled=${action.busy}>Create key</button>
      </form>
      <table><thead><tr><th>Id</th><th>Stream</th><th>Created</th><th>State</th><th></th></tr></thead><tbody>
        ${(keys.data || []).map(k => html`<tr data-key=${k.id}><td class="mono">${k.id}</td><td>${k.stream}</td><td>${when(k.created_at)}</td>
          <td>${k.revoked_at ? html`<span class="badge bad">revoked ${when(k.revoked_at)}</span>` : html`<span class="badge ok">in force</span>`}</td>
          <td class="right">${!k.revoked_at && html`<button class="danger" onClick=${() => revoke(k)}>Revoke</button>`}</td></tr>`)}
      </tbody></table>
      ${keys.data && keys.data.length === 0 && html`<p class="empty">No stream keys yet.</p>`}
    </div>
  </div>`;
}

function TokensPage() {
  const tokens = usePoll('/tokens');
  const action = useAction();
  const [name, setName] = useState('');
  const [scope, setScope] = useState('read');
  const [created, setCreated] = useState(null);
  const create = async (e) => {
    e.preventDefault();
    const token = await action.run(() => call('POST', '/tokens', { name, scope }));
    if (token) { setCreated(token); setName(''); tokens.reload(); }
  };
  const revoke = async (t) => {
    if (!confirm(`Revoke API token ${t.name}?`)) return;
    await action.run(() => call('DELETE', `/tokens/${t.id}`));
    tokens.reload();
  };
  return html`<div>
    <h1>API tokens</h1>
    <${ErrorBanner} error=${action.error || tokens.error} onClose=${action.clear} />
    ${created && html`<${Secret} title=${`Token ${created.name} (${created.scope}).`} value=${created.secret} onClose=${() => setCreated(null)}
      hint="Send it as: Authorization: Bearer TOKEN. A read token may only read." />`}
    <div class="panel">
      <form class="inline" onSubmit=${create}>
        <label>Name</label><input name="name" placeholder="grafana" value=${name} onInput=${e => setName(e.target.value)} required />
        <label>Scope</label><select name="scope" value=${scope} onChange=${e => setScope(e.target.value)}><option value="read">read</option><option value="admin">admin</option></select>
        <button class="primary" disabled=${action.busy}>Create token</button>
      </form>
      <table><thead><tr><th>Name</th><th>Scope</th><th>Created by</th><th>Created</th><th>State</th><th></th></tr></thead><tbody>
        ${(tokens.data || []).map(t => html`<tr data-token=${t.id}><td>${t.name}</td><td>${t.scope}</td><td>${t.created_by}</td><td>${when(t.created_at)}</td>
          <td>${t.revoked_at ? html`<span class="badge bad">revoked</span>` : html`<span class="badge ok">in force</span>`}</td>
          <td class="right">${!t.revoked_at && html`<button class="danger" onClick=${() => revoke(t)}>Revoke</button>`}</td></tr>`)}
      </tbody></table>
    </div>
  </div>`;
}

function UsersPage({ me }) {
  const users = usePoll('/users');
  const action = useAction();
  const [name, setName] = useState('');
  const [password, setPassword] = useState('');
  const create = async (e) => {
    e.preventDefault();
    if (await action.run(() => call('POST', '/users', { name, password }))) { setName(''); setPassword(''); users.reload(); }
  };
  const remove = async (u) => {
    if (!confirm(`Delete admin user ${u.name}? Their sessions end.`)) return;
    await action.run(() => call('DELETE', `/users/${encodeURIComponent(u.name)}`));
    users.reload();
  };
  return html`<div>
    <h1>Admin users</h1>
    <${ErrorBanner} error=${action.error || users.error} onClose=${action.clear} />
    <div class="panel">
      <form class="inline" onSubmit=${create}>
        <label>Name</label><input name="name" value=${name} onInput=${e => setName(e.target.value)} required autocomplete="off" />
        <label>Password</label><input name="password" type="password" minlength="10" value=${password} onInput=${e => setPassword(e.target.value)} required autocomplete="new-password" />
        <button class="primary" disabled=${action.busy}>Add user</button>
      </form>
      <table><thead><tr><th>Name</th><th>Created</th><th></th></tr></thead><tbody>
        ${(users.data || []).map(u => html`<tr data-user=${u.name}><td>${u.name}${me && me.user === u.name ? html` <span class="badge">you</span>` : ''}</td><td>${when(u.created_at)}</td>
          <td class="right">${!(me && me.user === u.name) && html`<button class="danger" onClick=${() => remove(u)}>Delete</button>`}</td></tr>`)}
      </tbody></table>
    </div>
  </div>`;
}

function AuditPage() {
  const [before, setBefore] = useState(null);
  // This node's log, paged; or the newest 100 entries of every node of the federation.
  const [federation, setFederation] = useState(false);
  const page = usePoll(federation ? '/cluster/audit?limit=100' : `/audit?limit=100${before ? `&before=${before}` : ''}`);
  const entries = (federation ? page.data?.entries : page.data) || [];
  const unreachable = federation ? page.data?.unreachable || [] : [];
  return html`<div>
    <h1>Audit log</h1>
    <${ErrorBanner} error=${page.error} />
    <div class="panel">
      <div class="row" style="margin-bottom:.6rem">
        <label><input type="checkbox" data-federation checked=${federation} onChange=${e => { setBefore(null); setFederation(e.target.checked); }} /> Every node of the federation</label>
        ${unreachable.length > 0 && html`<span class="badge warn">not read: ${unreachable.join(', ')}</span>`}
      </div>
      <table><thead><tr><th>When</th>${federation && html`<th>Node</th>`}<th>Actor</th><th>Address</th><th>Action</th><th>Target</th><th>Outcome</th></tr></thead><tbody>
        ${entries.map(e => html`<tr data-audit=${e.action}><td>${when(e.at)}</td>${federation && html`<td class="mono">${e.node}</td>`}<td>${e.actor}</td><td class="mono">${e.address || '–'}</td><td class="mono">${e.action}</td><td>${e.target}</td>
          <td>${e.outcome === 'ok' ? html`<span class="badge ok">ok</span>` : html`<span class="badge warn">${e.outcome}</span>`}</td></tr>`)}
      </tbody></table>
      ${!federation && html`<div class="row" style="margin-top:.6rem">
        ${before && html`<button onClick=${() => setBefore(null)}>Newest</button>`}
        ${entries.length === 100 && html`<button onClick=${() => setBefore(entries[entries.length - 1].id)}>Older</button>`}
      </div>`}
    </div>
  </div>`;
}

function Login({ onLoggedIn }) {
  const action = useAction();
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const submit = async (e) => {
    e.preventDefault();
    const me = await action.run(() => call('POST', '/session', { username, password }));
    if (me) onLoggedIn(me);
  };
  return html`<div class="login panel">
    <h1>rackcast</h1>
    <${ErrorBanner} error=${action.error} />
    <form onSubmit=${submit}>
      <label>User <input name="username" autocomplete="username" value=${username} onInput=${e => setUsername(e.target.value)} required /></label>
      <label>Password <input name="password" type="password" autocomplete="current-password" value=${password} onInput=${e => setPassword(e.target.value)} required /></label>
      <button class="primary" disabled=${action.busy}>Log in</button>
    </form>
  </div>`;
}

// ---- shell

const PAGES = [['#/', 'Streams'], ['#/cluster', 'Cluster'], ['#/host', 'Host'], ['#/keys', 'Keys'], ['#/tokens', 'Tokens'], ['#/users', 'Users'], ['#/audit', 'Audit']];

function useHash() {
  const [hash, setHash] = useState(location.hash || '#/');
  useEffect(() => {
    const on = () => setHash(location.hash || '#/');
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return hash;
}

function App() {
  const [me, setMe] = useState(undefined);
  const [fatal, setFatal] = useState(null);
  const hash = useHash();
  const check = useCallback(async () => {
    try {
      const who = await call('GET', '/session');
      session.csrf = who.csrf_token;
      setMe(who); setFatal(null);
    } catch (e) {
      session.csrf = null;
      if (e.status === 401) setMe(null); else setFatal(e);
    }
  }, []);
  useEffect(() => { check(); }, []);
  useEffect(() => {
    const out = () => check();
    window.addEventListener('rackcast-logged-out', out);
    return () => window.removeEventListener('rackcast-logged-out', out);
  }, []);
  if (fatal) return html`<main><${ErrorBanner} error=${fatal} /><button onClick=${check}>Try again</button></main>`;
  if (me === undefined) return html`<p class="boot">Connecting…</p>`;
  if (me === null) return html`<${Login} onLoggedIn=${who => { session.csrf = who.csrf_token; setMe(who); }} />`;
  const logout = async () => {
    try { await call('DELETE', '/session'); } catch (e) { /* the session may be gone already */ }
    session.csrf = null; setMe(null);
  };
  const route = hash.replace(/^#/, '');
  let page;
  if (route.startsWith('/streams/')) page = html`<${StreamPage} name=${decodeURIComponent(route.slice('/streams/'.length))} key=${route} />`;
  else page = {
    '/cluster': html`<${ClusterPage} />`, '/host': html`<${HostPage} />`, '/keys': html`<${KeysPage} />`,
    '/tokens': html`<${TokensPage} />`, '/users': html`<${UsersPage} me=${me} />`, '/audit': html`<${AuditPage} />`,
  }[route] || html`<${Dashboard} />`;
  const active = PAGES.find(([h]) => h !== '#/' && hash.startsWith(h)) ? hash : '#/';
  return html`<div>
    <header class="top">
      <span class="brand">rackcast<small>console</small></span>
      <nav>${PAGES.map(([h, label]) => html`<a href=${h} class=${(h === '#/' ? active === '#/' : hash.startsWith(h)) ? 'active' : ''}>${label}</a>`)}</nav>
      <span class="who">
        ${me.admin_exists ? html`<span data-me>${me.user || me.actor}</span>` : html`<span class="badge warn" title="No admin user exists: only this host may use the console">loopback, no admin yet</span>`}
        ${me.user && html`<button onClick=${logout}>Log out</button>`}
      </span>
    </header>
    <main>${page}</main>
  </div>`;
}

render(html`<${App} />`, document.getElementById('app'));
