// Drives the rackcast console in a real browser (puppeteer-core: Chromium over CDP, Firefox
// over WebDriver BiDi) the way an admin would, and prints one JSON report on stdout:
// {"checks": {name: true | "what went wrong"}, "page_errors": [...], "screenshots": [...]}.
// tests/it/console.rs starts the appliance and a publisher, runs this, and asserts the report.
//
//   node drive.mjs BASE_URL chrome|firefox EXECUTABLE OUT_DIR USER PASSWORD STREAM

import puppeteer from 'puppeteer-core';

const [base, browserName, executablePath, outDir, user, password, stream] = process.argv.slice(2);
const checks = {};
const pageErrors = [];
const screenshots = [];
const STEP_MS = 30000;

async function check(name, fn) {
  try {
    await fn();
    checks[name] = true;
  } catch (e) {
    checks[name] = String(e && e.message || e).slice(0, 500);
  }
}

const browser = await puppeteer.launch({
  browser: browserName,
  executablePath,
  headless: true,
  args: browserName === 'chrome'
    ? ['--no-sandbox', '--disable-gpu', '--autoplay-policy=no-user-gesture-required', '--disable-background-networking']
    : [],
  extraPrefsFirefox: { 'media.autoplay.default': 0, 'media.autoplay.blocking_policy': 0 },
  timeout: STEP_MS,
});
let exitCode = 0;
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1366, height: 820 });
  page.setDefaultTimeout(STEP_MS);
  page.on('pageerror', e => pageErrors.push(`pageerror: ${e.message}`));
  page.on('console', m => { if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`); });
  page.on('dialog', d => d.accept());

  const shot = async (name) => {
    const path = `${outDir}/${browserName}-${name}.png`;
    await page.screenshot({ path });
    screenshots.push(path);
  };
  const text = sel => page.$eval(sel, e => e.textContent);
  const goto = async (hash) => { await page.evaluate(h => { location.hash = h; }, hash); };

  await check('login form', async () => {
    await page.goto(`${base}/`, { waitUntil: 'load' });
    await page.waitForSelector('input[name=username]');
    await shot('login');
  });
  await check('wrong password shows the API message', async () => {
    await page.type('input[name=username]', user);
    await page.type('input[name=password]', 'not the password');
    await page.click('button.primary');
    await page.waitForSelector('[role=alert]');
    const message = await text('[role=alert]');
    if (!message.includes('wrong username or password')) throw new Error(`banner says ${message}`);
  });
  await check('login', async () => {
    await page.$eval('input[name=password]', e => { e.value = ''; });
    // Preact keeps the field's value in state: clear it through an input event.
    await page.click('input[name=password]', { clickCount: 3 });
    await page.keyboard.press('Backspace');
    await page.type('input[name=password]', password);
    await page.click('button.primary');
    await page.waitForSelector('[data-me]');
    const me = await text('[data-me]');
    if (me !== user) throw new Error(`header shows ${me}`);
  });
  await check('dashboard lists the stream', async () => {
    await page.waitForSelector(`tr[data-stream="${stream}"]`);
  });
  await check('preview plays', async () => {
    await page.waitForFunction(() => {
      const v = document.querySelector('video');
      return v && v.currentTime > 1 && v.readyState >= 2;
    }, { timeout: 45000 });
    await page.waitForSelector('[data-player-state=playing]', { timeout: 10000 });
    await shot('dashboard');
  });
  await check('stream page: ladder, plan history, charts', async () => {
    await goto(`#/streams/${stream}`);
    await page.waitForFunction(() => document.querySelectorAll('.uplot canvas').length >= 3 && document.querySelectorAll('table tbody tr').length >= 3);
    // Three polls: the delivered-bitrate chart has points.
    await new Promise(r => setTimeout(r, 6500));
    const h1 = await text('h1');
    if (!h1.includes(stream)) throw new Error(`heading ${h1}`);
    await shot('stream');
  });
  await check('cluster page draws the ring with the stream', async () => {
    await goto('#/cluster');
    await page.waitForSelector(`svg.ring [data-placement="${stream}"]`);
    await page.waitForSelector('tr[data-member]');
    await page.type('input[placeholder="stream id"]', 'any-stream');
    await page.click('form.inline button');
    await page.waitForSelector('[data-lookup="any-stream"]');
    await shot('cluster');
  });
  await check('host page shows CPU and GPU not present', async () => {
    await goto('#/host');
    await page.waitForSelector('[data-gpus]');
    const gpus = await text('[data-gpus]');
    if (!gpus.startsWith('not present (')) throw new Error(`GPUs: ${gpus}`);
    await new Promise(r => setTimeout(r, 4500));
    await shot('host');
  });
  let keySecret = null;
  await check('keys page creates a key, shows it once, revokes it', async () => {
    await goto('#/keys');
    await page.waitForSelector('input[name=stream]');
    await page.type('input[name=stream]', 'studio-b');
    await page.click('form.inline button.primary');
    await page.waitForSelector('[data-secret] code');
    keySecret = await text('[data-secret] code');
    if (!keySecret.startsWith('rk_')) throw new Error(`secret ${keySecret}`);
    await shot('keys');
    const id = await page.$$eval('tr[data-key]', rows => rows.find(r => r.textContent.includes('studio-b') && r.querySelector('button.danger'))?.dataset.key);
    if (!id) throw new Error('no revocable studio-b key in the table');
    await page.click(`tr[data-key="${id}"] button.danger`);
    await page.waitForFunction(k => document.querySelector(`tr[data-key="${k}"]`)?.textContent.includes('revoked'), {}, id);
    await page.click('[data-secret] button');
  });
  await check('tokens page creates a read token', async () => {
    await goto('#/tokens');
    await page.waitForSelector('input[name=name]');
    await page.type('input[name=name]', 'grafana');
    await page.click('form.inline button.primary');
    await page.waitForSelector('[data-secret] code');
    const secret = await text('[data-secret] code');
    if (!secret.startsWith('rat_')) throw new Error(`secret ${secret}`);
    await page.waitForSelector('tr[data-token]');
  });
  await check('a failed action shows the API error', async () => {
    await goto('#/users');
    await page.waitForSelector('input[name=password]');
    await page.type('input[name=name]', 'carol');
    // Shorter than the API accepts; the browser's own minlength check is bypassed.
    await page.$eval('input[name=password]', e => e.removeAttribute('minlength'));
    await page.type('input[name=password]', 'short');
    await page.click('form.inline button.primary');
    await page.waitForSelector('[role=alert]');
    const message = await text('[role=alert]');
    if (!message.includes('password must be') || !message.includes('HTTP 400')) throw new Error(`banner says ${message}`);
    await shot('users');
  });
  await check('audit page lists the actions', async () => {
    await goto('#/audit');
    await page.waitForSelector('tr[data-audit="key.revoke"]');
    await page.waitForSelector('tr[data-audit="token.create"]');
    await shot('audit');
  });
  await check('logout returns to the login form', async () => {
    await page.click('header .who button');
    await page.waitForSelector('input[name=username]');
  });
  await check('no secret in the page after logout', async () => {
    const html = await page.content();
    if (keySecret && html.includes(keySecret)) throw new Error('the stream key is still in the page');
  });
} catch (e) {
  checks.driver = String(e && e.stack || e);
  exitCode = 1;
} finally {
  await browser.close().catch(() => {});
}
console.log(JSON.stringify({ checks, page_errors: pageErrors, screenshots }));
process.exit(exitCode);
