// The browser test of kiln's page, in headless Chromium (Debian's
// /usr/bin/chromium) driven by playwright-core. Started by
// crates/kiln/tests/page.rs against a real `kiln serve --workers 1`:
//
//   node web/test/page.test.mjs BASE_URL TOKEN ARCHIVE.tar.gz SCREENSHOT_DIR
//
// It signs in, creates an application, uploads the archive (the
// add-header example), watches log lines arrive and the build succeed
// without a reload, tries the version on a request and finds the
// filter's header, promotes it to a channel, downloads the binary, and
// checks the page on a phone's width. Exits non-zero on the first failure.

import {createHash} from 'node:crypto';
import {mkdtempSync, readFileSync, rmSync, mkdirSync} from 'node:fs';
import {tmpdir} from 'node:os';
import {join} from 'node:path';
import {chromium} from 'playwright-core';

const [base, token, archive, shots] = process.argv.slice(2);
if (!base || !token || !archive || !shots) {
  console.error('usage: node page.test.mjs BASE_URL TOKEN ARCHIVE.tar.gz SCREENSHOT_DIR');
  process.exit(2);
}
mkdirSync(shots, {recursive: true});

const BUILD_TIMEOUT_MS = 8 * 60 * 1000;
const started = Date.now();
const step = (what) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${what}`);
function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

const userData = mkdtempSync(join(tmpdir(), 'kiln-page-chromium-'));
const context = await chromium.launchPersistentContext(userData, {
  executablePath: process.env.KILN_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  chromiumSandbox: false,
  acceptDownloads: true,
  viewport: {width: 1280, height: 900},
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const problems = [];
let failed = false;
try {
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(30_000);
  // A script error or a policy violation fails the test.
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 4\d\d/.test(m.text())) problems.push(`console error: ${m.text()}`);
  });

  step('sign in');
  await page.goto(base + '/');
  await page.getByLabel('Token').fill(token);
  await page.keyboard.press('Enter');
  await page.getByRole('heading', {name: 'Applications', level: 1}).waitFor();
  check(await page.evaluate(() => sessionStorage.getItem('kiln.token')) === token, 'the token is kept in sessionStorage');

  step('create an application');
  const name = `page-${Date.now()}`;
  await page.getByLabel('Name').fill(name);
  await page.getByLabel('Notes').fill('made by the browser test');
  await page.getByRole('button', {name: 'Create'}).click();
  await page.getByRole('heading', {name, level: 1}).waitFor();

  step('upload the archive');
  const form = page.getByRole('form', {name: 'Upload a version'});
  await form.getByLabel('Version').fill('1.0.0');
  await form.getByLabel('Configuration').fill('from-page');
  await form.locator('input[type=file]').setInputFiles(archive);
  await form.getByRole('button', {name: 'Upload and build'}).click();
  await page.getByRole('heading', {name: new RegExp(`^${name} 1\\.0\\.0`)}).waitFor();

  step('watch the live log');
  const log = page.locator('#log');
  // Lines arrive while the build still runs.
  await page.waitForFunction(() => {
    const text = document.getElementById('log')?.textContent || '';
    const state = document.querySelector('h1 .state')?.dataset.state;
    return text.includes('Compiling') && (state === 'queued' || state === 'running');
  }, null, {timeout: BUILD_TIMEOUT_MS}).catch(async () => {
    throw new Error(`no log line arrived while the build ran; state ${await page.locator('h1 .state').textContent()}`);
  });
  const early = (await log.textContent()).length;
  await page.screenshot({path: join(shots, 'build-running.png'), fullPage: true});

  step('the build succeeds without a reload');
  await page.locator('h1 .state[data-state=succeeded]').waitFor({timeout: BUILD_TIMEOUT_MS}).catch(async () => {
    throw new Error(`the build did not succeed: ${await page.locator('h1').textContent()}\n${await log.textContent()}`);
  });
  const late = (await log.textContent()).length;
  check(late > early, `the log grew after the first lines (${early} → ${late} characters)`);
  const sha = (await page.locator('#sha256').textContent()).trim();
  check(/^[0-9a-f]{64}$/.test(sha), `the version shows its sha256 (${sha})`);

  step('try it on a request');
  const tryForm = page.locator('form.try');
  await tryForm.getByLabel('Path').fill('/hello');
  await tryForm.getByLabel('Headers').fill('user-agent: kiln-page-test');
  await tryForm.getByRole('button', {name: 'Try it'}).click();
  const result = page.locator('#try-result');
  await result.getByText('x-powered-by').waitFor();
  const resultText = await result.textContent();
  check(resultText.includes('The client gets 200'), 'the trial answered 200');
  check(resultText.includes('x-kiln-conf') && resultText.includes('from-page'), 'the filter added its configuration header');
  check(resultText.includes('x-kiln-filter'), 'the forwarded request carries the filter\'s header');

  step('promote to a channel');
  const promote = page.locator('form.promote');
  await promote.getByLabel('Channel').fill('production');
  await promote.getByRole('button', {name: 'Promote'}).click();
  await page.locator('#serving', {hasText: 'production'}).waitFor();

  step('download the binary');
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('button', {name: 'Download .wasm'}).first().click(),
  ]);
  const file = await download.path();
  const bytes = readFileSync(file);
  check(bytes.subarray(0, 4).equals(Buffer.from([0, 0x61, 0x73, 0x6d])), 'the download is a wasm module');
  check(createHash('sha256').update(bytes).digest('hex') === sha, 'the download has the version\'s sha256');
  await page.screenshot({path: join(shots, 'build.png'), fullPage: true});

  step('the application shows its build, version and channel');
  await page.getByRole('link', {name}).click();
  await page.getByRole('heading', {name, level: 1}).waitFor();
  const channelRow = page.locator('tr[data-channel=production]');
  await channelRow.waitFor();
  check((await channelRow.textContent()).includes('1.0.0'), 'production serves 1.0.0');
  check((await page.locator('tr[data-build] .state').first().textContent()) === 'succeeded', 'the builds table shows the success');
  await page.screenshot({path: join(shots, 'application.png'), fullPage: true});

  step('keyboard: a new view moves the focus to its heading');
  check(await page.evaluate(() => document.activeElement?.tagName === 'H1'), 'the heading has the focus');

  step('a phone\'s width');
  await page.setViewportSize({width: 390, height: 844});
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  check(overflow <= 1, `nothing is wider than a phone's screen (${overflow}px too wide)`);
  await page.screenshot({path: join(shots, 'application-phone.png'), fullPage: true});

  step('delete asks first');
  await page.setViewportSize({width: 1280, height: 900});
  await page.getByRole('button', {name: 'Delete application'}).click();
  await page.locator('dialog[open]').waitFor();
  await page.keyboard.press('Escape');
  await page.locator('dialog[open]').waitFor({state: 'detached'}).catch(() => {});
  check(!(await page.locator('dialog').evaluate((d) => d.open)), 'Escape closes the confirmation');
  check(await page.getByRole('heading', {name, level: 1}).isVisible(), 'the application is still there');

  step('sign out');
  await page.getByRole('button', {name: 'Sign out'}).click();
  await page.getByRole('heading', {name: 'Sign in'}).waitFor();
  check(await page.evaluate(() => sessionStorage.getItem('kiln.token')) === null, 'signing out forgets the token');

  check(problems.length === 0, `no script errors:\n${problems.join('\n')}`);
  step(`passed; screenshots in ${shots}`);
} catch (e) {
  failed = true;
  console.error(e.stack || String(e));
  if (problems.length) console.error(problems.join('\n'));
  try {
    await context.pages()[0]?.screenshot({path: join(shots, 'failure.png'), fullPage: true});
    console.error(`screenshot of the failure: ${join(shots, 'failure.png')}`);
  } catch { /* the browser is gone */ }
} finally {
  await context.close();
  rmSync(userData, {recursive: true, force: true});
}
process.exit(failed ? 1 : 0);
