'use strict';
// The page works under its Content-Security-Policy (set in
// src/http/static_files.rs): logging in, talking in the lobby, a dialog and
// a room, changing status and logging out refuse nothing and log no error.
// And the policy is really in force: script the page did not load from its
// own origin does not run.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  launchBrowser, world, pane, dialogId, waitForTexts, say, eventually,
} = require('./helpers');

describe('Content-Security-Policy', () => {
  let browser;
  before(async () => { browser = await launchBrowser(); });
  after(async () => { if (browser) { await browser.close(); } });

  it('the client works under it with nothing refused', async () => {
    const w = await world(browser);
    try {
      const alicePerson = await w.person('alice', 'pw-a');
      const alice = alicePerson.page;
      const bob = (await w.person('bob', 'pw-b')).page;

      const headers = alicePerson.response.headers();
      assert.match(headers['content-security-policy'] || '', /default-src 'self'/);
      assert.match(headers['content-security-policy'], /frame-ancestors 'none'/);
      assert.equal(headers['x-frame-options'], 'DENY');

      await say(alice, 'lobby', 'hello lobby');
      await waitForTexts(bob, 'lobby', ['hello lobby']);

      const dlg = dialogId('alice', 'bob');
      await alice.click('#user-list li[data-user="bob"] button');
      await alice.waitForSelector(`${pane(dlg)}.active`);
      await say(alice, dlg, 'just us');
      await waitForTexts(bob, dlg, ['just us']);

      for (const page of [alice, bob]) {
        await page.fill('#room-name', 'secure');
        await page.click('#room-form button');
        await page.waitForSelector(`${pane('secure')}.active`);
      }
      await say(bob, 'secure', 'in the room');
      await waitForTexts(alice, 'secure', ['in the room']);

      // Things the client styles from script (CSSOM, which CSP allows).
      await bob.selectOption('#status-select', 'away');
      await alice.waitForSelector('#user-list li[data-user="bob"][data-status="away"]');
      await alice.click('#tabs .tab[data-conv="lobby"] .tab-open');
      await alice.waitForSelector(`${pane('lobby')}.active`);

      await bob.click('#logout');
      await bob.waitForSelector('body.at-login');
      await alice.waitForSelector('#user-list li[data-user="bob"]', { state: 'detached' });

      w.assertNoPageErrors();
      w.assertQuietConsole();
    } finally {
      await w.close();
    }
  });

  it('is in force: an injected inline script is refused and reported', async () => {
    const w = await world(browser);
    try {
      const person = await w.person(null);
      await person.page.evaluate(() => {
        const script = document.createElement('script');
        script.textContent = 'window.__injected = 1;';
        document.body.appendChild(script);
      });
      await eventually('the violation to be reported', () => person.violations.length > 0);
      assert.match(person.violations.join('\n'), /script-src/);
      assert.equal(await person.page.evaluate(() => window.__injected), undefined, 'the injected script ran');
    } finally {
      await w.close();
    }
  });
});
