'use strict';
// Names that are also the names of JavaScript's own properties. Rooms and
// users are keyed by name on the page, and `__proto__`, `constructor`,
// `hasOwnProperty` and `toString` are valid names (letters, digits, `_`,
// `-`, `.`): each must work like any other name, and none may reach
// Object.prototype.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  launchBrowser, world, pane, dialogId, messages, waitForTexts, say, waitUntil,
} = require('./helpers');

const ROOMS = ['__proto__', 'constructor', 'hasOwnProperty', 'toString'];

/** What a polluting write left behind: keys every object now inherits, or stuck on Object itself. */
function strayProperties(page) {
  return page.evaluate(() => {
    const inherited = ['id', 'kind', 'name', 'members', 'peer', 'pane', 'unread', 'entries', 'online']
      .filter((key) => key in {});
    const onObject = ['id', 'kind', 'members', 'peer', 'pane', 'unread']
      .filter((key) => Object.prototype.hasOwnProperty.call(Object, key)).map((key) => `Object.${key}`);
    return [...inherited, ...onObject];
  });
}

async function joinRoom(page, name) {
  await page.fill('#room-name', name);
  await page.click('#room-form button');
  await page.waitForSelector(`${pane(name)}.active`);
  await page.waitForSelector(`#room-list li[data-conv="${name}"]`);
}

describe('names that are JavaScript property names', () => {
  let browser;
  before(async () => { browser = await launchBrowser(); });
  after(async () => { if (browser) { await browser.close(); } });

  async function inWorld(body) {
    const w = await world(browser);
    try {
      await body(w);
      w.assertNoPageErrors();
      w.assertQuietConsole();
    } finally {
      await w.close();
    }
  }

  it('rooms named __proto__, constructor, hasOwnProperty, toString: join, list, talk, leave', () => inWorld(async (w) => {
    const alice = (await w.person('alice', 'pw-a')).page;
    const bob = (await w.person('bob', 'pw-b')).page;

    for (const room of ROOMS) {
      await joinRoom(alice, room);
      await joinRoom(bob, room);
      await waitUntil(alice, `two members of ${room}`,
        (sel) => /2 members: /.test(document.querySelector(`${sel} .pane-sub`).textContent), pane(room));
      assert.equal(await alice.textContent(`${pane(room)} .pane-title`), `#${room}`);
    }
    for (const page of [alice, bob]) {
      const listed = await page.$$eval('#room-list li', (items) => items.map((li) => li.getAttribute('data-conv')));
      assert.deepEqual(listed, ['lobby', ...ROOMS], 'rooms listed in the order joined');
      assert.equal(await page.locator('#tabs .tab').count(), 1 + ROOMS.length, 'one tab each');
    }

    for (const room of ROOMS) {
      await say(alice, room, `hello ${room}`);
      await say(bob, room, `hi from bob in ${room}`);
      for (const page of [alice, bob]) {
        await waitForTexts(page, room, [`hello ${room}`, `hi from bob in ${room}`]);
      }
    }
    assert.deepEqual((await messages(alice, '__proto__')).map((m) => m.from), ['alice', 'bob']);

    // Unread counts work for them too: bob is elsewhere when alice speaks.
    await bob.click('#tabs .tab[data-conv="lobby"] .tab-open');
    await say(alice, 'constructor', 'unread for bob');
    await waitUntil(bob, 'badge on #constructor',
      () => (document.querySelector('#room-list li[data-conv="constructor"] .badge') || {}).textContent === '1');

    for (const page of [alice, bob]) {
      assert.deepEqual(await strayProperties(page), [], 'nothing written to Object.prototype');
    }

    // Leaving: the pane, tab and list entry go; the others see it.
    for (const room of ROOMS) {
      await alice.click(`#room-list li[data-conv="${room}"] button`);
      await alice.click(`${pane(room)}.active .leave`);
      await alice.waitForSelector(pane(room), { state: 'detached' });
      assert.equal(await alice.locator(`#room-list li[data-conv="${room}"]`).count(), 0);
      // Dismiss the "You left" notice, which would cover the next room's leave button.
      const notice = alice.locator('#notices .notice', { hasText: `You left #${room}.` });
      await notice.locator('.notice-close').click();
      await notice.waitFor({ state: 'detached' });
      await waitUntil(bob, `alice left ${room}`,
        (sel) => /1 member: bob$/.test(document.querySelector(`${sel} .pane-sub`).textContent), pane(room));
    }
    await alice.waitForSelector(`${pane('lobby')}.active`);
    assert.deepEqual(await alice.$$eval('#room-list li', (items) => items.map((li) => li.getAttribute('data-conv'))),
      ['lobby']);

    // The lobby still works both ways.
    await say(alice, 'lobby', 'lobby after all that');
    await waitForTexts(bob, 'lobby', ['lobby after all that']);
    await waitForTexts(alice, 'lobby', ['lobby after all that']);
  }));

  it('people named __proto__ and constructor are listed, talk in dialogs and leave', () => inWorld(async (w) => {
    const alice = (await w.person('alice', 'pw-a')).page;
    const proto = (await w.person('__proto__', 'pw-p')).page;
    const ctor = (await w.person('constructor', 'pw-c')).page;

    for (const [page, others] of [[alice, ['__proto__', 'constructor']], [proto, ['alice', 'constructor']],
      [ctor, ['__proto__', 'alice']]]) {
      for (const name of others) {
        await page.waitForSelector(`#user-list li[data-user="${name}"][data-status="online"]`);
      }
      await waitUntil(page, 'two others counted', () => document.getElementById('user-count').textContent === '2');
    }

    // Dialogs: alice opens one with each; both sides talk.
    for (const [name, page] of [['__proto__', proto], ['constructor', ctor]]) {
      const dlg = dialogId('alice', name);
      await alice.click(`#user-list li[data-user="${name}"] button`);
      await alice.waitForSelector(`${pane(dlg)}.active`);
      assert.equal(await alice.textContent(`${pane(dlg)} .pane-title`), name);
      await page.waitForSelector(`#tabs .tab[data-conv="${dlg}"]`);
      await say(alice, dlg, `hi ${name}`);
      await say(page, dlg, `hi alice, ${name} here`);
      for (const p of [alice, page]) { await waitForTexts(p, dlg, [`hi ${name}`, `hi alice, ${name} here`]); }
    }
    assert.match(await alice.textContent(`${pane(dialogId('alice', 'constructor'))} .pane-sub`), /online/);

    // A status change of `constructor` reaches the others.
    await ctor.selectOption('#status-select', 'busy');
    await alice.waitForSelector('#user-list li[data-user="constructor"][data-status="busy"]');
    await proto.waitForSelector('#user-list li[data-user="constructor"][data-status="busy"]');

    for (const page of [alice, proto, ctor]) {
      assert.deepEqual(await strayProperties(page), [], 'nothing written to Object.prototype');
    }

    // `__proto__` logs out: gone from the list, the dialog closes.
    await proto.click('#logout');
    await proto.waitForSelector('body.at-login');
    await alice.waitForSelector('#user-list li[data-user="__proto__"]', { state: 'detached' });
    await alice.waitForSelector(pane(dialogId('alice', '__proto__')), { state: 'detached' });
    await waitUntil(alice, 'went-offline notice',
      () => /__proto__ went offline/.test(document.getElementById('notices').textContent));
    await waitUntil(alice, 'one other counted', () => document.getElementById('user-count').textContent === '1');
    await say(ctor, 'lobby', 'still here');
    await waitForTexts(alice, 'lobby', ['still here']);
  }));
});
