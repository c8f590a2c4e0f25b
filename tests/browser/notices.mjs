// A vendor with a live session logs in to the Penstock console in a real headless Chromium and
// stays on its grants page: it waits until the ending notice of that session (PENSTOCK_NOTICE,
// e.g. "ends in 9 minutes") is in the banner, prints "seen notice", then waits (no reload) until
// the banner is gone after the session ended. Screenshots go to PENSTOCK_SHOTS.
// Driven by tests/web_live.rs (browser_vendor_sees_ending_notice).
import { launch, logIn, need, watchErrors } from './common.mjs';
import { join } from 'node:path';

const url = need('PENSTOCK_URL');
const user = need('PENSTOCK_USER');
const password = need('PENSTOCK_PASSWORD');
const code = need('PENSTOCK_CODE');
const notice = need('PENSTOCK_NOTICE');
const shots = need('PENSTOCK_SHOTS');

const context = await launch({ width: 1000, height: 700 });
const page = context.pages()[0] ?? await context.newPage();
const { errors, fail } = watchErrors(page, context, shots);
page.setDefaultTimeout(30000);
await logIn(page, url, user, password, code);
await page.goto(new URL('/grants', url).href);
try {
  await page.waitForFunction((n) => document.querySelector('#notices .notice')?.textContent.includes(n), notice, { timeout: 60000 });
} catch {
  await fail(`no notice with "${notice}": ${await page.locator('#notices').innerText()}`);
}
await page.screenshot({ path: join(shots, '1-notice.png'), fullPage: true });
console.log(`seen notice: ${await page.locator('#notices').innerText()}`);
try {
  await page.waitForFunction(() => document.querySelectorAll('#notices .notice').length === 0, null, { timeout: 60000 });
} catch {
  await fail(`the notice stayed after the session ended: ${await page.locator('#notices').innerText()}`);
}
console.log('notice gone');
await context.close();
