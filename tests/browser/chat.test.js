'use strict';
// People using parlor's page in real (headless) Chromium against the real
// server. Each test gets a fresh server; the browser is shared.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  launchBrowser, world, login, pane, dialogId, messages, waitForTexts, say, waitUntil, eventually, screenshot,
} = require('./helpers');

describe('parlor in the browser', () => {
  let browser;
  before(async () => { browser = await launchBrowser(); });
  after(async () => { if (browser) { await browser.close(); } });

  /** Runs `body(w)` in a fresh world and always tears it down. */
  const inWorld = (body, serverOptions) => world.run(browser, body, serverOptions);

  it('works with no WebSocket, fetch or EventSource, and keeps the password out of storage', () => inWorld(async (w) => {
    const { page } = await w.person('alice', 'secret-pw-a');
    const missing = await page.evaluate(() => [typeof WebSocket, typeof fetch, typeof EventSource]);
    assert.deepEqual(missing, ['undefined', 'undefined', 'undefined']);
    const stored = await page.evaluate(() => JSON.stringify([
      Object.keys(localStorage).map((k) => localStorage.getItem(k)),
      Object.keys(sessionStorage).map((k) => sessionStorage.getItem(k)),
      document.cookie,
    ]));
    assert.ok(!stored.includes('secret-pw-a'), `password found in storage: ${stored}`);
    assert.equal(await page.textContent('#conn'), 'connected');
    assert.equal(await page.textContent('#me-name'), 'alice');
  }));

  it('shows /join errors in words', () => inWorld(async (w) => {
    await w.person('alice', 'right');
    const { page } = await w.person(null);

    await page.fill('#login-name', 'not a name!');
    await page.fill('#login-password', 'pw');
    await page.click('#login-submit');
    await waitUntil(page, 'invalid name message',
      () => /cannot be used/.test(document.getElementById('login-error').textContent));

    await page.fill('#login-name', 'alice');
    await page.fill('#login-password', 'wrong');
    await page.click('#login-submit');
    await waitUntil(page, 'wrong password message',
      () => /Wrong password/.test(document.getElementById('login-error').textContent));

    await page.fill('#login-password', '');
    await page.click('#login-submit');
    await waitUntil(page, 'empty password message',
      () => /enter a password/.test(document.getElementById('login-error').textContent));
    assert.ok(await page.isVisible('#login-form'), 'still on the login form');
    await screenshot(page, 'login-error.png');

    await page.fill('#login-password', 'right');
    await page.click('#login-submit');
    await page.waitForSelector('body.at-chat');
  }));

  it('two people see each other, open a dialog (create-or-focus) and talk both ways in order', () => inWorld(async (w) => {
    const alice = (await w.person('alice', 'pw-a')).page;
    const bob = (await w.person('bob', 'pw-b')).page;
    const dlg = dialogId('alice', 'bob');

    await alice.waitForSelector('#user-list li[data-user="bob"]');
    await bob.waitForSelector('#user-list li[data-user="alice"]');
    assert.equal(await alice.locator('#user-list li[data-user="alice"]').count(), 0, 'you are not listed as someone to talk to');

    // Create: alice clicks bob; her prompt for bob gets the focus.
    await alice.click('#user-list li[data-user="bob"] button');
    await alice.waitForSelector(`${pane(dlg)}.active`);
    await waitUntil(alice, 'dialog prompt focused',
      (sel) => document.activeElement === document.querySelector(`${sel} .prompt-input`), pane(dlg));
    // bob is told about the dialog, without it stealing his focus.
    await bob.waitForSelector(`#tabs .tab[data-conv="${dlg}"]`);
    assert.equal(await bob.getAttribute('.pane.active', 'data-conv'), 'lobby');

    // Focus: switch away, click bob again: same pane, focused, no second one.
    await alice.click('#tabs .tab[data-conv="lobby"] .tab-open');
    await alice.waitForSelector(`${pane('lobby')}.active`);
    await alice.click('#user-list li[data-user="bob"] button');
    await alice.waitForSelector(`${pane(dlg)}.active`);
    await waitUntil(alice, 'dialog prompt focused again',
      (sel) => document.activeElement === document.querySelector(`${sel} .prompt-input`), pane(dlg));
    assert.equal(await alice.locator(pane(dlg)).count(), 1);
    assert.equal(await alice.locator(`#tabs .tab[data-conv="${dlg}"]`).count(), 1);

    // Talk both ways; each side sees the same order, its own lines from the stream.
    const expected = [];
    const lines = [['alice', 'hi bob'], ['bob', 'hello alice!'], ['alice', 'how are you?'],
      ['bob', 'fine, thanks'], ['bob', 'and you?'], ['alice', 'great \u{1F600} \u00e9\u00e8']];
    for (const [who, text] of lines) {
      const page = who === 'alice' ? alice : bob;
      await page.click(`#tabs .tab[data-conv="${dlg}"] .tab-open`);
      await say(page, dlg, text);
      expected.push(text);
      // Wait for it before the next line, so "in order" is well defined.
      await waitForTexts(alice, dlg, expected);
      await waitForTexts(bob, dlg, expected);
    }
    const shown = await messages(bob, dlg);
    assert.deepEqual(shown.map((m) => m.from), lines.map(([who]) => who));
    const ids = shown.map((m) => Number(m.id));
    assert.deepEqual([...ids].sort((a, b) => a - b), ids, 'ordered by server id');
    assert.equal(new Set(ids).size, ids.length, 'no message shown twice');
    assert.equal(await alice.locator(`${pane(dlg)} .outbox li`).count(), 0, 'nothing left pending');

    // Tidy view for the README picture.
    await alice.click(`#tabs .tab[data-conv="${dlg}"] .tab-open`);
    await bob.click(`#tabs .tab[data-conv="${dlg}"] .tab-open`);
    await screenshot(alice, 'two-users-chatting.png');
    await screenshot(bob, 'two-users-chatting-bob.png');
  }));

  it('every tab of a person shows the same: own messages come back through the stream', () => inWorld(async (w) => {
    const tab1 = (await w.person('alice', 'pw-a')).page;
    const tab2 = (await w.person('alice', 'pw-a')).page;
    const bob = (await w.person('bob', 'pw-b')).page;
    const dlg = dialogId('alice', 'bob');

    await say(tab1, 'lobby', 'from tab one');
    await say(tab2, 'lobby', 'from tab two');
    for (const page of [tab1, tab2, bob]) {
      await waitForTexts(page, 'lobby', ['from tab one', 'from tab two']);
    }
    // Both of alice's tabs mark both lines as hers.
    for (const page of [tab1, tab2]) {
      assert.equal(await page.locator(`${pane('lobby')} .messages .msg.mine`).count(), 2);
    }
    // A dialog opened in one tab appears in the other.
    await tab1.click('#user-list li[data-user="bob"] button');
    await tab2.waitForSelector(`#tabs .tab[data-conv="${dlg}"]`);
    await say(bob, dlg, 'hi both tabs');
    await waitForTexts(tab1, dlg, ['hi both tabs']);
    await waitForTexts(tab2, dlg, ['hi both tabs']);

    // Closing one tab does not take alice offline: the dialog stays.
    await tab1.close();
    await say(tab2, dlg, 'still here');
    await waitForTexts(bob, dlg, ['hi both tabs', 'still here']);
    assert.equal(await bob.locator('#user-list li[data-user="alice"]').count(), 1);
  }));

  it('unread counts on tabs and in the title while the window is not focused', () => inWorld(async (w) => {
    const alice = (await w.person('alice', 'pw-a')).page;
    const bob = (await w.person('bob', 'pw-b')).page;
    const dlg = dialogId('alice', 'bob');

    await alice.click('#user-list li[data-user="bob"] button');
    await bob.waitForSelector(`#tabs .tab[data-conv="${dlg}"]`);
    // bob is on the lobby and has left the window.
    await bob.evaluate(() => window.dispatchEvent(new Event('blur')));
    await say(alice, dlg, 'one');
    await say(alice, dlg, 'two');
    await waitForTexts(bob, dlg, ['one', 'two']);
    await waitUntil(bob, 'tab badge 2',
      (id) => (document.querySelector(`#tabs .tab[data-conv="${id}"] .badge`) || {}).textContent === '2', dlg);
    await waitUntil(bob, 'title (2)', () => /^\(2\) /.test(document.title));
    assert.equal(await bob.textContent('#user-list li[data-user="alice"] .badge'), '2');

    // Coming back clears the title; opening the tab clears its count.
    await bob.evaluate(() => window.dispatchEvent(new Event('focus')));
    await waitUntil(bob, 'title without count', () => !/^\(/.test(document.title));
    await bob.click(`#tabs .tab[data-conv="${dlg}"] .tab-open`);
    await waitUntil(bob, 'badge gone',
      (id) => !document.querySelector(`#tabs .tab[data-conv="${id}"] .badge`), dlg);
    // alice's own messages never count as unread for her.
    assert.equal(await alice.locator('.badge').count(), 0);
  }));

  it('a room with three people: join by name, talk, leave', () => inWorld(async (w) => {
    const [alice, bob, carol] = [
      (await w.person('alice', 'pw-a')).page,
      (await w.person('bob', 'pw-b')).page,
      (await w.person('carol', 'pw-c')).page,
    ];
    const everyone = [alice, bob, carol];
    for (const page of everyone) {
      await page.fill('#room-name', 'games');
      await page.click('#room-form button');
      await page.waitForSelector(`${pane('games')}.active`);
      await page.waitForSelector('#room-list li[data-conv="games"]');
    }
    await waitUntil(alice, 'three members shown',
      (sel) => /3 members/.test(document.querySelector(`${sel} .pane-sub`).textContent), pane('games'));

    const expected = [];
    for (const [page, text] of [[alice, 'who plays chess?'], [bob, 'me'], [carol, 'me too'], [alice, 'great, 3 of us']]) {
      await say(page, 'games', text);
      expected.push(text);
      for (const p of everyone) { await waitForTexts(p, 'games', expected); }
    }
    const froms = (await messages(carol, 'games')).map((m) => m.from);
    assert.deepEqual(froms, ['alice', 'bob', 'carol', 'alice']);
    await screenshot(bob, 'room-three-users.png');

    // carol leaves: her pane goes with a notice; the others see her go.
    await carol.click(`${pane('games')} .leave`);
    await carol.waitForSelector(pane('games'), { state: 'detached' });
    await waitUntil(carol, 'leave notice', () => /You left #games/.test(document.getElementById('notices').textContent));
    await carol.waitForSelector(`${pane('lobby')}.active`);
    assert.equal(await carol.locator('#room-list li[data-conv="games"]').count(), 0);
    await waitUntil(alice, 'two members shown',
      (sel) => /2 members: alice, bob$/.test(document.querySelector(`${sel} .pane-sub`).textContent), pane('games'));
    await waitUntil(alice, '"carol left" line',
      (sel) => /carol left the room/.test(document.querySelector(`${sel} .messages`).textContent), pane('games'));
    await say(bob, 'games', 'bye carol');
    await waitForTexts(alice, 'games', [...expected, 'bye carol']);
  }));

  it('shows history when a conversation opens, then live messages, with no gap and no double', () => inWorld(async (w) => {
    const alice = (await w.person('alice', 'pw-a')).page;
    await alice.fill('#room-name', 'history');
    await alice.click('#room-form button');
    await alice.waitForSelector(`${pane('history')}.active`);
    const before = ['m1', 'm2', 'm3', 'm4', 'm5'];
    for (const text of before) { await say(alice, 'history', text); }
    await waitForTexts(alice, 'history', before);

    const bob = (await w.person('bob', 'pw-b')).page;
    await bob.fill('#room-name', 'history');
    await bob.click('#room-form button');
    // Live messages race the history request: whatever the interleaving,
    // each shows once, in the server's order.
    const live = ['live1', 'live2', 'live3'];
    for (const text of live) { await say(alice, 'history', text); }
    await waitForTexts(bob, 'history', [...before, ...live]);
    await waitForTexts(alice, 'history', [...before, ...live]);
  }));

  it('shows hostile text as text and runs no script', () => inWorld(async (w) => {
    const alice = (await w.person('alice', 'pw-a')).page;
    const bob = (await w.person('bob', 'pw-b')).page;
    const payloads = [
      '<img src=x onerror="window.__xss=1">',
      '<script>window.__xss=2</script>',
      '"><svg onload="window.__xss=3">',
      '&lt;b&gt;not bold&lt;/b&gt; <b>nor this</b>',
    ];
    for (const text of payloads) { await say(alice, 'lobby', text); }
    await waitForTexts(bob, 'lobby', payloads);
    await waitForTexts(alice, 'lobby', payloads);
    for (const page of [alice, bob]) {
      assert.equal(await page.evaluate(() => window.__xss), undefined, 'a payload ran');
      assert.equal(await page.locator(`${pane('lobby')} .messages img, ${pane('lobby')} .messages script, `
        + `${pane('lobby')} .messages svg, ${pane('lobby')} .messages b`).count(), 0, 'payload became markup');
    }
    // A room name is user text too.
    await alice.fill('#room-name', 'x<b>y');
    await alice.click('#room-form button');
    await waitUntil(alice, 'invalid room name notice',
      () => /Room names are/.test(document.getElementById('notices').textContent));
  }));

  it('a status change is seen by the other person', () => inWorld(async (w) => {
    const alice = (await w.person('alice', 'pw-a')).page;
    const bob = (await w.person('bob', 'pw-b')).page;
    await bob.waitForSelector('#user-list li[data-user="alice"][data-status="online"]');
    for (const status of ['busy', 'away', 'online']) {
      await alice.selectOption('#status-select', status);
      await bob.waitForSelector(`#user-list li[data-user="alice"][data-status="${status}"]`);
      // The setting sticks on alice's side as well.
      await waitUntil(alice, `own status ${status}`,
        (s) => document.getElementById('status-select').value === s, status);
    }
    await alice.selectOption('#status-select', 'busy');
    await bob.waitForSelector('#user-list li[data-user="alice"][data-status="busy"]');
    assert.match(await bob.textContent('#user-list li[data-user="alice"]'), /busy/);
  }));

  it('closing a page makes that person leave the list and their dialog go away', () => inWorld(async (w) => {
    const alice = (await w.person('alice', 'pw-a')).page;
    const bobPerson = await w.person('bob', 'pw-b');
    const bob = bobPerson.page;
    const dlg = dialogId('alice', 'bob');
    await alice.click('#user-list li[data-user="bob"] button');
    await say(alice, dlg, 'are you there?');
    await waitForTexts(bob, dlg, ['are you there?']);

    await bob.close();
    await alice.waitForSelector('#user-list li[data-user="bob"]', { state: 'detached' });
    await alice.waitForSelector(pane(dlg), { state: 'detached' });
    await alice.waitForSelector(`#tabs .tab[data-conv="${dlg}"]`, { state: 'detached' });
    await waitUntil(alice, 'went-offline notice',
      () => /bob went offline/.test(document.getElementById('notices').textContent));
    await alice.waitForSelector(`${pane('lobby')}.active`);
    assert.equal(await alice.isVisible('#no-users'), true, '"nobody else is here" shows');
  }));

  it('a person silently gone (no goodbye) is swept after the inactivity timeout', () => inWorld(async (w) => {
    const alice = (await w.person('alice', 'pw-a')).page;
    const bob = (await w.person('bob', 'pw-b')).page;
    await alice.waitForSelector('#user-list li[data-user="bob"]');
    // Cut bob's network: no goodbye reaches the server, his polls stop.
    await bob.context().setOffline(true);
    // A parked poll may hold for the poll timeout (5 s) before the sweep's 1.5 s start.
    await alice.waitForSelector('#user-list li[data-user="bob"]', { state: 'detached', timeout: 15000 });
    await waitUntil(bob, 'bob sees reconnecting',
      () => document.getElementById('conn').getAttribute('data-state') === 'reconnecting');
    // Back online: bob's client rejoins on its own (401 -> /join with the kept password).
    await bob.context().setOffline(false);
    await alice.waitForSelector('#user-list li[data-user="bob"]');
    await waitUntil(bob, 'bob connected', () => document.getElementById('conn').textContent === 'connected');
    await say(bob, 'lobby', 'back again');
    await waitForTexts(alice, 'lobby', ['back again']);
  }));

  it('a send whose reply is lost is retried with the same client_msg_id and shown once', () => inWorld(async (w) => {
    const alicePerson = await w.person(null);
    const alice = alicePerson.page;
    // alice's poll replies pass through a gate, so the test decides when the
    // stream may show her message: only after the retried send.
    let gate = Promise.resolve();
    await alice.route('**/poll', async (route) => {
      let response;
      try { response = await route.fetch({ timeout: 30000 }); } catch { await route.abort().catch(() => {}); return; }
      await gate;
      await route.fulfill({ response }).catch(() => {});
    });
    const sends = [];
    // The first /send reaches the server, but its reply never reaches the page.
    await alice.route('**/send', async (route) => {
      sends.push(route.request().postData());
      if (sends.length === 1) {
        await route.fetch();
        await route.abort('connectionreset');
      } else {
        await route.continue();
      }
    });
    await login(alice, 'alice', 'pw-a');
    const bob = (await w.person('bob', 'pw-b')).page;

    let release;
    gate = new Promise((resolve) => { release = resolve; });
    await say(alice, 'lobby', 'exactly once');
    await waitForTexts(bob, 'lobby', ['exactly once']);
    await eventually('the send to be retried', () => sends.length >= 2);
    await alice.waitForSelector(`${pane('lobby')} .outbox li.pending`);
    release();
    await waitForTexts(alice, 'lobby', ['exactly once']);
    await waitUntil(alice, 'outbox empty',
      (sel) => document.querySelectorAll(`${sel} .outbox li`).length === 0, pane('lobby'));
    const ids = sends.map((body) => new URLSearchParams(body).get('client_msg_id'));
    assert.ok(ids[0], 'a client_msg_id is sent');
    assert.equal(new Set(ids).size, 1, `the retry reuses the client_msg_id: ${ids}`);
    // Another message still goes through and lands after it, once.
    await say(alice, 'lobby', 'and then this');
    await waitForTexts(bob, 'lobby', ['exactly once', 'and then this']);
    await waitForTexts(alice, 'lobby', ['exactly once', 'and then this']);
  }));

  it('is usable on a phone-sized screen', () => inWorld(async (w) => {
    const phone = { viewport: { width: 390, height: 800 } };
    const alice = (await w.person('alice', 'pw-a', phone)).page;
    await w.person('bob', 'pw-b');
    assert.equal(await alice.isVisible('#sidebar'), true, 'sidebar in the DOM');
    const box = await alice.locator('#sidebar').boundingBox();
    assert.ok(box.x + box.width <= 0, 'the sidebar starts out of the way');
    await alice.click('#menu-toggle');
    await alice.waitForSelector('#user-list li[data-user="bob"]');
    await screenshot(alice, 'phone-sidebar.png');
    await alice.click('#user-list li[data-user="bob"] button');
    const dlg = dialogId('alice', 'bob');
    await alice.waitForSelector(`${pane(dlg)}.active`);
    await say(alice, dlg, 'typed on a phone');
    await waitForTexts(alice, dlg, ['typed on a phone']);
    const prompt = await alice.locator(`${pane(dlg)} .prompt-input`).boundingBox();
    assert.ok(prompt.x >= 0 && prompt.x + prompt.width <= 390, 'the prompt fits the screen');
    await screenshot(alice, 'phone-dialog.png');
  }));
});
