// A manager logs in to the Penstock console in a real headless Chromium (Debian's) with password
// and TOTP, finds the pending request REQUEST_ID with its decision context, and approves it.
// Screenshots go to SHOTS. Driven by tests/web.rs (browser_manager_approves_waiting_ssh).
import { launch, need } from './common.mjs';
import { join } from 'node:path';

const url = need('PENSTOCK_URL');
const user = need('PENSTOCK_USER');
const password = need('PENSTOCK_PASSWORD');
const code = need('PENSTOCK_CODE');
const id = need('PENSTOCK_REQUEST_ID');
const shots = need('PENSTOCK_SHOTS');

const context = await launch({ width: 390, height: 844 }); // a phone
const fail = async (page, msg) => {
  await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  console.error(msg);
  await context.close();
  process.exit(1);
};
const page = context.pages()[0] ?? await context.newPage();
page.setDefaultTimeout(30000);
await page.goto(url);
if (!page.url().endsWith('/login')) await fail(page, `not sent to the login page: ${page.url()}`);
await page.getByLabel('User').fill(user);
await page.getByLabel('Password').fill(password);
await page.getByLabel('Verification code').fill(code);
await page.screenshot({ path: join(shots, '1-login.png'), fullPage: true });
await page.getByRole('button', { name: 'Log in' }).click();
await page.waitForURL('**/requests');
const card = page.locator(`#request-${id}`);
if (await card.count() !== 1) await fail(page, `request ${id} is not on the page`);
const pending = (await page.locator('#pending-count').innerText()).trim();
if (pending === '0') await fail(page, 'the pending count is 0');
await page.screenshot({ path: join(shots, '2-pending.png'), fullPage: true });
await card.getByLabel(/Comment/).fill('approved from the browser test');
await card.getByRole('button', { name: `Approve #${id}` }).click();
await page.waitForURL('**/requests?done=approved-*');
const status = await page.getByRole('status').innerText();
if (!status.includes(`Request ${id}`)) await fail(page, `no confirmation: ${status}`);
await page.screenshot({ path: join(shots, '3-approved.png'), fullPage: true });
console.log(`approved ${id}; pending count was ${pending}`);
await context.close();
