// An auditor logs in to the Penstock console in a real headless Chromium, searches the
// recordings for PENSTOCK_WORD, opens the first hit, and reads the replay's terminal (the
// asciinema-player's rendered lines in the DOM): the word is on it and PENSTOCK_LATER (typed
// seconds later) is not, until play is pressed. Screenshots go to
// PENSTOCK_SHOTS. Driven by tests/web_live.rs (browser_auditor_search_opens_replay_at_hit).
import { launch, logIn, need, watchErrors } from './common.mjs';
import { join } from 'node:path';

const url = need('PENSTOCK_URL');
const user = need('PENSTOCK_USER');
const password = need('PENSTOCK_PASSWORD');
const code = need('PENSTOCK_CODE');
const word = need('PENSTOCK_WORD');
const session = need('PENSTOCK_SESSION');
const later = need('PENSTOCK_LATER');
const shots = need('PENSTOCK_SHOTS');

const context = await launch({ width: 1100, height: 900 });
const page = context.pages()[0] ?? await context.newPage();
const { errors, fail } = watchErrors(page, context, shots);
page.setDefaultTimeout(30000);
await logIn(page, url, user, password, code);
await page.getByRole('link', { name: 'Recordings' }).click();
await page.waitForURL('**/audit/sessions');
await page.getByRole('searchbox', { name: 'Search recordings' }).fill(word);
await page.getByRole('button', { name: 'Search' }).click();
await page.waitForURL('**/audit/search?*');
const hit = page.locator(`a.hit[href^="/audit/sessions/${session}/replay?t="]`).first();
if (await hit.count() === 0) await fail(`no hit for ${word} in session ${session}`);
await page.screenshot({ path: join(shots, '1-search.png'), fullPage: true });
const href = await hit.getAttribute('href');
await hit.click();
await page.waitForURL(`**/audit/sessions/${session}/replay?t=*`);
const termText = () => page.evaluate(() => Array.from(document.querySelectorAll('#player .ap-line')).map((l) => l.textContent).join('\n'));
try {
  await page.waitForFunction((w) => Array.from(document.querySelectorAll('#player .ap-line')).some((l) => l.textContent.includes(w)), word, { timeout: 30000 });
} catch {
  await fail(`${word} not on the player's terminal; it shows:\n${await termText()}`);
}
await page.screenshot({ path: join(shots, '2-replay.png'), fullPage: true });
// That moment, not the end: what was typed seconds later is not on the screen yet.
if ((await termText()).includes(later)) await fail(`the replay shows ${later}, typed after the hit:\n${await termText()}`);
// Playing on from there reaches it.
await page.locator('#player .ap-playback-button').click();
try {
  await page.waitForFunction((w) => Array.from(document.querySelectorAll('#player .ap-line')).some((l) => l.textContent.includes(w)), later, { timeout: 30000 });
} catch {
  await fail(`playing on never showed ${later}:\n${await termText()}`);
}
await page.screenshot({ path: join(shots, '3-played.png'), fullPage: true });
const t = Number(new URL(href, url).searchParams.get('t'));
console.log(`seen ${word} in the replay started at ${t}`);
if (errors.length) console.log(`console errors: ${errors.join(' | ')}`);
await context.close();
