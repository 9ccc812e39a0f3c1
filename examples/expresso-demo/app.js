// The demo's IM page: plain JavaScript, no build step. Everything goes
// through api.php (PHP calls the sidecar); the password never reaches here.
'use strict';
const $ = (s, el = document) => el.querySelector(s);
const state = { cursor: '', roster: {}, presence: {}, chats: {}, unread: {}, active: null, typing: {}, title: document.title,
  history: {}, noAvatar: {} };

async function call(action, body, query = '') {
  const opts = body === undefined ? {} : {
    method: 'POST', body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json', 'X-Requested-With': 'imsidecar-demo' },
  };
  const r = await fetch('api.php?action=' + action + query, opts);
  if (r.status === 401) { location.href = 'login.php'; throw new Error('logged out'); }
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((j.error && j.error.code) || r.status);
  return j;
}

const bare = jid => jid.split('/')[0];
const esc = s => String(s).replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

function bestShow(jid) {
  const res = state.presence[jid] || {};
  const list = Object.values(res);
  if (!list.length) return 'offline';
  list.sort((a, b) => b.priority - a.priority);
  return list[0].show || 'online';
}

function renderRoster() {
  const groups = {};
  for (const it of Object.values(state.roster)) {
    if (it.subscription === 'remove') continue;
    for (const g of (it.groups.length ? it.groups : ['Contacts'])) (groups[g] = groups[g] || []).push(it);
  }
  const html = Object.keys(groups).sort().map(g => '<h3>' + esc(g) + '</h3><ul>' + groups[g]
    .sort((a, b) => (a.name || a.jid).localeCompare(b.name || b.jid))
    .map(it => {
      const show = bestShow(it.jid);
      const st = Object.values(state.presence[it.jid] || {}).map(p => p.status).filter(Boolean)[0] || '';
      const n = state.unread[it.jid] || 0;
      return `<li class="contact ${show}" data-jid="${esc(it.jid)}" title="${esc(it.jid)}">
        ${avatarHTML(it)}<span class="dot"></span>
        <span class="who"><span class="name">${esc(it.name || it.jid)}</span>
        <span class="show">${esc(show)}${st ? ' — ' + esc(st) : ''}</span></span>
        ${n ? `<span class="badge">${n}</span>` : ''}
        ${it.ask === 'subscribe' ? '<span class="pending">pending</span>' : ''}
        <button class="rename" title="rename">✎</button><button class="remove" title="remove">✕</button></li>`;
    }).join('') + '</ul>').join('');
  $('#contacts').innerHTML = html || '<p class="empty">No contacts yet.</p>';
}

function chat(jid) {
  if (!state.chats[jid]) {
    const el = document.createElement('div');
    el.className = 'chat';
    el.dataset.jid = jid;
    el.innerHTML = `<h2>${esc((state.roster[jid] && state.roster[jid].name) || jid)}</h2>
      <ol class="log"></ol><p class="typing"></p>
      <form class="compose"><input name="body" autocomplete="off" placeholder="Write a message"><button>Send</button></form>`;
    $('#chats').appendChild(el);
    state.chats[jid] = el;
    historyInit(jid, el);
    const input = $('input', el);
    let pausedTimer = null, composing = false;
    input.addEventListener('input', () => {
      if (!composing) { composing = true; call('chatstate', { to: jid, state: 'composing' }).catch(() => {}); }
      clearTimeout(pausedTimer);
      pausedTimer = setTimeout(() => { composing = false; call('chatstate', { to: jid, state: 'paused' }).catch(() => {}); }, 3000);
    });
    $('form', el).addEventListener('submit', async ev => {
      ev.preventDefault();
      const body = input.value.trim();
      if (!body) return;
      input.value = '';
      composing = false;
      clearTimeout(pausedTimer);
      try {
        const r = await call('send', { to: jid, body });
        addLine(jid, 'me', body, r.id);
      } catch (e) { addLine(jid, 'error', 'not sent: ' + e.message); }
    });
  }
  return state.chats[jid];
}

function open(jid) {
  state.active = jid;
  for (const el of Object.values(state.chats)) el.hidden = el.dataset.jid !== jid;
  const el = chat(jid);
  el.hidden = false;
  $('.empty', $('#chats')) && $('.empty', $('#chats')).remove();
  state.unread[jid] = 0;
  renderRoster();
  $('input', el).focus();
  titleNotice();
}

function addLine(jid, who, text, id) {
  const log = $('.log', chat(jid));
  if (id && log.querySelector(`li[data-id="${CSS.escape(id)}"]`)) return; // already shown from history
  const li = document.createElement('li');
  li.className = who;
  if (id) li.dataset.id = id;
  li.innerHTML = `<span class="text">${esc(text)}</span><span class="tick"></span>`;
  log.appendChild(li);
  log.scrollTop = log.scrollHeight;
}

function titleNotice() {
  const n = Object.values(state.unread).reduce((a, b) => a + b, 0);
  document.title = n ? `(${n}) ${state.title}` : state.title;
}

function handle(ev) {
  switch (ev.event) {
    case 'message': {
      if (!ev.body) break;
      const peer = ev.carbon === 'sent' ? bare(ev.to) : bare(ev.from);
      addLine(peer, ev.carbon === 'sent' ? 'me' : 'them', ev.body, ev.id);
      $('.typing', chat(peer)).textContent = '';
      if (ev.carbon !== 'sent' && (state.active !== peer || document.hidden)) {
        state.unread[peer] = (state.unread[peer] || 0) + 1;
        const beep = $('#beep'); beep && beep.play().catch(() => {});
        if (state.active !== peer && !state.chats[peer].hidden) state.chats[peer].hidden = state.active !== null;
      }
      if (state.active === null) open(peer);
      renderRoster(); titleNotice();
      break;
    }
    case 'receipt': {
      const li = document.querySelector(`.log li[data-id="${CSS.escape(ev.id)}"] .tick`);
      if (li) li.textContent = '✓';
      break;
    }
    case 'chatstate': {
      const jid = bare(ev.from);
      if (!state.chats[jid]) break;
      const name = (state.roster[jid] && state.roster[jid].name) || jid;
      $('.typing', state.chats[jid]).textContent = ev.state === 'composing' ? name + ' is typing…' : '';
      break;
    }
    case 'presence': {
      const jid = bare(ev.from), res = ev.from.slice(jid.length + 1);
      state.presence[jid] = state.presence[jid] || {};
      if (ev.type === 'unavailable') delete state.presence[jid][res];
      else state.presence[jid][res] = { show: ev.show, status: ev.status, priority: ev.priority,
        avatar: ev.avatar !== undefined ? ev.avatar : (state.presence[jid][res] || {}).avatar };
      renderRoster();
      break;
    }
    case 'roster':
      if (ev.item.subscription === 'remove') delete state.roster[ev.item.jid];
      else state.roster[ev.item.jid] = ev.item;
      renderRoster();
      break;
    case 'subscription':
      if (ev.type === 'subscribe') showRequest(bare(ev.from));
      break;
    case 'state':
      $('#conn').textContent = ev.state;
      $('#conn').className = 'pill ' + ev.state;
      break;
  }
}

function showRequest(jid) {
  if (document.querySelector(`#requests [data-jid="${CSS.escape(jid)}"]`)) return;
  const div = document.createElement('div');
  div.className = 'request';
  div.dataset.jid = jid;
  div.innerHTML = `<span>${esc(jid)} wants to see your status</span>
    <button class="approve">Approve</button><button class="deny">Deny</button>`;
  $('#requests').appendChild(div);
}

async function loadRoster() {
  const r = await call('roster');
  state.roster = {}; state.presence = {};
  for (const it of r.items) {
    state.roster[it.jid] = it;
    state.presence[it.jid] = {};
    for (const p of it.presence) state.presence[it.jid][p.resource] = p;
  }
  renderRoster();
}

function apply(page) {
  if (!page.recovered) { loadRoster().catch(() => {}); historyCatchUp(); }
  page.events.forEach(handle);
  state.cursor = page.cursor;
}

async function pollLoop() {
  for (;;) {
    try {
      apply(await call('poll', undefined, '&cursor=' + encodeURIComponent(state.cursor)));
    } catch (e) {
      $('#conn').textContent = 'retrying…';
      await new Promise(r => setTimeout(r, 2000));
      try { await call('connect', {}); } catch (_) {}
    }
  }
}

function sse() {
  const src = new EventSource('/im/events' + (state.cursor ? '?cursor=' + encodeURIComponent(state.cursor) : ''));
  const kinds = ['message', 'presence', 'subscription', 'roster', 'chatstate', 'receipt', 'state'];
  for (const k of kinds) src.addEventListener(k, m => { const ev = JSON.parse(m.data); handle(ev); state.cursor = ev.cursor; });
  src.addEventListener('reset', () => { loadRoster().catch(() => {}); historyCatchUp(); });
}

document.addEventListener('click', async ev => {
  const li = ev.target.closest('.contact');
  if (li && ev.target.classList.contains('remove')) {
    if (confirm('Remove ' + li.dataset.jid + '?')) await call('remove', { jid: li.dataset.jid }).catch(e => alert(e.message));
  } else if (li && ev.target.classList.contains('rename')) {
    const it = state.roster[li.dataset.jid];
    const name = prompt('Name for ' + it.jid, it.name || '');
    if (name !== null) await call('contact', { jid: it.jid, name, group: it.groups.join(',') }).catch(e => alert(e.message));
  } else if (li) {
    open(li.dataset.jid);
  }
  const req = ev.target.closest('.request');
  if (req && ev.target.tagName === 'BUTTON') {
    const approve = ev.target.classList.contains('approve');
    await call('subscription', { jid: req.dataset.jid, action: approve ? 'approve' : 'deny' });
    if (approve && !state.roster[req.dataset.jid]) await call('contact', { jid: req.dataset.jid, subscribe: true });
    req.remove();
  }
});

$('#add').addEventListener('submit', async ev => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  try {
    await call('contact', { jid: f.get('jid').trim(), name: f.get('name'), group: f.get('group'), subscribe: true });
    ev.target.reset();
  } catch (e) { alert('Could not add: ' + e.message); }
});

const sendPresence = () => call('presence', { show: $('#show').value, status: $('#status').value }).catch(() => {});
$('#show').addEventListener('change', sendPresence);
$('#status').addEventListener('change', sendPresence);
document.addEventListener('visibilitychange', () => { if (!document.hidden && state.active) { state.unread[state.active] = 0; renderRoster(); titleNotice(); } });

(async function start() {
  const c = await call('connect', {});
  state.cursor = c.cursor;
  $('#conn').textContent = c.state;
  $('#conn').className = 'pill ' + c.state;
  await loadRoster();
  if (document.body.dataset.transport === 'sse') sse(); else pollLoop();
})().catch(e => { $('#conn').textContent = 'error: ' + e.message; });

// ---------------------------------------------------------------------------
// History (GET /v1/history through api.php): a chat window shows the
// newest archived messages when it opens, "Load older" pages back, and
// after recovered:false every open window catches up from the archive.

const HISTORY_MAX = Math.min(50, Math.max(1, Number(new URLSearchParams(location.search).get('history_max')) || 30));

function historyLine(jid, m) {
  const li = document.createElement('li');
  li.className = (bare(m.from) === jid ? 'them' : 'me') + ' hist';
  if (m.id) li.dataset.id = m.id;
  li.dataset.archiveId = m.archive_id;
  li.title = m.time ? new Date(m.time).toLocaleString() : '';
  li.innerHTML = `<span class="text">${esc(m.body)}</span><span class="tick"></span>`;
  return li;
}

function historyShown(log, m) {
  return (m.id && log.querySelector(`li[data-id="${CSS.escape(m.id)}"]`)) ||
    log.querySelector(`li[data-archive-id="${CSS.escape(m.archive_id)}"]`);
}

async function historyPage(jid, before) {
  return call('history', undefined, '&with=' + encodeURIComponent(jid) + '&before=' + encodeURIComponent(before) + '&max=' + HISTORY_MAX);
}

function historyInit(jid, el) {
  const h = state.history[jid] = { first: '', complete: false, loading: false };
  const older = document.createElement('button');
  older.type = 'button';
  older.className = 'older';
  older.textContent = 'Load older messages';
  older.hidden = true;
  older.addEventListener('click', () => historyOlder(jid));
  $('.log', el).before(older);
  historyOlder(jid);
}

// historyOlder prepends the page before the oldest one shown (the newest
// page the first time).
async function historyOlder(jid) {
  const h = state.history[jid], el = state.chats[jid];
  if (!h || h.loading || h.complete) return;
  h.loading = true;
  const older = $('.older', el), log = $('.log', el);
  try {
    // Archives also keep receipts, which have no text: fetch on until a
    // page's worth of messages is shown (or the archive's start).
    const firstLoad = !h.first;
    let added = 0;
    for (let i = 0; i < 5 && added < HISTORY_MAX && !h.complete; i++) {
      const p = await historyPage(jid, h.first);
      const height = log.scrollHeight, anchor = log.firstChild;
      for (const m of p.messages) if (!historyShown(log, m)) { log.insertBefore(historyLine(jid, m), anchor); added++; }
      if (p.first) h.first = p.first;
      h.complete = p.complete || !p.first;
      // The first page shows the newest messages; older ones keep the view.
      log.scrollTop = firstLoad ? log.scrollHeight : log.scrollTop + log.scrollHeight - height;
    }
    older.hidden = h.complete;
    older.textContent = 'Load older messages';
  } catch (e) {
    older.hidden = false;
    older.textContent = 'History unavailable (' + e.message + ') — retry';
  } finally { h.loading = false; }
}

// historyCatchUp adds to every open window what the archive has and the
// window lacks: the events between the old cursor and now may be lost.
function historyCatchUp() {
  for (const jid of Object.keys(state.chats)) {
    historyPage(jid, '').then(p => {
      const log = $('.log', state.chats[jid]);
      for (const m of p.messages) if (!historyShown(log, m)) log.appendChild(historyLine(jid, m)).classList.add('caught-up');
      log.scrollTop = log.scrollHeight;
    }).catch(() => {});
  }
}

// ---------------------------------------------------------------------------
// Avatars in the contact list: the vCard photo through api.php, versioned
// by the XEP-0153 hash from presence when the contact's client sends one.

function avatarHash(jid) {
  let h;
  for (const p of Object.values(state.presence[jid] || {})) if (p.avatar !== undefined && p.avatar !== null) h = h || p.avatar;
  return h; // undefined: unknown, "": none
}

function avatarHTML(it) {
  const h = avatarHash(it.jid);
  const initial = esc(((it.name || it.jid).trim()[0] || '?').toUpperCase());
  const v = h === undefined ? '0' : h;
  if (h === '' || state.noAvatar[it.jid] === v) return `<span class="avatar none">${initial}</span>`;
  return `<img class="avatar" alt="" data-jid="${esc(it.jid)}" data-v="${esc(v)}" src="api.php?action=avatar&jid=${encodeURIComponent(it.jid)}&v=${encodeURIComponent(v)}">`;
}

// A contact without a photo: remember it (per hash) so the list does not
// ask again on every render.
document.addEventListener('error', ev => {
  const img = ev.target;
  if (!(img instanceof HTMLImageElement) || !img.classList.contains('avatar')) return;
  state.noAvatar[img.dataset.jid] = img.dataset.v;
  const span = document.createElement('span');
  span.className = 'avatar none';
  const it = state.roster[img.dataset.jid];
  span.textContent = (((it && it.name) || img.dataset.jid).trim()[0] || '?').toUpperCase();
  img.replaceWith(span);
}, true);
