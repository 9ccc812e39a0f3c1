// Independently written web XMPP clients, unchanged, on imsidecar: Alice
// uses Strophe.js (attached to a prebound BOSH session) and converse.js
// (prebind over BOSH, then SASL-by-session-cookie over WebSocket), each in
// its own tab of her one PHP session, while Bob uses the demo (the /v1
// API). They chat both ways from every client; a reload re-attaches; no
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
  for (const [name, path] of [['converse-bosh', '/converse.php'], ['converse-websocket', '/converse.php?transport=websocket']]) {
    const conv = await ctx.newPage();
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
