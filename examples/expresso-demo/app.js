// The demo's IM page: plain JavaScript, no build step. Everything goes
// through api.php (PHP calls the sidecar); the password never reaches here.
'use strict';
const $ = (s, el = document) => el.querySelector(s);
const state = { cursor: '', roster: {}, presence: {}, chats: {}, unread: {}, active: null, typing: {}, title: document.title,
  receipts: new Set(), history: {}, noAvatar: {} };

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
  li.innerHTML = `<span class="text">${esc(text)}</span><span class="tick">${id && state.receipts.has(id) ? '✓' : ''}</span>`;
  log.appendChild(li);
  log.scrollTop = log.scrollHeight;
}

function titleNotice() {
  const n = Object.values(state.unread).reduce((a, b) => a + b, 0);
  document.title = n ? `(${n}) ${state.title}` : state.title;
}

function handle(ev) {
  if (roomHandle(ev)) return; // group chat: rooms section below
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
      else state.receipts.add(ev.id); // it can arrive before the send call returned
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
  if (!page.recovered) { loadRoster().catch(() => {}); loadRooms().catch(() => {}); historyCatchUp(); }
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
  const kinds = ['message', 'presence', 'subscription', 'roster', 'chatstate', 'receipt', 'state', 'room'];
  for (const k of kinds) src.addEventListener(k, m => { const ev = JSON.parse(m.data); handle(ev); state.cursor = ev.cursor; });
  src.addEventListener('reset', () => { loadRoster().catch(() => {}); loadRooms().catch(() => {}); historyCatchUp(); });
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
  await loadRooms().catch(() => {});
  if (document.body.dataset.transport === 'sse') sse(); else pollLoop();
})().catch(e => { $('#conn').textContent = 'error: ' + e.message; });

// ---- Group chat (XEP-0045) -------------------------------------------------
// The Rooms panel (#rooms-panel in im.php) lists the MUC service's rooms and
// the ones joined; a room window shows the conversation, the subject and the
// occupants with their role. Everything here is self-contained: handle()
// only forwards "room" events and groupchat messages to roomHandle().

state.rooms = {};     // room JID → {nick, subject, occupants: {nick → occupant}}
state.roomList = [];  // what the service lists

function roomName(jid) { return jid.split('@')[0]; }

async function loadRooms() {
  const r = await call('rooms');
  state.roomList = r.rooms || [];
  state.rooms = {};
  for (const jr of r.joined || []) {
    const occupants = {};
    for (const o of jr.occupants) occupants[o.nick] = o;
    state.rooms[jr.jid] = { nick: jr.nick, subject: jr.subject, occupants };
    roomWindow(jr.jid);
    renderRoomWindow(jr.jid);
  }
  renderRooms();
}

function renderRooms() {
  const jids = new Set(state.roomList.map(r => r.jid).concat(Object.keys(state.rooms)));
  const html = [...jids].sort().map(jid => {
    const listed = state.roomList.find(r => r.jid === jid);
    const joined = !!state.rooms[jid];
    const n = state.unread[jid] || 0;
    return `<li class="room-item${joined ? ' joined' : ''}" data-jid="${esc(jid)}" title="${esc(jid)}">
      <span class="hash">#</span><span class="who"><span class="name">${esc((listed && listed.name) || roomName(jid))}</span>
      <span class="show">${joined ? Object.keys(state.rooms[jid].occupants).length + ' here' : 'join'}</span></span>
      ${n ? `<span class="badge">${n}</span>` : ''}</li>`;
  }).join('');
  $('#rooms').innerHTML = html || '<li class="empty">No rooms yet.</li>';
}

function roomWindow(jid) {
  if (state.chats[jid]) return state.chats[jid];
  const el = document.createElement('div');
  el.className = 'chat room';
  el.dataset.jid = jid;
  el.hidden = state.active !== jid;
  el.innerHTML = `<h2><span class="room-title"># ${esc(roomName(jid))}</span> <span class="subject"></span>
      <button class="set-subject" type="button" title="change subject">✎</button>
      <button class="leave-room" type="button">Leave</button></h2>
    <div class="room-body"><ol class="log"></ol><ul class="occupants"></ul></div>
    <form class="compose"><input name="body" autocomplete="off" placeholder="Message the room"><button>Send</button></form>`;
  $('#chats').appendChild(el);
  state.chats[jid] = el;
  $('form', el).addEventListener('submit', async ev => {
    ev.preventDefault();
    const input = $('input', el);
    const body = input.value.trim();
    if (!body) return;
    input.value = '';
    // No line yet: the room's echo ("own") shows it, as everyone sees it.
    try { await call('room_send', { room: jid, body }); } catch (e) { roomLine(jid, 'error', '', 'not sent: ' + e.message); }
  });
  $('.leave-room', el).addEventListener('click', async () => {
    await call('room_leave', { room: jid }).catch(e => alert(e.message));
    delete state.rooms[jid];
    el.remove();
    delete state.chats[jid];
    if (state.active === jid) state.active = null;
    loadRooms().catch(() => {});
  });
  $('.set-subject', el).addEventListener('click', async () => {
    const subject = prompt('Subject of ' + roomName(jid), (state.rooms[jid] && state.rooms[jid].subject) || '');
    if (subject !== null) await call('room_subject', { room: jid, subject }).catch(e => alert('Could not set the subject: ' + e.message));
  });
  return el;
}

function renderRoomWindow(jid) {
  const r = state.rooms[jid], el = state.chats[jid];
  if (!r || !el) return;
  $('.subject', el).textContent = r.subject ? '— ' + r.subject : '';
  const roleMark = { moderator: '★ ', visitor: '· ' };
  $('.occupants', el).innerHTML = Object.values(r.occupants).sort((a, b) => a.nick.localeCompare(b.nick)).map(o =>
    `<li class="occupant ${esc(o.role)} ${esc(o.show || 'online')}${o.nick === r.nick ? ' self' : ''}" data-nick="${esc(o.nick)}"
      title="${esc(o.affiliation + ' / ' + o.role + (o.jid ? ' — ' + o.jid : ''))}">${esc(roleMark[o.role] || '')}${esc(o.nick)}
      <span class="aff">${esc(o.affiliation !== 'none' ? o.affiliation : '')}</span></li>`).join('');
}

function roomLine(jid, who, nick, text, opts = {}) {
  const log = $('.log', roomWindow(jid));
  const li = document.createElement('li');
  li.className = who + (opts.history ? ' history' : '');
  if (opts.id) li.dataset.id = opts.id;
  li.innerHTML = (nick && who !== 'me' ? `<b class="nick">${esc(nick)}</b> ` : '') + `<span class="text">${esc(text)}</span>`;
  log.appendChild(li);
  log.scrollTop = log.scrollHeight;
}

function openRoom(jid) {
  state.active = jid;
  const el = roomWindow(jid);
  for (const c of Object.values(state.chats)) c.hidden = c !== el;
  $('.empty', $('#chats')) && $('.empty', $('#chats')).remove();
  state.unread[jid] = 0;
  renderRoomWindow(jid);
  renderRooms(); titleNotice();
  $('.compose input', el).focus();
}

async function joinRoom(room, nick = '', password = '') {
  const jr = await call('room_join', { room, nick, password });
  // Events of the room (history, presences) may have come first.
  const r = roomState(jr.jid);
  r.nick = jr.nick;
  r.subject = jr.subject || r.subject;
  for (const o of jr.occupants) r.occupants[o.nick] = o;
  openRoom(jr.jid);
  loadRooms().catch(() => {});
  return jr;
}

function roomState(jid) {
  return state.rooms[jid] || (state.rooms[jid] = { nick: '', subject: '', occupants: {} });
}

// roomHandle takes the events of group chat; it returns false for others.
// The sidecar only reports rooms this session is in (or joining).
function roomHandle(ev) {
  if (ev.event === 'room') {
    const r = roomState(ev.room);
    if (ev.type === 'available') {
      const isNew = !r.occupants[ev.nick];
      r.occupants[ev.nick] = ev;
      if (ev.self) r.nick = ev.nick;
      else if (isNew && state.chats[ev.room]) roomLine(ev.room, 'system', '', ev.nick + ' joined');
    } else {
      delete r.occupants[ev.nick];
      let what = ev.nick + ' left';
      if (ev.new_nick) what = ev.nick + ' is now ' + ev.new_nick;
      else if (ev.kicked) what = ev.nick + ' was kicked' + (ev.reason ? ': ' + ev.reason : '');
      else if (ev.banned) what = ev.nick + ' was banned' + (ev.reason ? ': ' + ev.reason : '');
      else if (ev.error) what = 'could not re-join the room (' + ev.error + ')';
      roomLine(ev.room, 'system', '', what);
      if (ev.self && !ev.new_nick && (ev.kicked || ev.banned || ev.error)) delete state.rooms[ev.room];
    }
    renderRoomWindow(ev.room);
    renderRooms();
    return true;
  }
  if (ev.event !== 'message' || ev.type !== 'groupchat' || !ev.room) return false;
  roomState(ev.room);
  if (ev.subject !== undefined && !ev.body) {
    state.rooms[ev.room].subject = ev.subject;
    roomLine(ev.room, 'system', '', (ev.nick ? ev.nick + ' set the subject: ' : 'Subject: ') + ev.subject);
    renderRoomWindow(ev.room);
    return true;
  }
  if (!ev.body) return true;
  roomLine(ev.room, ev.own ? 'me' : 'them', ev.nick, ev.body, { id: ev.id, history: !!ev.delay });
  if (!ev.own && !ev.delay && (state.active !== ev.room || document.hidden)) {
    state.unread[ev.room] = (state.unread[ev.room] || 0) + 1;
    renderRooms(); titleNotice();
  }
  return true;
}

document.addEventListener('click', ev => {
  const li = ev.target.closest('.room-item');
  if (!li) return;
  if (state.rooms[li.dataset.jid]) openRoom(li.dataset.jid);
  else joinRoom(li.dataset.jid).catch(e => alert('Could not join: ' + e.message));
});

$('#rooms-refresh').addEventListener('click', () => loadRooms().catch(e => alert(e.message)));

$('#join-room').addEventListener('submit', async ev => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  try {
    await joinRoom(f.get('room').trim(), f.get('nick').trim(), f.get('password'));
    ev.target.reset();
  } catch (e) {
    const why = { nick_in_use: 'that nickname is taken', room_password_required: 'wrong or missing password', room_banned: 'you are banned' }[e.message];
    alert('Could not join: ' + (why || e.message));
  }
});

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
    if (state.rooms[jid]) continue; // room windows: the re-join sends what was missed
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
