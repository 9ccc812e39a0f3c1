// Independently written web XMPP clients, unchanged, on imsidecar: Alice
// uses Strophe.js (attached to a prebound BOSH session) and converse.js
// (prebind over BOSH, then SASL-by-session-cookie over WebSocket), each in
// its own tab of her one PHP session, while Bob uses the demo (the /v1
// API). They chat both ways from every client; converse.js joins a room
// Bob is in, shows its occupants, talks there both ways and keeps the
// room over a reload without the room seeing Alice leave or join; a
// reload re-attaches; no
// page, request or WebSocket frame of Alice's carries her password; her
// logout ends the clients' streams.
// env: BASE_URL, OUT_DIR, DOMAIN, ALICE_PASSWORD, BOB_PASSWORD, CHROMIUM
import { launch, login as loginAs } from './common.mjs';
import { mkdirSync } from 'node:fs';

const base = process.env.BASE_URL;
const out = process.env.OUT_DIR;
const domain = process.env.DOMAIN;
const alicePW = process.env.ALICE_PASSWORD;
mkdirSync(out, { recursive: true });
const T = 20000;
let step = 0;
const leaks = [];

const browser = await launch();
const shot = async (name, page) => {
  step++;
  await page.screenshot({ path: `${out}/clients-${String(step).padStart(2, '0')}-${name}.png` });
};

// Every request and WebSocket frame of a context is checked for the
// password, except the login form's own POST (the user typing it).
function watch(ctx, who, secret) {
  const check = (what, data) => {
    if (data && data.includes(secret)) leaks.push(`${who}: ${what}`);
  };
  ctx.on('request', req => {
    if (req.method() === 'POST' && req.url().endsWith('/login.php')) return;
    check(`${req.method()} ${req.url()}`, req.url() + ' ' + (req.postData() || '') + JSON.stringify(req.headers()));
  });
  ctx.on('response', async res => {
    const type = res.headers()['content-type'] || '';
    if (/json|xml|html|text/.test(type)) check(`response ${res.url()}`, await res.text().catch(() => ''));
  });
  ctx.on('page', page => page.on('websocket', ws => {
    ws.on('framesent', f => check(`ws frame sent ${ws.url()}`, String(f.payload)));
    ws.on('framereceived', f => check(`ws frame received ${ws.url()}`, String(f.payload)));
  }));
}

const login = (user, password) => loginAs(browser, base, user, password,
  { timeout: T, onContext: ctx => { if (user === 'alice') watch(ctx, user, password); } });

const aliceJID = `alice@${domain}`;
const bobJID = `bob@${domain}`;

async function bobSays(bob, text) {
  await bob.locator(`li.contact[data-jid="${aliceJID}"] .name`).click();
  await bob.fill('.chat:not([hidden]) .compose input', text);
  await bob.press('.chat:not([hidden]) .compose input', 'Enter');
}

try {
  const bob = await login('bob', process.env.BOB_PASSWORD);
  const aliceIM = await login('alice', alicePW);
  const ctx = aliceIM.context();

  // Strophe.js attaches to a prebound BOSH session.
  const strophe = await ctx.newPage();
  strophe.on('pageerror', e => console.error('[strophe] page error:', e.message));
  await strophe.goto(base + '/strophe.php');
  await strophe.waitForSelector('#state.attached', { timeout: T });
  await strophe.locator('#log li.presence', { hasText: bobJID }).first().waitFor({ timeout: T });
  await strophe.fill('#send input[name=to]', bobJID);
  await strophe.fill('#send input[name=body]', 'Olá do Strophe.js');
  await strophe.click('#send button');
  await bob.locator('.log li.them', { hasText: 'Olá do Strophe.js' }).first().waitFor({ timeout: T });
  await bobSays(bob, 'Oi, Strophe!');
  await strophe.locator('#log li.them', { hasText: 'Oi, Strophe!' }).waitFor({ timeout: T });
  await shot('strophe-chat', strophe);
  // A reload attaches again; what Bob writes meanwhile arrives.
  await strophe.reload();
  await bobSays(bob, 'Durante o reload');
  await strophe.waitForSelector('#state.attached', { timeout: T });
  await strophe.locator('#log li.them', { hasText: 'Durante o reload' }).waitFor({ timeout: T });
  if (await strophe.locator('#log li.them', { hasText: 'Durante o reload' }).count() !== 1) {
    throw new Error('the message sent during the reload did not arrive exactly once');
  }
  await shot('strophe-after-reload', strophe);

  // converse.js, prebind over BOSH, in another tab of the same session.
  const convs = {};
  for (const [name, path] of [['converse-bosh', '/converse.php'], ['converse-websocket', '/converse.php?transport=websocket']]) {
    const conv = await ctx.newPage();
    convs[name] = conv;
    conv.on('pageerror', e => console.error(`[${name}] page error:`, e.message));
    await conv.goto(base + path);
    await conv.waitForFunction(() => window.converseAPI && window.converseAPI.connection.connected(), null, { timeout: T });
    const jid = await conv.evaluate(() => window.converseAPI.connection.get().jid);
    if (!jid.startsWith(aliceJID + '/')) throw new Error(`${name} bound ${jid}`);
    await conv.evaluate(j => window.converseAPI.chats.open(j, {}, true), bobJID);
    const input = conv.locator('textarea.chat-textarea:visible').first();
    await input.waitFor({ timeout: T });
    // What Alice said from Strophe.js never reached this tab live: it is
    // there because converse.js paged the archive (XEP-0313) through the
    // sidecar, the answers routed to this tab alone.
    await conv.locator('.chat-msg__text', { hasText: 'Olá do Strophe.js' }).first().waitFor({ timeout: T });
    const text = `Olá do ${name}`;
    await input.fill(text);
    await input.press('Enter');
    await bob.locator('.log li.them', { hasText: text }).first().waitFor({ timeout: T });
    await bobSays(bob, `Oi, ${name}!`);
    await conv.locator('.chat-msg__text', { hasText: `Oi, ${name}!` }).first().waitFor({ timeout: T });
    await shot(name, conv);
    if ((await conv.content()).includes(alicePW)) leaks.push(`${name}: page content`);
  }
  // converse.js in a group chat room with Bob (the demo, /v1): the
  // occupant list, messages both ways, and a reload that keeps the room
  // without the room hearing Alice leave or join again.
  const room = `sala@${process.env.MUC_DOMAIN}`;
  const bobRoom = bob.locator(`.chat.room[data-jid="${room}"]:not([hidden])`);
  await bob.fill('#join-room input[name=room]', 'sala');
  await bob.click('#join-room button');
  await bobRoom.locator('.occupant.self').waitFor({ timeout: T });
  const conv = convs['converse-bosh'];
  const openRoom = () => conv.evaluate(j => window.converseAPI.rooms.open(j, { nick: 'alice' }, true), room);
  await openRoom();
  const convRoom = conv.locator('converse-muc').first();
  await convRoom.locator('.occupant-list .occupant-nick', { hasText: 'Bob' }).first().waitFor({ timeout: T });
  await convRoom.locator('.occupant-list .occupant-nick', { hasText: 'alice' }).first().waitFor({ timeout: T });
  await bobRoom.locator('.log li.system', { hasText: 'alice joined' }).waitFor({ timeout: T });
  await bobRoom.locator('.occupant', { hasText: 'alice' }).waitFor({ timeout: T });
  const roomInput = convRoom.locator('textarea.chat-textarea');
  await roomInput.fill('Olá, sala, do converse.js');
  await roomInput.press('Enter');
  await bobRoom.locator('.log li.them', { hasText: 'Olá, sala, do converse.js' }).waitFor({ timeout: T });
  const bobSaysInRoom = async text => {
    await bobRoom.locator('.compose input').fill(text);
    await bobRoom.locator('.compose input').press('Enter');
  };
  await bobSaysInRoom('Oi, Alice, na sala!');
  await convRoom.locator('.chat-msg__text', { hasText: 'Oi, Alice, na sala!' }).first().waitFor({ timeout: T });
  await shot('converse-room', conv);
  await conv.reload();
  await conv.waitForFunction(() => window.converseAPI && window.converseAPI.connection.connected(), null, { timeout: T });
  await openRoom();
  await convRoom.locator('.occupant-list .occupant-nick', { hasText: 'Bob' }).first().waitFor({ timeout: T });
  await bobSaysInRoom('Depois do reload da sala');
  await convRoom.locator('.chat-msg__text', { hasText: 'Depois do reload da sala' }).first().waitFor({ timeout: T });
  await roomInput.fill('Ainda na sala');
  await roomInput.press('Enter');
  await bobRoom.locator('.log li.them', { hasText: 'Ainda na sala' }).waitFor({ timeout: T });
  const joins = await bobRoom.locator('.log li.system', { hasText: 'alice joined' }).count();
  const leaves = await bobRoom.locator('.log li.system', { hasText: 'alice left' }).count();
  if (joins !== 1 || leaves !== 0) {
    throw new Error(`Bob saw alice join ${joins} times and leave ${leaves} times around converse.js's reload`);
  }
  await shot('converse-room-after-reload', conv);
  await shot('bob-room', bob);

  for (const p of ctx.pages()) {
    if ((await p.content()).includes(alicePW)) leaks.push(`page ${p.url()}`);
  }
  if (leaks.length) throw new Error("Alice's password reached the browser: " + leaks.join('; '));

  // Logout ends the attached clients' streams.
  await aliceIM.click('#logout');
  await aliceIM.waitForSelector('#login-form', { timeout: T });
  await strophe.waitForSelector('#state.disconnected', { timeout: T });
  await shot('strophe-logged-out', strophe);
  console.log(`clients test passed; ${step} steps, screenshots in ${out}`);
} catch (e) {
  console.error('clients test failed at step', step + 1, ':', e.message);
  for (const ctx of browser.contexts()) for (const [i, p] of ctx.pages().entries()) {
    await p.screenshot({ path: `${out}/clients-failure-${browser.contexts().indexOf(ctx)}-${i}.png` }).catch(() => {});
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
