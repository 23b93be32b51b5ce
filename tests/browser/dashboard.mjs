// The operator's way through the dashboard in headless Chromium: sign in,
// see the targets, search a submission by reference, open its timeline,
// replay its parked delivery after confirming, and see it delivered.
// Run by tests/integration/dashboard.rs, which sets up the parked delivery
// and reads this script's exit code and output.
import { chromium } from 'playwright-core';

const base = process.env.AMTSBOTE_URL;
const token = process.env.AMTSBOTE_TOKEN;
const reference = process.env.AMTSBOTE_REFERENCE;
const submission = process.env.AMTSBOTE_SUBMISSION;
const screenshot = process.env.AMTSBOTE_SCREENSHOT;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
page.setDefaultTimeout(15000);
const step = (what) => console.log(`step: ${what}`);
const expect = (condition, what) => { if (!condition) throw new Error(`expected ${what} (at ${page.url()})`); };

try {
  step('load');
  await page.goto(`${base}/dashboard`);
  expect(page.url().endsWith('/dashboard/login'), 'the sign-in page before signing in');
  await page.fill('#token', token);
  await Promise.all([page.waitForURL(`${base}/dashboard`), page.click('form.login button')]);
  const row = page.locator('#targets tr[data-target="fv"]');
  await row.waitFor();
  expect((await row.locator('td').nth(5).innerText()).trim() === '1', 'one parked delivery at fv');

  step('search');
  await page.fill('form.search input[name=reference]', reference);
  await Promise.all([page.waitForURL(/\/dashboard\/submissions\?/), page.click('form.search button')]);
  const found = page.locator('#results a.submission');
  expect(await found.count() === 1, 'one search result');
  expect((await found.innerText()).trim() === submission, 'the submitted id as the result');
  await Promise.all([page.waitForURL(`${base}/dashboard/submissions/${submission}`), found.click()]);
  expect(await page.getAttribute('#submission-state', 'data-state') === 'parked', 'the submission parked');
  await page.locator('#timeline tr[data-event="parked"]').waitFor();

  step('replay');
  await Promise.all([page.waitForURL(`${base}/dashboard/parked`), page.click('nav >> text=Parked')]);
  const parked = page.locator(`#parked tr[data-submission="${submission}"]`);
  await parked.waitFor();
  await Promise.all([page.waitForURL(/\/replay$/), parked.locator('a', { hasText: 'Replay' }).click()]);
  await Promise.all([page.waitForURL(/\?done=replay$/), page.click('#confirm')]);
  await page.locator('#done').waitFor();

  step('delivered');
  const deadline = Date.now() + 30000;
  while (await page.getAttribute('#submission-state', 'data-state') !== 'delivered') {
    expect(Date.now() < deadline, 'the replayed delivery delivered within 30 s');
    await page.waitForTimeout(250);
    await page.reload();
  }
  await page.locator('#timeline tr[data-event="replayed"]').waitFor();
  await page.locator('#timeline tr[data-event="delivered"]').waitFor();

  if (screenshot) {
    await page.goto(`${base}/dashboard`);
    await page.locator('#targets').waitFor();
    await page.screenshot({ path: screenshot, fullPage: true });
  }
  step('done');
} catch (error) {
  console.error(`failed: ${error.message}`);
  console.error((await page.content()).slice(0, 4000));
  process.exitCode = 1;
} finally {
  await browser.close();
}
