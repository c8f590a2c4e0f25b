// A manager (or auditor) logs in to the Penstock console in a real headless Chromium, opens the
// live view of session PENSTOCK_SESSION from the sessions page, prints READY once the view is
// live, then waits until what it is told to look for is on the watched screen (printing `seen X`
// for each) and until the session ends (printing `ended`). For an SSH session that is the text
// PENSTOCK_WORD; for an RDP session, PENSTOCK_RGB: colours `R,G,B;R,G,B…`, one after the other,
// at pixel (PENSTOCK_X, PENSTOCK_Y) of the canvas. Screenshots go to PENSTOCK_SHOTS. Driven by
// tests/web_live.rs (browser_manager_watches_live_ssh) and tests/rdp.rs
// (rdp_browser_auditor_plays_the_recording).
import { launch, logIn, need, watchErrors } from './common.mjs';
import { join } from 'node:path';

const url = need('PENSTOCK_URL');
const user = need('PENSTOCK_USER');
const password = need('PENSTOCK_PASSWORD');
const code = need('PENSTOCK_CODE');
const session = need('PENSTOCK_SESSION');
const word = process.env.PENSTOCK_WORD;
const colours = (process.env.PENSTOCK_RGB ?? '').split(';').filter(Boolean).map((c) => c.split(',').map(Number));
if (!word && !colours.length) throw new Error('set PENSTOCK_WORD or PENSTOCK_RGB');
const at = [Number(process.env.PENSTOCK_X ?? 0), Number(process.env.PENSTOCK_Y ?? 0)];
const shots = need('PENSTOCK_SHOTS');

const context = await launch({ width: 1100, height: 800 });
const page = context.pages()[0] ?? await context.newPage();
const { errors, fail } = watchErrors(page, context, shots);
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
if (word) {
  try {
    await page.waitForFunction((w) => document.getElementById('screen')?.textContent.includes(w), word, { timeout: 45000 });
  } catch {
    await fail(`${word} did not appear; the screen shows:\n${await page.locator('#screen').innerText()}`);
  }
  await page.screenshot({ path: join(shots, '2-word.png'), fullPage: true });
  console.log(`seen ${word}`);
}
const pixel = () => page.evaluate(([x, y]) => {
  const c = document.getElementById('rdp-screen');
  return c && c.width ? Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3)) : [];
}, at);
for (const [n, want] of colours.entries()) {
  try {
    await page.waitForFunction(([w, [x, y]]) => {
      const c = document.getElementById('rdp-screen');
      if (!c || !c.width) return false;
      const d = c.getContext('2d').getImageData(x, y, 1, 1).data;
      return w.every((v, i) => Math.abs(v - d[i]) <= 16);
    }, [want, at], { timeout: 45000, polling: 100 });
  } catch {
    await fail(`${want.join(',')} did not appear at ${at.join(',')}; the canvas shows ${(await pixel()).join(',')}`);
  }
  await page.screenshot({ path: join(shots, `2-colour-${n}.png`), fullPage: true });
  console.log(`seen ${want.join(',')}`);
}
try {
  await page.waitForFunction(() => document.getElementById('live-status')?.textContent === 'The session ended.', null, { timeout: 45000 });
} catch {
  await fail(`no end of session shown: ${await status.innerText()}`);
}
await page.screenshot({ path: join(shots, '3-ended.png'), fullPage: true });
console.log('ended');
await context.close();
