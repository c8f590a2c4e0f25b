// What every browser script shares: required settings from the environment, and Debian's
// Chromium started headless by playwright-core (no browser download; no background traffic,
// which this machine's closed network would refuse), with a fresh profile.
import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// The environment variable `k`, or exit 2 naming it.
export const need = (k) => {
  const v = process.env[k];
  if (!v) { console.error(`missing ${k}`); process.exit(2); }
  return v;
};

// A persistent context of /usr/bin/chromium with the given viewport.
export const launch = (viewport) => chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'penstock-chromium-')), {
  executablePath: '/usr/bin/chromium',
  headless: true,
  ignoreHTTPSErrors: true,
  viewport,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

// Logs `page` in to the console at `url` with a password and a TOTP code; waits for the
// requests page the console lands on.
export const logIn = async (page, url, user, password, code) => {
  await page.goto(url);
  await page.getByLabel('User').fill(user);
  await page.getByLabel('Password').fill(password);
  await page.getByLabel('Verification code').fill(code);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.waitForURL('**/requests');
};

// Collects the page's console errors and uncaught exceptions in `errors`; `fail(msg)` saves the
// page to `shots`/failure.png, prints `msg` with those errors, closes the browser and exits 1.
export const watchErrors = (page, context, shots) => {
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(String(e)));
  const fail = async (msg) => {
    await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
    console.error(`${msg}\nconsole errors: ${errors.join(' | ')}`);
    await context.close();
    process.exit(1);
  };
  return { errors, fail };
};
