// Drives the Expresso demo in headless Chromium: Alice and Bob log in from
// two browser contexts, befriend each other through the UI, chat both ways,
// see the typing indicator, each other's status and avatars, talk in a
// group chat room; Alice logs out, Bob writes, and Alice logs in again and
// reads it all from history.
// env: BASE_URL, OUT_DIR, DOMAIN, MUC_DOMAIN, ALICE_PASSWORD, BOB_PASSWORD
import { launch, login as loginAs } from './common.mjs';
import { mkdirSync } from 'node:fs';

const base = process.env.BASE_URL;
const out = process.env.OUT_DIR;
const domain = process.env.DOMAIN;
mkdirSync(out, { recursive: true });
const T = 20000;
let step = 0;

const browser = await launch();
const shots = async (name, ...pages) => {
  step++;
  for (const [i, p] of pages.entries()) {
    await p.screenshot({ path: `${out}/${String(step).padStart(2, '0')}-${name}-${i ? 'bob' : 'alice'}.png` });
  }
};

const login = (user, password) => loginAs(browser, base, user, password, { timeout: T });

function contact(page, jid) { return page.locator(`li.contact[data-jid="${jid}"]`); }

try {
  const alice = await login('alice', process.env.ALICE_PASSWORD);
  const bob = await login('bob', process.env.BOB_PASSWORD);
  await shots('logged-in', alice, bob);

  // Alice adds Bob; Bob approves (and adds her back); Alice approves.
  await alice.fill('#add input[name=jid]', `bob@${domain}`);
  await alice.fill('#add input[name=name]', 'Bob');
  await alice.fill('#add input[name=group]', 'Team');
  await alice.click('#add button');
  await bob.waitForSelector(`.request[data-jid="alice@${domain}"] .approve`, { timeout: T });
  await shots('subscription-request', alice, bob);
  await bob.click(`.request[data-jid="alice@${domain}"] .approve`);
  await alice.waitForSelector(`.request[data-jid="bob@${domain}"] .approve`, { timeout: T });
  await alice.click(`.request[data-jid="bob@${domain}"] .approve`);
  await contact(alice, `bob@${domain}`).and(alice.locator('.online')).waitFor({ timeout: T });
  await contact(bob, `alice@${domain}`).and(bob.locator('.online')).waitFor({ timeout: T });
  await shots('online', alice, bob);

  // Avatars: Bob's vCard photo (published by his desktop client) in
  // Alice's list; Alice has none, so Bob sees her initial.
  await alice.waitForFunction(jid => {
    const img = document.querySelector(`li.contact[data-jid="${jid}"] img.avatar`);
    return img && img.complete && img.naturalWidth === 32;
  }, `bob@${domain}`, { timeout: T });
  await contact(bob, `alice@${domain}`).locator('.avatar.none', { hasText: 'A' }).waitFor({ timeout: T });

  // Alice writes to Bob.
  await contact(alice, `bob@${domain}`).locator('.name').click();
  await alice.fill('.chat:not([hidden]) .compose input', 'Olá Bob, tudo bem?');
  await alice.press('.chat:not([hidden]) .compose input', 'Enter');
  await bob.locator('.log li.them', { hasText: 'Olá Bob, tudo bem?' }).waitFor({ timeout: T });
  await alice.locator('.log li.me .tick', { hasText: '✓' }).first().waitFor({ timeout: T });
  await shots('alice-to-bob', alice, bob);

  // Bob types: Alice sees the typing indicator; then he answers.
  await bob.locator('.chat:not([hidden]) .compose input').pressSequentially('Tudo ', { delay: 50 });
  await alice.locator('.typing', { hasText: 'is typing' }).waitFor({ timeout: T });
  await shots('typing', alice, bob);
  await bob.locator('.chat:not([hidden]) .compose input').pressSequentially('ótimo!', { delay: 20 });
  await bob.press('.chat:not([hidden]) .compose input', 'Enter');
  await alice.locator('.log li.them', { hasText: 'Tudo ótimo!' }).waitFor({ timeout: T });
  await shots('bob-to-alice', alice, bob);

  // Alice goes away; Bob sees it.
  await alice.fill('#status', 'almoçando');
  await alice.selectOption('#show', 'away');
  await contact(bob, `alice@${domain}`).and(bob.locator('.away')).waitFor({ timeout: T });
  await shots('alice-away', alice, bob);

  // Group chat: Alice creates a room from the Rooms panel, Bob finds it in
  // the list and joins; they talk, each sees the other among the occupants.
  const room = `equipe@${process.env.MUC_DOMAIN}`;
  const roomWin = p => p.locator(`.chat.room[data-jid="${room}"]:not([hidden])`);
  await alice.fill('#join-room input[name=room]', 'equipe');
  await alice.click('#join-room button');
  await roomWin(alice).locator('.occupant.moderator.self', { hasText: 'Alice Araújo' }).waitFor({ timeout: T });
  await bob.click('#rooms-refresh');
  await bob.locator(`.room-item[data-jid="${room}"]`).click();
  await roomWin(bob).locator('.occupant.self', { hasText: 'Bob Brandão' }).waitFor({ timeout: T });
  await roomWin(alice).locator('.occupant.participant', { hasText: 'Bob Brandão' }).waitFor({ timeout: T });
  await roomWin(bob).locator('.occupant.moderator', { hasText: 'Alice Araújo' }).waitFor({ timeout: T });
  await roomWin(alice).locator('.compose input').fill('Bom dia, equipe!');
  await roomWin(alice).locator('.compose input').press('Enter');
  await roomWin(bob).locator('.log li.them', { hasText: 'Bom dia, equipe!' }).waitFor({ timeout: T });
  await roomWin(alice).locator('.log li.me', { hasText: 'Bom dia, equipe!' }).waitFor({ timeout: T });
  await roomWin(bob).locator('.compose input').fill('Bom dia, Alice!');
  await roomWin(bob).locator('.compose input').press('Enter');
  await roomWin(alice).locator('.log li.them', { hasText: 'Bom dia, Alice!' }).waitFor({ timeout: T });
  await roomWin(alice).locator('.log li.them .nick', { hasText: 'Bob Brandão' }).waitFor({ timeout: T });
  alice.once('dialog', d => d.accept('Planejamento de 2027'));
  await roomWin(alice).locator('.set-subject').click();
  await roomWin(bob).locator('h2 .subject', { hasText: 'Planejamento de 2027' }).waitFor({ timeout: T });
  await shots('room-conversation', alice, bob);
  await roomWin(bob).locator('.leave-room').click();
  await roomWin(alice).locator('.log li.system', { hasText: 'Bob Brandão left' }).waitFor({ timeout: T });
  await shots('room-bob-left', alice, bob);

  // Alice logs out; Bob sees her offline.
  await alice.click('#logout');
  await alice.waitForSelector('#login-form', { timeout: T });
  await contact(bob, `alice@${domain}`).and(bob.locator('.offline')).waitFor({ timeout: T });
  await shots('alice-logged-out', alice, bob);

  // While Alice is out, Bob writes. She logs in again (a new browser),
  // opens the chat and finds the whole conversation in the history,
  // three messages a page (?history_max=3) with "Load older messages".
  // Bob left the room, so he opens his chat with Alice again first.
  await contact(bob, `alice@${domain}`).locator('.name').click();
  for (const text of ['Você viu o relatório?', 'Me avisa quando voltar.']) {
    await bob.fill('.chat:not([hidden]) .compose input', text);
    await bob.press('.chat:not([hidden]) .compose input', 'Enter');
    await bob.locator('.log li.me', { hasText: text }).waitFor({ timeout: T });
  }
  const alice2 = await login('alice', process.env.ALICE_PASSWORD);
  await alice2.goto(base + '/im.php?history_max=3');
  await alice2.waitForSelector('#conn.online', { timeout: T });
  await contact(alice2, `bob@${domain}`).locator('.name').click();
  const log2 = alice2.locator('.chat:not([hidden]) .log');
  await log2.locator('li.them.hist', { hasText: 'Me avisa quando voltar.' }).waitFor({ timeout: T });
  await log2.locator('li.them.hist', { hasText: 'Você viu o relatório?' }).waitFor({ timeout: T });
  await log2.locator('li.hist', { hasText: 'Tudo ótimo!' }).waitFor({ timeout: T });
  await shots('history-newest-page', alice2, bob);
  // Page back to the start of the conversation.
  for (let i = 0; i < 5 && await alice2.locator('.chat:not([hidden]) .older').isVisible(); i++) {
    const n = await log2.locator('li').count();
    await alice2.click('.chat:not([hidden]) .older');
    await alice2.waitForFunction(n => document.querySelectorAll('.chat:not([hidden]) .log li').length > n ||
      document.querySelector('.chat:not([hidden]) .older').hidden, n, { timeout: T });
  }
  await log2.locator('li.me.hist', { hasText: 'Olá Bob, tudo bem?' }).waitFor({ timeout: T });
  await alice2.locator('.chat:not([hidden]) .older').waitFor({ state: 'hidden', timeout: T });
  const lines = await log2.locator('li .text').allTextContents();
  const want = ['Olá Bob, tudo bem?', 'Tudo ótimo!', 'Você viu o relatório?', 'Me avisa quando voltar.'];
  if (JSON.stringify(lines) !== JSON.stringify(want)) throw new Error('history shows ' + JSON.stringify(lines));
  await shots('history-all', alice2, bob);
  console.log(`browser test passed; ${step} steps, screenshots in ${out}`);
} catch (e) {
  console.error('browser test failed at step', step + 1, ':', e.message);
  for (const ctx of browser.contexts()) for (const [i, p] of ctx.pages().entries()) {
    await p.screenshot({ path: `${out}/failure-${browser.contexts().indexOf(ctx)}-${i}.png` }).catch(() => {});
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
