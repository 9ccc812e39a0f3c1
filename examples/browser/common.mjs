// What the browser tests share: headless Chromium, and logging in to the
// demo as Expresso would.
import { chromium } from 'playwright-core';

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

// login opens a new browser context, logs user in through the demo's login
// form and waits until the messenger is online; onContext may watch the
// context first. The password must not be in the page.
export async function login(browser, base, user, password, { timeout = 20000, onContext } = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  if (onContext) onContext(ctx);
  const page = await ctx.newPage();
  page.on('pageerror', e => console.error(`[${user}] page error:`, e.message));
  await page.goto(base + '/login.php');
  await page.fill('#user', user);
  await page.fill('#password', password);
  await page.click('#login');
  await page.waitForSelector('#conn.online', { timeout });
  if ((await page.content()).includes(password)) throw new Error(`${user}'s password reached the browser`);
  return page;
}
