// Drives the stand-in page in headless Chromium for the Go test
// (examples/expresso/standin_test.go), which owns the scenario: it writes
// one JSON command per line on stdin and reads one JSON answer per line on
// stdout ({"ok":true,"value":...} or {"ok":false,"error":"..."}).
//
//   {"op":"open","url":"...","cookies":[{name,value,url}]}  a fresh browser context
//   {"op":"eval","js":"..."}                 the value of an expression
//   {"op":"wait","js":"...","timeout":ms}    until the expression is truthy
//   {"op":"reload"}                          a full page reload
//   {"op":"goto","url":"..."}                navigation in the same page
//   {"op":"requests"}                        every POST the pages reported so far (one sent
//                                            while a page unloads may be missing: the
//                                            test's site records what arrived)
//   {"op":"close"}
// env: CHROMIUM (default /usr/bin/chromium)
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let ctx = null;
let page = null;
const requests = [];

async function run(cmd) {
  switch (cmd.op) {
    case 'open':
      if (ctx) await ctx.close();
      ctx = await browser.newContext();
      if (cmd.cookies) await ctx.addCookies(cmd.cookies);
      page = await ctx.newPage();
      page.on('pageerror', e => process.stderr.write(`page error: ${e.message}\n`));
      page.on('console', m => process.stderr.write(`console: ${m.text()} (${m.location().url || 'no url'})\n`));
      page.on('requestfailed', r => process.stderr.write(`request failed: ${r.method()} ${r.url()}: ${(r.failure() || {}).errorText}\n`));
      page.on('request', r => {
        if (r.method() !== 'POST') return;
        requests.push({ url: r.url(), contentType: r.headers()['content-type'] || '', body: r.postData() || '' });
      });
      await page.goto(cmd.url);
      return null;
    case 'eval':
      return await page.evaluate(cmd.js);
    case 'wait':
      await page.waitForFunction(cmd.js, null, { timeout: cmd.timeout || 20000, polling: 50 });
      return null;
    case 'reload':
      await page.reload();
      return null;
    case 'goto':
      await page.goto(cmd.url);
      return null;
    case 'requests':
      return requests;
    case 'close':
      if (ctx) await ctx.close();
      ctx = null;
      return null;
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  let answer;
  try {
    answer = { ok: true, value: await run(JSON.parse(line)) };
  } catch (e) {
    answer = { ok: false, error: String(e && e.message || e) };
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
}
await browser.close();
