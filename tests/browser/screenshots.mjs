// The README's screenshots of the dashboard, taken from a running demo:
//   scripts/demo --stay &   (wait for "Still serving")
//   node tests/browser/screenshots.mjs http://127.0.0.1:18080 demo-operator-token docs
import { chromium } from 'playwright-core';

const [base, token, dir] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const page = await (await browser.newContext({ viewport: { width: 1200, height: 640 } })).newPage();
await page.goto(`${base}/dashboard/login`);
await page.fill('#token', token);
await Promise.all([page.waitForURL(`${base}/dashboard`), page.click('form.login button')]);
await page.screenshot({ path: `${dir}/dashboard.png`, fullPage: true });
await page.goto(`${base}/dashboard/submissions`);
await Promise.all([page.waitForURL(/\/dashboard\/submissions\/[0-9a-f-]+$/), page.locator('#results a.submission').last().click()]);
await page.screenshot({ path: `${dir}/timeline.png`, fullPage: true });
await browser.close();
