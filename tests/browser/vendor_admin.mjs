// A vendor and an admin in the Penstock console, in a real headless Chromium (Debian's).
// The vendor logs in (password + TOTP), files a request through the form (first over the
// policy's limit: the error is shown), waits for the grant (the test approves it through the API
// when it reads `filed ID`), reads the ssh line on the grant's page, reveals the grant credential
// with a fresh TOTP code, and is refused another vendor's session page. Then the admin logs in,
// fetches the host key of a new SSH target, compares the fingerprint with the expected one and
// pins it. TOTP codes are computed here from the seeds (RFC 6238, SHA-1, 30 s), each step used
// once per user. Screenshots go to SHOTS. Driven by tests/web_admin.rs.
import { launch, need } from './common.mjs';
import { createHmac } from 'node:crypto';
import { join } from 'node:path';

const url = need('PENSTOCK_URL').replace(/\/$/, '');
const vendor = need('PENSTOCK_VENDOR');
const vendorPassword = need('PENSTOCK_VENDOR_PASSWORD');
const vendorSeed = need('PENSTOCK_VENDOR_SEED');
const admin = need('PENSTOCK_ADMIN');
const adminPassword = need('PENSTOCK_ADMIN_PASSWORD');
const adminSeed = need('PENSTOCK_ADMIN_SEED');
const target = need('PENSTOCK_TARGET');
const otherSession = need('PENSTOCK_OTHER_SESSION');
const otherUser = need('PENSTOCK_OTHER_USER');
const sshdAddress = need('PENSTOCK_SSHD_ADDRESS');
const expectFp = need('PENSTOCK_EXPECT_FP');
const newTarget = need('PENSTOCK_NEW_TARGET');
const targetLogin = need('PENSTOCK_TARGET_LOGIN');
const targetPassword = need('PENSTOCK_TARGET_PASSWORD');
const shots = need('PENSTOCK_SHOTS');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const totpAt = (seedHex, step) => {
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(step));
  const h = createHmac('sha1', Buffer.from(seedHex, 'hex')).update(msg).digest();
  const o = h[h.length - 1] & 0xf;
  const n = ((h[o] & 0x7f) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3];
  return String(n % 1000000).padStart(6, '0');
};
const lastStep = {};
// A code for a step not used before that the server (±1 step) accepts now.
const freshCode = async (who, seed) => {
  for (;;) {
    const cur = Math.floor(Date.now() / 30000);
    const step = Math.max(cur, (lastStep[who] ?? 0) + 1);
    if (step <= cur + 1) { lastStep[who] = step; return totpAt(seed, step); }
    await sleep(250);
  }
};

const context = await launch({ width: 1100, height: 900 });
const page = context.pages()[0] ?? await context.newPage();
page.setDefaultTimeout(30000);
const fail = async (msg) => {
  await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  console.error(msg);
  await context.close();
  process.exit(1);
};
const shot = (name) => page.screenshot({ path: join(shots, name), fullPage: true });

const login = async (user, password, seed) => {
  await page.goto(`${url}/login`);
  await page.getByLabel('User').fill(user);
  await page.getByLabel('Password').fill(password);
  await page.getByLabel('Verification code').fill(await freshCode(user, seed));
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.waitForURL('**/requests');
};

// The vendor files a request.
await login(vendor, vendorPassword, vendorSeed);
await page.getByRole('link', { name: 'New request' }).click();
await page.waitForURL('**/requests/new');
const row = page.locator(`#target-${target}`);
if (await row.count() !== 1) await fail(`${target} is not offered`);
if (!(await row.innerText()).includes('2h')) await fail(`no limit shown: ${await row.innerText()}`);
await page.getByLabel('Target', { exact: true }).selectOption(target);
await page.getByLabel(/^Duration/).fill('9h');
await page.getByLabel(/^Reason/).fill('CHG-5150 browser');
await shot('1-new-request.png');
await page.getByRole('button', { name: 'File request' }).click();
const alert = await page.getByRole('alert').innerText();
if (!alert.includes('exceeds the maximum of 2h')) await fail(`no limit error: ${alert}`);
if ((await page.getByLabel(/^Reason/).inputValue()) !== 'CHG-5150 browser') await fail('the reason was lost');
console.log('limit error shown');
await page.getByLabel(/^Duration/).fill('30m');
await page.getByRole('button', { name: 'File request' }).click();
await page.waitForURL('**/requests?done=filed-*');
const id = new URL(page.url()).searchParams.get('done').replace('filed-', '');
console.log(`filed ${id}`);

// The grant appears once the test approved it.
const link = page.getByRole('link', { name: `How to connect to ${target}` });
let found = false;
for (let i = 0; i < 60 && !found; i++) {
  await page.goto(`${url}/grants`);
  found = (await link.count()) > 0;
  if (!found) await sleep(1000);
}
if (!found) await fail('no grant after the approval');
await link.first().click();
await page.waitForURL('**/grants/*');
const sshLine = (await page.locator('#ssh-line').innerText()).trim();
console.log(`ssh line: ${sshLine}`);
await shot('2-grant.png');
await page.getByLabel(/^Verification code/).fill(await freshCode(vendor, vendorSeed));
await page.getByRole('button', { name: 'Show the grant credential' }).click();
const credential = (await page.locator('#grant-credential').innerText()).trim();
if (credential.length < 16) await fail(`credential too short: ${credential.length}`);
console.log(`credential shown (${credential.length} characters)`);
await shot('3-credential.png');

// Another vendor's session page: refused, and nothing of it shown.
const resp = await page.goto(`${url}/sessions/${otherSession}/summary`);
const text = await page.content();
if (text.includes(otherUser) || text.includes(otherSession)) await fail('the refused page shows the other session');
console.log(`other session refused: ${resp.status()}`);
await shot('4-refused.png');
await page.goto(`${url}/requests`);
await page.getByRole('button', { name: 'Log out' }).click();
await page.waitForURL('**/login');

// The admin adds a target after comparing the fetched host key.
await login(admin, adminPassword, adminSeed);
await page.getByRole('link', { name: 'Targets' }).click();
await page.waitForURL('**/admin/targets');
await page.getByLabel('Protocol', { exact: true }).selectOption('ssh');
await page.getByLabel(/^Address/).fill(sshdAddress);
await page.getByRole('button', { name: 'Fetch identity' }).click();
const fp = (await page.locator('#fetched-fingerprint').innerText()).trim();
if (fp !== expectFp) await fail(`fetched ${fp}, expected ${expectFp}`);
await page.getByLabel('Name', { exact: true }).fill(newTarget);
await page.getByLabel('Account on the target').fill(targetLogin);
await page.getByLabel(/^Its password/).fill(targetPassword);
await page.getByLabel('Site', { exact: true }).fill('north');
await shot('5-confirm.png');
await page.getByRole('button', { name: `Pin ${fp} and add the target` }).click();
await page.waitForURL('**/admin/targets?done=*');
const added = await page.locator(`#target-${newTarget}`).innerText();
if (!added.includes(fp)) await fail(`the new target's row lacks ${fp}: ${added}`);
console.log(`pinned ${fp} for ${newTarget}`);
await shot('6-targets.png');
await context.close();
