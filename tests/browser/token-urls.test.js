'use strict';
// The client token never travels in a URL, which proxies and servers log:
// every request the page makes while logging in, loading history, sending,
// polling and resyncing is recorded, and none has the token in its URL.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  launchBrowser, world, login, say, waitForTexts, eventually,
} = require('./helpers');

describe('the token stays out of URLs', () => {
  let browser;
  before(async () => { browser = await launchBrowser(); });
  after(async () => { if (browser) { await browser.close(); } });

  it('login, history, send, poll and /sync carry it in a header or a body only', async () => {
    const w = await world(browser);
    try {
      const alice = (await w.person('alice', 'pw-a')).page;
      await say(alice, 'lobby', 'before bob');

      const bob = (await w.person(null)).page;
      const requests = [];
      bob.on('request', (req) => requests.push({
        url: req.url(), path: new URL(req.url()).pathname, auth: req.headers().authorization,
      }));
      // One poll answered 410 makes the page resync: GET /sync, then history.
      let expire = false;
      await bob.route('**/poll', async (route) => {
        if (!expire) { await route.continue(); return; }
        expire = false;
        await route.fulfill({
          status: 410,
          contentType: 'application/json',
          body: JSON.stringify({ error: 'cursor_expired', message: 'cursor is too old' }),
        });
      });
      await login(bob, 'bob', 'pw-b');
      await waitForTexts(bob, 'lobby', ['before bob']);
      await say(bob, 'lobby', 'from bob');
      await waitForTexts(alice, 'lobby', ['before bob', 'from bob']);
      expire = true;
      await say(alice, 'lobby', 'after the resync');
      await waitForTexts(bob, 'lobby', ['before bob', 'from bob', 'after the resync']);
      await eventually('GET /sync', () => requests.some((r) => r.path === '/sync'));

      const token = await bob.evaluate(() => window.parlor.session.token);
      assert.match(token, /^[0-9a-f]{40}$/);
      const paths = new Set(requests.map((r) => r.path));
      for (const used of ['/join', '/history', '/send', '/poll', '/sync']) {
        assert.ok(paths.has(used), `${used} was requested: ${[...paths]}`);
      }
      const leaking = requests.filter((r) => r.url.includes(token)).map((r) => r.url);
      assert.deepEqual(leaking, [], 'request URLs holding the token');
      for (const r of requests.filter((q) => q.path === '/history' || q.path === '/sync')) {
        assert.equal(r.auth, `Bearer ${token}`, `${r.url} carries the token in its header`);
      }
      w.assertNoPageErrors();
    } finally {
      await w.close();
    }
  });
});
