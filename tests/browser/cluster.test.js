'use strict';
// The web client against cluster mode with no sticky sessions: three parlor
// nodes on one (scratch) Redis behind nginx, which sends every request of
// every page to a node picked at random. Two people join, see each other,
// talk in the lobby and in a dialog; then the node holding a parked poll is
// killed and the chat goes on. Every message must show once, in order.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const {
  launchBrowser, startServer, openPerson, login, pane, dialogId, messages, waitForTexts, say, eventually,
} = require('./helpers');
const { freePort, startRedis, startRandomBalancer } = require('./cluster-fixtures');

/** A node's `parlor_parked_polls` gauge, from its private metrics listener. */
function parkedPolls(metricsAddr) {
  return new Promise((resolve) => {
    http.get(`http://${metricsAddr}/metrics`, (res) => {
      let body = '';
      res.on('data', (chunk) => { body += chunk; });
      res.on('end', () => {
        const m = /^parlor_parked_polls (\d+)/m.exec(body);
        resolve(m ? Number(m[1]) : 0);
      });
    }).on('error', () => resolve(0));
  });
}

/** Says each `[page, text]` in `conv`, waiting until both pages show everything so far. */
async function talk(pages, conv, lines, expected) {
  for (const [page, text] of lines) {
    if (!(await page.locator(`${pane(conv)}.active`).count())) {
      await page.click(`#tabs .tab[data-conv="${conv}"] .tab-open`);
    }
    await say(page, conv, text);
    expected.push(text);
    // Wait for it before the next line, so "in order" is well defined.
    for (const p of pages) { await waitForTexts(p, conv, expected); }
  }
}

/** The page shows each message once, in the server's id order. */
async function assertOnceInOrder(page, conv) {
  const ids = (await messages(page, conv)).map((m) => Number(m.id));
  assert.deepEqual([...ids].sort((a, b) => a - b), ids, `${conv}: ordered by server id`);
  assert.equal(new Set(ids).size, ids.length, `${conv}: no message shown twice`);
}

describe('the browser client on three cluster nodes behind a random balancer', () => {
  let browser;
  let redis;
  let balancer;
  const nodes = [];
  const contexts = [];

  before(async () => {
    browser = await launchBrowser();
    redis = await startRedis();
    for (let i = 0; i < 3; i += 1) {
      const metrics = `127.0.0.1:${await freePort()}`;
      const node = await startServer({
        ephemeral: false,
        inactivity: '10s',
        extraArgs: ['--redis', redis.url, '--metrics-listen', metrics],
      });
      node.metrics = metrics;
      nodes.push(node);
    }
    balancer = await startRandomBalancer(nodes.map((node) => node.addr));
  });

  after(async () => {
    for (const context of contexts) { await context.close().catch(() => {}); }
    if (balancer) { await balancer.stop(); }
    for (const node of nodes) { await node.stop(); }
    if (redis) { await redis.stop(); }
    if (browser) { await browser.close(); }
  });

  it('two people talk in the lobby and a dialog, and go on after a node dies', async () => {
    const people = [];
    for (const [name, password] of [['alice', 'pw-a'], ['bob', 'pw-b']]) {
      const person = await openPerson(browser, balancer.url);
      contexts.push(person.context);
      people.push(person);
      await login(person.page, name, password);
    }
    const [alice, bob] = people.map((p) => p.page);
    const both = [alice, bob];
    const dlg = dialogId('alice', 'bob');

    // Each sees the other online.
    await alice.waitForSelector('#user-list li[data-user="bob"]');
    await bob.waitForSelector('#user-list li[data-user="alice"]');

    const lobby = [];
    await talk(both, 'lobby', [[alice, 'hello lobby'], [bob, 'hi alice'], [alice, 'three nodes here'],
      [bob, 'and one Redis']], lobby);

    await alice.click('#user-list li[data-user="bob"] button');
    await alice.waitForSelector(`${pane(dlg)}.active`);
    await bob.waitForSelector(`#tabs .tab[data-conv="${dlg}"]`);
    const dialog = [];
    await talk(both, dlg, [[alice, 'a word in private'], [bob, 'sure'], [alice, 'any node will do'],
      [bob, 'so I see']], dialog);

    // The balancer did spread them: every node answered some of their
    // requests, and polls were answered by more than one node.
    const served = balancer.requests();
    assert.equal(new Set(served.map((r) => r.node)).size, 3, 'every node served requests');
    assert.ok(new Set(served.filter((r) => r.path === '/poll').map((r) => r.node)).size >= 2,
      'polls were answered by more than one node');

    // Kill (SIGKILL) a node that holds a parked poll of theirs: that poll
    // dies with it, and the balancer must send everything to the others.
    let victim;
    await eventually('a node holding a parked poll', async () => {
      for (const node of nodes) {
        if (await parkedPolls(node.metrics) > 0) { victim = node; return true; }
      }
      return false;
    });
    await victim.kill();

    await talk(both, 'lobby', [[bob, 'a node went down'], [alice, 'still talking'], [bob, 'good']], lobby);
    await talk(both, dlg, [[bob, 'are you there?'], [alice, 'yes, on another node'], [bob, 'nothing lost']],
      dialog);
    for (const page of both) {
      await assertOnceInOrder(page, 'lobby');
      await assertOnceInOrder(page, dlg);
      await page.waitForFunction(() => document.getElementById('conn').textContent === 'connected');
      assert.equal(await page.locator(`${pane(dlg)} .outbox li`).count(), 0, 'nothing left pending');
    }
    // Still online for each other: the dead node's polls were not taken for leaving.
    assert.equal(await alice.locator('#user-list li[data-user="bob"]').count(), 1);
    assert.equal(await bob.locator('#user-list li[data-user="alice"]').count(), 1);
    for (const person of people) {
      assert.deepEqual(person.errors, [], 'uncaught errors in the page');
      assert.deepEqual(person.violations, [], 'Content-Security-Policy violations');
    }
  });
});
