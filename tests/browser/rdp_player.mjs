// An auditor logs in to the Penstock console in a real headless Chromium, opens the replay of
// RDP session PENSTOCK_SESSION from the recordings list, and prints what the canvas shows:
// `first-frame R,G,B` at (PENSTOCK_X, PENSTOCK_Y) once the first frame is drawn, then, after
// pressing Play at 8x and letting it run to the end, `last-frame R,G,B at SECONDS`; then it
// clicks the first key-log link and prints `seeked SECONDS frame R,G,B`. Driven by tests/rdp.rs
// (rdp_browser_auditor_plays_the_recording).
import { launch, logIn, need, watchErrors } from './common.mjs';
import { join } from 'node:path';

const url = need('PENSTOCK_URL');
const session = need('PENSTOCK_SESSION');
const shots = need('PENSTOCK_SHOTS');
const x = Number(need('PENSTOCK_X'));
const y = Number(need('PENSTOCK_Y'));

const context = await launch({ width: 1300, height: 1000 });
const page = context.pages()[0] ?? await context.newPage();
const { errors, fail } = watchErrors(page, context, shots);
page.setDefaultTimeout(30000);
await logIn(page, url, need('PENSTOCK_USER'), need('PENSTOCK_PASSWORD'), need('PENSTOCK_CODE'));
await page.goto(new URL('/audit/sessions?protocol=rdp', url).href);
const link = page.locator(`#row-${session} a[href="/audit/sessions/${session}/replay"]`);
if (await link.count() !== 1) await fail(`no replay link for ${session}`);
await link.click();
await page.waitForURL(`**/audit/sessions/${session}/replay`);
const pixel = () => page.evaluate(([px, py]) => {
  const c = document.getElementById('rdp-screen');
  return Array.from(c.getContext('2d').getImageData(px, py, 1, 1).data.slice(0, 3)).join(',');
}, [x, y]);
const frames = () => page.evaluate(() => Number(document.getElementById('rdp-player').dataset.frames || 0));
try {
  await page.waitForFunction(() => Number(document.getElementById('rdp-player').dataset.frames || 0) > 0);
} catch {
  await fail(`no frame was drawn: ${await page.locator('#rdp-status').innerText()}`);
}
console.log(`first-frame ${await pixel()}`);
await page.screenshot({ path: join(shots, '1-first.png'), fullPage: true });
const before = await frames();
await page.selectOption('#rdp-speed', '8');
await page.getByRole('button', { name: 'Play' }).click();
try {
  await page.waitForFunction(() => document.getElementById('rdp-status').textContent === 'End of recording', null, { timeout: 60000 });
} catch {
  await fail(`play did not reach the end: ${await page.locator('#rdp-status').innerText()}`);
}
const at = await page.evaluate(() => document.getElementById('rdp-player').dataset.at);
console.log(`last-frame ${await pixel()} at ${at} after ${(await frames()) - before} frames`);
await page.screenshot({ path: join(shots, '2-end.png'), fullPage: true });
const key = page.locator('#rdp-keys a[data-t]').first();
const t = await key.getAttribute('data-t');
await key.click();
try {
  await page.waitForFunction((want) => document.getElementById('rdp-player').dataset.at === Number(want).toFixed(3), t);
} catch {
  await fail(`the key-log link did not seek to ${t}`);
}
if (!page.url().endsWith('/replay')) await fail(`the link reloaded the page: ${page.url()}`);
await page.waitForTimeout(300);
console.log(`seeked ${t} frame ${await pixel()}`);
if (errors.length) await fail('console errors');
await context.close();
