'use strict';
// Sending faster than --send-rate: the page says so, waits as the server's
// Retry-After asks, and sends each message again with its client_msg_id,
// so every message arrives once and in order.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { launchBrowser, world, say, waitForTexts, waitUntil, messages } = require('./helpers');

describe('the send rate limit', () => {
  let browser;
  before(async () => { browser = await launchBrowser(); });
  after(async () => { if (browser) { await browser.close(); } });

  it('a burst over the limit is shown, then sent once each, in order', () => world.run(browser, async (w) => {
    const alice = (await w.person('alice', 'pw-a')).page;
    const bob = (await w.person('bob', 'pw-b')).page;
    const expected = ['one', 'two', 'three', 'four', 'five'];
    for (const text of expected) { await say(alice, 'lobby', text); }
    await waitUntil(alice, 'the too-fast notice',
      () => /sending faster than the server allows/.test(document.getElementById('notices').textContent));
    for (const page of [alice, bob]) { await waitForTexts(page, 'lobby', expected); }
    const ids = (await messages(bob, 'lobby')).map((m) => Number(m.id));
    assert.equal(new Set(ids).size, expected.length, 'each message stored once');
  }, { extraArgs: ['--send-rate', '1/s', '--send-burst', '2'] }));
});
