'use strict';
// Answers that the real server gives rarely (a 410 after falling behind, a
// 5xx from a proxy, a notification), made to happen on demand: one poll
// reply is swapped in the page (playwright route) while everything else is
// the real server.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  launchBrowser, world, login, pane, messages, waitForTexts, say, waitUntil, eventually,
} = require('./helpers');

/**
 * Swaps the reply to a /poll of `page` once `arm(reply)` is called: the real
 * poll runs (so the events it carried are lost to the page, as when a cursor
 * expires), and when its reply comes back the page gets `reply(cursor)`
 * instead. With `{ withEvents: true }` only a reply that carries events is
 * swapped, so the test knows something was really lost.
 */
async function swapNextPoll(page) {
  let armed = null;
  const swapped = [];
  const polled = [];
  await page.route('**/poll', async (route) => {
    const cursor = Number(new URLSearchParams(route.request().postData()).get('cursor'));
    const index = polled.length;
    polled.push(cursor);
    let response;
    try {
      response = await route.fetch({ timeout: 30000 });
    } catch {
      await route.abort().catch(() => {});
      return;
    }
    let carriesEvents = false;
    try { carriesEvents = (await response.json()).events.length > 0; } catch { /* not JSON */ }
    if (!armed || (armed.withEvents && !carriesEvents)) {
      await route.fulfill({ response }).catch(() => {});
      return;
    }
    const { reply } = armed;
    armed = null;
    swapped.push({ cursor, index });
    await route.fulfill(reply(cursor)).catch(() => {});
  });
  return {
    arm(reply, { withEvents = false } = {}) { armed = { reply, withEvents }; },
    swapped, // {cursor, index in polled} of each poll whose reply was swapped
    polled,  // cursors of every poll, in order
  };
}

/** A signed-in person whose every poll, from the first, passes swapNextPoll's route. */
async function personWithSwap(w, name, password) {
  const person = await w.person(null);
  const swap = await swapNextPoll(person.page);
  await login(person.page, name, password);
  return { page: person.page, swap };
}

function json(status, body) {
  return { status, contentType: 'application/json', body: JSON.stringify(body) };
}

describe('recovering from what the server says', () => {
  let browser;
  before(async () => { browser = await launchBrowser(); });
  after(async () => { if (browser) { await browser.close(); } });

  /** Runs `body(w)` in a fresh world and always tears it down. */
  const inWorld = (body, serverOptions) => world.run(browser, body, serverOptions);

  it('410 cursor_expired: resyncs (GET /sync, then history) and fills the gap without doubles', () => inWorld(async (w) => {
    const alice = (await w.person('alice', 'pw-a')).page;
    const { page: bob, swap } = await personWithSwap(w, 'bob', 'pw-b');
    const syncs = [];
    bob.on('request', (req) => { if (new URL(req.url()).pathname === '/sync') { syncs.push(req.url()); } });
    await say(alice, 'lobby', 'before');
    await waitForTexts(bob, 'lobby', ['before']);

    // bob's poll carrying "in the gap" is answered 410 instead: he never sees that event.
    swap.arm(() => json(410, { error: 'cursor_expired', message: 'cursor is too old' }), { withEvents: true });
    await say(alice, 'lobby', 'in the gap');
    await eventually('the 410 to be served', () => swap.swapped.length === 1);
    await say(alice, 'lobby', 'after');
    await waitForTexts(bob, 'lobby', ['before', 'in the gap', 'after']);
    assert.ok(syncs.length >= 1, 'GET /sync was used');
    const ids = (await messages(bob, 'lobby')).map((m) => m.id);
    assert.equal(new Set(ids).size, ids.length, 'no message shown twice');
    await waitUntil(bob, 'connected', () => document.getElementById('conn').getAttribute('data-state') === 'connected');
  }));

  it('5xx on a poll: shows reconnecting, retries the same cursor, loses nothing', () => inWorld(async (w) => {
    const alice = (await w.person('alice', 'pw-a')).page;
    const { page: bob, swap } = await personWithSwap(w, 'bob', 'pw-b');
    // Every connection state the page shows, however briefly.
    await bob.evaluate(() => {
      window.__connStates = [];
      const conn = document.getElementById('conn');
      new MutationObserver(() => window.__connStates.push(conn.getAttribute('data-state')))
        .observe(conn, { attributes: true, attributeFilter: ['data-state'] });
    });
    swap.arm(() => ({ status: 502, contentType: 'text/html', body: '<h1>Bad gateway</h1>' }), { withEvents: true });
    await say(alice, 'lobby', 'through the bad gateway');
    await eventually('the 502 to be served', () => swap.swapped.length === 1);
    await waitForTexts(bob, 'lobby', ['through the bad gateway']);
    // The poll after the 502 asked again from the same cursor.
    const { cursor, index } = swap.swapped[0];
    assert.equal(swap.polled[index + 1], cursor, `re-polled the same cursor: ${swap.polled}`);
    await waitUntil(bob, 'connected', () => document.getElementById('conn').getAttribute('data-state') === 'connected');
    assert.deepEqual(await bob.evaluate(() => window.__connStates), ['reconnecting', 'connected']);
  }));

  it('a notification (POST /api/publish) is shown as a notice, as text', () => inWorld(async (w) => {
    const alice = (await w.person('alice', 'pw-a')).page;
    const bob = (await w.person('bob', 'pw-b')).page;
    const reply = await fetch(`${w.server.url}/api/publish`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer test-admin-token' },
      body: JSON.stringify({ users: ['alice'], data: { text: '<b>Maintenance</b> at 22:00' } }),
    });
    assert.equal(reply.status, 200, await reply.text());
    await waitUntil(alice, 'notice shown',
      () => /<b>Maintenance<\/b> at 22:00/.test(document.getElementById('notices').textContent));
    assert.equal(await alice.locator('#notices b').count(), 0, 'notification data became markup');
    // Only alice was addressed; bob's page keeps polling and sees nothing.
    await alice.selectOption('#status-select', 'away');
    await bob.waitForSelector('#user-list li[data-user="alice"][data-status="away"]');
    assert.equal(await bob.locator('#notices .notice').count(), 0);
  }, { extraArgs: ['--admin-token', 'test-admin-token'] }));

  it('logging out ends the session: the other person sees them go', () => inWorld(async (w) => {
    const alice = (await w.person('alice', 'pw-a')).page;
    const bob = (await w.person('bob', 'pw-b')).page;
    await bob.waitForSelector('#user-list li[data-user="alice"]');
    await alice.click('#logout');
    await alice.waitForSelector('body.at-login');
    assert.equal(await alice.inputValue('#login-name'), 'alice');
    assert.equal(await alice.inputValue('#login-password'), '');
    await bob.waitForSelector('#user-list li[data-user="alice"]', { state: 'detached' });
    assert.equal(await bob.locator(pane('lobby')).count(), 1);
  }));
});
