'use strict';
// Shared fixtures for the browser tests: start the real parlor binary on an
// ephemeral port, drive headless Chromium (Debian's /usr/bin/chromium, via
// playwright-core), and small page helpers that wait for conditions instead
// of sleeping.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const assert = require('node:assert/strict');
const { chromium } = require('playwright-core');

const REPO = path.resolve(__dirname, '..', '..');
const PARLOR_BIN = path.resolve(REPO, process.env.PARLOR_BIN || path.join('target', 'debug', 'parlor'));
const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SCREENSHOT_DIR = path.join(__dirname, 'screenshots');

/** Every wait in a test gives up after this; failures then say what was seen. */
const WAIT_MS = 10000;

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic', '--no-first-run',
];

/** Servers still running, killed on exit even if a test forgot. */
const live = new Set();
process.on('exit', () => {
  for (const child of live) {
    try { child.kill('SIGKILL'); } catch { /* gone */ }
  }
});

function stripAnsi(s) {
  return s.replace(/\x1b\[[0-9;]*m/g, '');
}

/**
 * Starts parlor and resolves once it prints `listening on http://ADDR`.
 * `listen` defaults to port 0; the reconnect test passes the old address to
 * come back on the same port. `ephemeral: false` with `--redis URL` in
 * `extraArgs` makes a cluster node.
 */
async function startServer({
  listen = '127.0.0.1:0', inactivity = '1500ms', pollTimeout = '5s', ephemeral = true, extraArgs = [],
} = {}) {
  if (!fs.existsSync(PARLOR_BIN)) {
    throw new Error(`parlor binary not found at ${PARLOR_BIN}: run \`cargo build\` or set PARLOR_BIN`);
  }
  const args = [
    '--listen', listen, ...(ephemeral ? ['--ephemeral'] : []), '--public-dir', path.join(REPO, 'public'),
    '--inactivity-timeout', inactivity, '--poll-timeout', pollTimeout, ...extraArgs,
  ];
  const child = spawn(PARLOR_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let log = '';
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => {
    live.delete(child);
    resolve({ code, signal });
  }));

  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`parlor did not print "listening on" within ${WAIT_MS} ms:\n${log}`));
    }, WAIT_MS);
    // Keep reading both pipes for the server's whole life: a full pipe would block it.
    const onData = (chunk) => {
      log += stripAnsi(chunk.toString());
      if (log.length > 200000) { log = log.slice(-100000); }
      const m = /listening on http:\/\/(\S+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`parlor exited (${code ?? signal}) before listening:\n${log}`));
    });
  });

  return {
    addr,
    url: `http://${addr}`,
    log: () => log,
    exited,
    /** SIGTERM, then SIGKILL if it has not exited within 5 s. */
    async stop() {
      if (!live.has(child)) { return exited; }
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
    /** SIGKILL: the process dies at once, its parked polls with it. */
    async kill() {
      if (!live.has(child)) { return exited; }
      child.kill('SIGKILL');
      return exited;
    },
  };
}

async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: CHROMIUM_ARGS,
  });
}

/**
 * A person in their own browser context (own cookies and storage), on a page
 * where WebSocket, fetch and EventSource are gone before the page's script
 * runs: the client must manage with XMLHttpRequest, as on an old browser.
 *
 * What the page does wrong is collected: `errors` (uncaught exceptions),
 * `violations` (anything the Content-Security-Policy refused, reported from
 * the page's `securitypolicyviolation` event) and `consoleErrors` (which
 * also include failed requests, expected in tests that break the network).
 */
async function openPerson(browser, url, { viewport = { width: 1100, height: 720 } } = {}) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(WAIT_MS);
  const violations = [];
  await context.exposeFunction('__parlorTestViolation', (v) => violations.push(v));
  await context.addInitScript(() => {
    delete window.WebSocket;
    delete window.fetch;
    delete window.EventSource;
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__parlorTestViolation(`${e.effectiveDirective} refused ${e.blockedURI || '(inline)'}`
        + ` at ${e.sourceFile || '?'}:${e.lineNumber}`);
    });
  });
  const page = await context.newPage();
  const errors = [];
  const consoleErrors = [];
  page.on('pageerror', (err) => errors.push(String(err && err.stack || err)));
  page.on('console', (msg) => {
    if (msg.type() === 'error') { consoleErrors.push(msg.text()); }
  });
  const response = await page.goto(`${url}/`);
  return { context, page, errors, violations, consoleErrors, response };
}

async function login(page, name, password) {
  await page.fill('#login-name', name);
  await page.fill('#login-password', password);
  await page.click('#login-submit');
  await page.waitForSelector('body.at-chat');
  await page.waitForSelector('.pane[data-conv="lobby"]', { state: 'attached' });
}

function pane(convId) {
  return `.pane[data-conv="${convId}"]`;
}

function dialogId(a, b) {
  return `dialog:${[a, b].sort().join(':')}`;
}

/** The messages a page shows in a conversation, oldest first. */
async function messages(page, convId) {
  return page.$$eval(`${pane(convId)} .messages .msg`, (nodes) => nodes.map((n) => ({
    id: n.getAttribute('data-id'),
    from: n.querySelector('.msg-from').textContent,
    text: n.querySelector('.msg-text').textContent,
  })));
}

/**
 * Waits until the conversation shows exactly `expected` message texts, in
 * that order; on timeout fails with what it showed instead.
 */
async function waitForTexts(page, convId, expected) {
  try {
    await page.waitForFunction(([sel, want]) => {
      const got = Array.prototype.map.call(
        document.querySelectorAll(`${sel} .messages .msg .msg-text`), (n) => n.textContent);
      return JSON.stringify(got) === JSON.stringify(want);
    }, [pane(convId), expected], { timeout: WAIT_MS });
  } catch (err) {
    const got = (await messages(page, convId).catch(() => [])).map((m) => m.text);
    assert.deepEqual(got, expected, `messages in ${convId}`);
    throw err;
  }
}

/** Brings a conversation to the front (its tab), types into its prompt and presses Enter. */
async function say(page, convId, text) {
  if (!(await page.locator(`${pane(convId)}.active`).count())) {
    await page.click(`#tabs .tab[data-conv="${convId}"] .tab-open`);
    await page.waitForSelector(`${pane(convId)}.active`);
  }
  const input = page.locator(`${pane(convId)} .prompt-input`);
  await input.fill(text);
  await input.press('Enter');
}

/** Waits for a page-side condition, failing with `what` so the report says which. */
async function waitUntil(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: WAIT_MS });
  } catch (err) {
    throw new Error(`timed out waiting for: ${what}\n${err.message}`);
  }
}

/** Waits for a condition on the test's side (polled every 25 ms), failing with `what`. */
async function eventually(what, fn, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await fn()) { return; }
    if (Date.now() > deadline) { throw new Error(`timed out waiting for: ${what}`); }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

async function screenshot(page, name) {
  fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });
  const file = path.join(SCREENSHOT_DIR, name);
  await page.screenshot({ path: file });
  return file;
}

/**
 * One test's world: a fresh server and the people in it; close() ends all.
 * A fresh server per test keeps tests independent (parlor is --ephemeral).
 */
async function world(browser, serverOptions) {
  const server = await startServer(serverOptions);
  const people = [];
  return {
    server,
    async person(name, password, options) {
      const p = await openPerson(browser, server.url, options);
      people.push(p);
      if (name) { await login(p.page, name, password); }
      return p;
    },
    async close() {
      for (const p of people) { await p.context.close().catch(() => {}); }
      await server.stop();
    },
    /** No uncaught script error and nothing refused by the CSP on any page. */
    assertNoPageErrors() {
      for (const p of people) {
        assert.deepEqual(p.errors, [], 'uncaught errors in the page');
        assert.deepEqual(p.violations, [], 'Content-Security-Policy violations');
      }
    },
    /** Not even a console error (a failed request logs one) on any page. */
    assertQuietConsole() {
      for (const p of people) { assert.deepEqual(p.consoleErrors, [], 'console errors'); }
    },
  };
}

/** Runs `body(w)` in a fresh world, checks its pages for errors, and always tears it down. */
world.run = async function run(browser, body, serverOptions) {
  const w = await world(browser, serverOptions);
  try {
    await body(w);
    w.assertNoPageErrors();
  } finally {
    await w.close();
  }
};

module.exports = {
  REPO, PARLOR_BIN, WAIT_MS, SCREENSHOT_DIR,
  startServer, launchBrowser, openPerson, login, pane, dialogId, messages, waitForTexts,
  say, waitUntil, eventually, screenshot, world,
};
