'use strict';
// The server stops and comes back on the same port mid-conversation. It is
// --ephemeral, so the new one has forgotten every client: polls get
// 401 unknown_client and the page joins again with the password it kept in
// memory, without asking the person.

const { it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  launchBrowser, startServer, openPerson, login, pane, dialogId, waitForTexts, say, waitUntil, screenshot,
} = require('./helpers');

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { if (browser) { await browser.close(); } });

function connState(page) {
  return page.getAttribute('#conn', 'data-state');
}

it('recovers after the server restarts: shows reconnecting, rejoins, keeps queued text, later messages flow', async () => {
  let server = await startServer();
  const people = [];
  try {
    const alice = await openPerson(browser, server.url);
    const bob = await openPerson(browser, server.url);
    people.push(alice, bob);
    await login(alice.page, 'alice', 'pw-a');
    await login(bob.page, 'bob', 'pw-b');
    await alice.page.waitForSelector('#user-list li[data-user="bob"]');

    await say(alice.page, 'lobby', 'before the restart');
    await waitForTexts(bob.page, 'lobby', ['before the restart']);
    // A dialog and a room, which the restarted server will not know.
    await alice.page.click('#user-list li[data-user="bob"] button');
    await bob.page.waitForSelector(pane(dialogId('alice', 'bob')), { state: 'attached' });
    for (const p of [alice.page, bob.page]) {
      await p.fill('#room-name', 'ops');
      await p.click('#room-form button');
      await p.waitForSelector(`${pane('ops')}.active`);
    }
    await alice.page.click('#tabs .tab[data-conv="lobby"] .tab-open');
    await alice.page.selectOption('#status-select', 'busy');
    await bob.page.waitForSelector('#user-list li[data-user="alice"][data-status="busy"]');

    const addr = server.addr;
    await server.stop();
    for (const p of [alice.page, bob.page]) {
      await waitUntil(p, 'reconnecting shown',
        () => document.getElementById('conn').getAttribute('data-state') === 'reconnecting');
    }
    assert.match(await alice.page.textContent('#conn'), /reconnecting/);

    // Typed while the server is away: kept, shown as pending, not lost.
    await say(alice.page, 'lobby', 'sent while away');
    await alice.page.waitForSelector(`${pane('lobby')} .outbox li.pending`);
    await screenshot(alice.page, 'reconnecting.png');

    server = await startServer({ listen: addr });
    for (const p of [alice.page, bob.page]) {
      await waitUntil(p, 'connected again',
        () => document.getElementById('conn').getAttribute('data-state') === 'connected');
      assert.ok(await p.isVisible('body.at-chat'), 'no password prompt: the page rejoined by itself');
    }
    await alice.page.waitForSelector('#user-list li[data-user="bob"]');
    // The new server thinks alice is online; her page tells it she is busy.
    await bob.page.waitForSelector('#user-list li[data-user="alice"][data-status="busy"]');
    assert.equal(await alice.page.inputValue('#status-select'), 'busy');

    // What was shown stays; the queued message arrives exactly once; new ones flow.
    await waitForTexts(bob.page, 'lobby', ['before the restart', 'sent while away']);
    await say(bob.page, 'lobby', 'after the restart');
    const lobby = ['before the restart', 'sent while away', 'after the restart'];
    await waitForTexts(alice.page, 'lobby', lobby);
    await waitForTexts(bob.page, 'lobby', lobby);
    await waitUntil(alice.page, 'outbox empty',
      (sel) => document.querySelectorAll(`${sel} .outbox li`).length === 0, pane('lobby'));

    // The room is joined again by itself and works.
    for (const p of [alice.page, bob.page]) {
      await p.waitForSelector(`#room-list li[data-conv="ops"]`);
    }
    await waitUntil(alice.page, 'both in ops again',
      (sel) => /2 members/.test(document.querySelector(`${sel} .pane-sub`).textContent), pane('ops'));
    await say(alice.page, 'ops', 'ops still works');
    await waitForTexts(bob.page, 'ops', ['ops still works']);

    // The dialog comes back once both are online again, and works.
    const dlg = dialogId('alice', 'bob');
    for (const p of [alice.page, bob.page]) {
      await p.waitForSelector(`#tabs .tab[data-conv="${dlg}"]`);
    }
    await bob.page.click(`#tabs .tab[data-conv="${dlg}"] .tab-open`);
    await say(bob.page, dlg, 'dialog back');
    await waitForTexts(alice.page, dlg, ['dialog back']);

    assert.equal(await connState(alice.page), 'connected');
    for (const p of people) { assert.deepEqual(p.errors, [], 'uncaught errors in the page'); }
  } finally {
    for (const p of people) { await p.context.close().catch(() => {}); }
    await server.stop();
  }
});

it('asks for the password again only when the kept one stops working', async () => {
  let server = await startServer();
  const people = [];
  try {
    const alice = await openPerson(browser, server.url);
    people.push(alice);
    await login(alice.page, 'alice', 'pw-a');
    const addr = server.addr;
    // alice's page is cut off, so that her retries cannot win the race below.
    await alice.context.setOffline(true);
    await server.stop();
    await waitUntil(alice.page, 'reconnecting shown',
      () => document.getElementById('conn').getAttribute('data-state') === 'reconnecting');

    // The new (ephemeral) server has forgotten alice; someone else claims
    // the name first with another password.
    server = await startServer({ listen: addr });
    const mallory = await openPerson(browser, server.url);
    people.push(mallory);
    await login(mallory.page, 'alice', 'not-alices-password');
    await alice.context.setOffline(false);

    await alice.page.waitForSelector('body.at-login');
    await waitUntil(alice.page, 'signed-out message',
      () => /Wrong password/.test(document.getElementById('login-error').textContent));
    assert.equal(await alice.page.inputValue('#login-name'), 'alice');
    assert.equal(await alice.page.inputValue('#login-password'), '', 'the form does not keep the password');
    for (const p of people) { assert.deepEqual(p.errors, [], 'uncaught errors in the page'); }
  } finally {
    for (const p of people) { await p.context.close().catch(() => {}); }
    await server.stop();
  }
});
