// The demo's IM page: plain JavaScript, no build step. Everything goes
// through api.php (PHP calls the sidecar); the password never reaches here.
'use strict';
const $ = (s, el = document) => el.querySelector(s);
const state = { cursor: '', roster: {}, presence: {}, chats: {}, unread: {}, active: null, typing: {}, title: document.title };

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
        <span class="dot"></span>
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
      addLine(peer, ev.carbon === 'sent' ? 'me' : 'them', ev.body);
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
      else state.presence[jid][res] = { show: ev.show, status: ev.status, priority: ev.priority };
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
  if (!page.recovered) loadRoster().catch(() => {});
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
  src.addEventListener('reset', () => loadRoster().catch(() => {}));
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
