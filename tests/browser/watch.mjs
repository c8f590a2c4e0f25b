// A manager (or auditor) logs in to the Penstock console in a real headless Chromium, opens the
// live view of session PENSTOCK_SESSION from the sessions page, prints READY once the view is
// live, then waits until PENSTOCK_WORD appears on the watched screen and until the session ends.
// Screenshots go to PENSTOCK_SHOTS. Driven by tests/web_live.rs (browser_manager_watches_live_ssh).
import { launch, logIn, need } from './common.mjs';
import { join } from 'node:path';

const url = need('PENSTOCK_URL');
const user = need('PENSTOCK_USER');
const password = need('PENSTOCK_PASSWORD');
const code = need('PENSTOCK_CODE');
const session = need('PENSTOCK_SESSION');
const word = need('PENSTOCK_WORD');
const shots = need('PENSTOCK_SHOTS');

const context = await launch({ width: 1100, height: 800 });
const page = context.pages()[0] ?? await context.newPage();
const errors = [];
page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
const fail = async (msg) => {
  await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  console.error(`${msg}\nconsole errors: ${errors.join(' | ')}`);
  await context.close();
  process.exit(1);
};
page.setDefaultTimeout(30000);
await logIn(page, url, user, password, code);
await page.goto(new URL('/sessions', url).href);
const link = page.locator(`#session-${session} a[href="/sessions/${session}/watch"]`);
if (await link.count() !== 1) await fail(`no watch link for ${session} on the sessions page`);
await link.click();
await page.waitForURL(`**/sessions/${session}/watch`);
const status = page.locator('#live-status');
try {
  await page.waitForFunction(() => document.getElementById('live-status')?.textContent.startsWith('Live'));
} catch {
  await fail(`the view did not go live: ${await status.innerText()}`);
}
await page.screenshot({ path: join(shots, '1-live.png'), fullPage: true });
console.log('READY');
try {
  await page.waitForFunction((w) => document.getElementById('screen')?.textContent.includes(w), word, { timeout: 45000 });
} catch {
  await fail(`${word} did not appear; the screen shows:\n${await page.locator('#screen').innerText()}`);
}
await page.screenshot({ path: join(shots, '2-word.png'), fullPage: true });
console.log(`seen ${word}`);
try {
  await page.waitForFunction(() => document.getElementById('live-status')?.textContent === 'The session ended.', null, { timeout: 45000 });
} catch {
  await fail(`no end of session shown: ${await status.innerText()}`);
}
await page.screenshot({ path: join(shots, '3-ended.png'), fullPage: true });
console.log('ended');
await context.close();
