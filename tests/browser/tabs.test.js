'use strict';
// The tabs of one browser share one session and one poll (public/tabs.js):
// one leader polls and hands the events to the others, so a browser holds
// one parked poll however many tabs it has open.

const { describe, it, before, after } = require('node:test');
const http = require('node:http');
const assert = require('node:assert/strict');
const {
  launchBrowser, world, login, waitForTexts, say, messages, eventually, WAIT_MS,
} = require('./helpers');

/**
 * Counts the /poll requests of a browser context that are in flight (sent,
 * no answer yet): seen from the browser, across all its pages. `max()` is
 * the most at once since the last `resetMax()`.
 */
function countPolls(context) {
  const inflight = new Set();
  let max = 0;
  let started = 0;
  const end = (req) => { inflight.delete(req); };
  context.on('request', (req) => {
    if (!new URL(req.url()).pathname.endsWith('/poll')) { return; }
    inflight.add(req);
    started++;
    max = Math.max(max, inflight.size);
  });
  context.on('response', (res) => end(res.request()));
  context.on('requestfailed', end);
  // A closed page's poll ends with it, and no event says so.
  const watch = (page) => page.on('close', () => {
    for (const req of inflight) {
      let owner = null;
      try { owner = req.frame().page(); } catch { owner = page; }
      if (owner === page) { inflight.delete(req); }
    }
  });
  context.pages().forEach(watch);
  context.on('page', watch);
  return {
    inflight: () => inflight.size,
    started: () => started,
    max: () => max,
    resetMax() { max = inflight.size; },
  };
}

/**
 * What the server itself counts: `parlor_parked_polls` from its metrics
 * listener (the server was started with `--metrics-listen 127.0.0.1:0`).
 */
async function parkedAtServer(server) {
  const m = /serving metrics at \/metrics address=(\S+)/.exec(server.log());
  assert.ok(m, 'the server announces its metrics address');
  const text = await new Promise((resolve, reject) => {
    http.get(`http://${m[1]}/metrics`, (res) => {
      let body = '';
      res.on('data', (chunk) => { body += chunk; });
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
  const line = /^parlor_parked_polls (\d+)$/m.exec(text);
  assert.ok(line, `parlor_parked_polls in ${text.slice(0, 200)}`);
  return Number(line[1]);
}

/** Waits until the server holds exactly `n` parked polls. */
async function serverParks(server, n, what) {
  let seen = -1;
  try {
    await eventually(what, async () => { seen = await parkedAtServer(server); return seen === n; });
  } catch (err) {
    throw new Error(`${err.message} (the server holds ${seen} parked polls)`);
  }
}

/** Another tab of person `p` (same browser context); it resumes the shared session. */
async function openTab(p, url) {
  const page = await p.context.newPage();
  page.on('pageerror', (err) => p.errors.push(String(err && err.stack || err)));
  await page.goto(`${url}/`);
  await page.waitForSelector('body.at-chat');
  await page.waitForSelector('.pane[data-conv="lobby"]', { state: 'attached' });
  return page;
}

async function leaders(pages) {
  const flags = await Promise.all(pages.map((page) => page.evaluate(() => window.parlor.tabs.isLeader())));
  return flags.filter(Boolean).length;
}

/** Waits until exactly one tab leads and exactly one poll of the context is parked. */
async function oneLeader(what, pages, polls) {
  let seen = '';
  try {
    await eventually(what, async () => {
      const n = await leaders(pages);
      seen = `${n} leaders, ${polls.inflight()} polls in flight`;
      return polls.inflight() === 1 && n === 1;
    });
  } catch (err) {
    throw new Error(`${err.message} (last seen: ${seen})`);
  }
}

/**
 * `name` signs in, in a browser of their own, with its polls counted from
 * the first, then opens `count - 1` more tabs, which resume the session.
 */
async function signedInTabs(w, name, password, count) {
  const person = await w.person(null);
  const polls = countPolls(person.context);
  await login(person.page, name, password);
  const tabs = [person.page];
  while (tabs.length < count) { tabs.push(await openTab(person, w.server.url)); }
  return { person, polls, tabs };
}

describe('tabs of one browser share one poll', () => {
  let browser;
  before(async () => { browser = await launchBrowser(); });
  after(async () => { if (browser) { await browser.close(); } });

  const inWorld = (body) => world.run(browser, body);

  it('8 tabs: one poll, every message once and in order, the leader closes, a late tab catches up, logout', () => world.run(browser, async (w) => {
    const url = w.server.url;
    const { person: alice, polls, tabs } = await signedInTabs(w, 'alice', 'pw-a', 8);
    await oneLeader('one leader and one parked poll among 8 tabs', tabs, polls);

    // bob, in a browser of his own with two tabs, has a leader of his own.
    const { person: bob, polls: bobPolls, tabs: bobTabs } = await signedInTabs(w, 'bob', 'pw-b', 2);
    await oneLeader('bob has one leader and one parked poll', bobTabs, bobPolls);
    await serverParks(w.server, 2, 'the server holds one poll per browser, not one per tab');

    polls.resetMax();
    const expected = [];
    for (let i = 1; i <= 5; i++) {
      const text = `bob line ${i}`;
      await say(bob.page, 'lobby', text);
      expected.push(text);
    }
    // bob's lines are stored before alice's, so the order is known.
    await waitForTexts(bob.page, 'lobby', expected);
    await say(tabs[3], 'lobby', 'alice from tab 4');
    expected.push('alice from tab 4');
    for (const page of [...tabs, ...bobTabs]) { await waitForTexts(page, 'lobby', expected); }
    assert.equal(polls.max(), 1, 'never more than one poll of alice\'s browser in flight');
    assert.equal(polls.inflight(), 1);
    await serverParks(w.server, 2, 'still one parked poll per browser while messages flow');

    // The leader closes: another tab takes over and nothing is lost or doubled.
    const flags = await Promise.all(tabs.map((page) => page.evaluate(() => window.parlor.tabs.isLeader())));
    const leader = tabs[flags.indexOf(true)];
    const rest = tabs.filter((page) => page !== leader);
    await leader.close();
    await say(bob.page, 'lobby', 'while the leader is gone');
    expected.push('while the leader is gone');
    // The lease is 5 s; a closing leader gives it up at once.
    await oneLeader('another tab leads', rest, polls);
    await say(bob.page, 'lobby', 'to the new leader');
    expected.push('to the new leader');
    for (const page of rest) { await waitForTexts(page, 'lobby', expected); }
    assert.equal(await bob.page.locator('#user-list li[data-user="alice"]').count(), 1, 'alice stays online');

    // A tab opened later shows the history and then what comes.
    const late = await openTab(alice, url);
    await waitForTexts(late, 'lobby', expected);
    await say(bob.page, 'lobby', 'for the late tab too');
    expected.push('for the late tab too');
    for (const page of [...rest, late]) { await waitForTexts(page, 'lobby', expected); }
    const ids = (await messages(late, 'lobby')).map((m) => Number(m.id));
    assert.equal(new Set(ids).size, ids.length, 'no message shown twice');
    await oneLeader('still one leader', [...rest, late], polls);
    await serverParks(w.server, 2, 'one parked poll per browser after the hand-over');

    // Logging out in one tab logs out every tab of the browser.
    await rest[0].click('#logout');
    for (const page of [...rest, late]) { await page.waitForSelector('body.at-login'); }
    await bob.page.waitForSelector('#user-list li[data-user="alice"]', { state: 'detached' });
    await eventually('alice\'s browser polls no more', () => polls.inflight() === 0);
    await serverParks(w.server, 1, 'only bob\'s browser polls');
    // The token is gone from storage; the password was never there.
    const stored = await late.evaluate(() => JSON.stringify(Object.keys(localStorage)
      .map((k) => localStorage.getItem(k))));
    assert.ok(!stored.includes('pw-a') && !stored.includes('"token"'), `storage after logout: ${stored}`);
  }, { extraArgs: ['--metrics-listen', '127.0.0.1:0'] }));

  it('10 tabs of one person in one browser can each send and receive', () => inWorld(async (w) => {
    const { polls, tabs } = await signedInTabs(w, 'alice', 'pw-a', 10);
    const bob = (await w.person('bob', 'pw-b')).page;
    await oneLeader('one leader among 10 tabs', tabs, polls);
    const expected = [];
    for (let i = 0; i < tabs.length; i++) {
      const text = `from tab ${i + 1}`;
      await say(tabs[i], 'lobby', text);
      expected.push(text);
      await waitForTexts(tabs[i], 'lobby', expected);
    }
    for (const page of [...tabs, bob]) { await waitForTexts(page, 'lobby', expected); }
  }));

  it('without localStorage each tab polls for itself', () => inWorld(async (w) => {
    const alice = await w.person(null);
    // As in old Safari's private mode: setItem throws.
    await alice.context.addInitScript(() => {
      Storage.prototype.setItem = function () { throw new Error('QuotaExceededError'); };
    });
    const polls = countPolls(alice.context);
    await alice.page.reload();
    await login(alice.page, 'alice', 'pw-a');
    const tab2 = await alice.context.newPage();
    tab2.on('pageerror', (err) => alice.errors.push(String(err && err.stack || err)));
    await tab2.goto(`${w.server.url}/`);
    assert.equal(await tab2.locator('body.at-login').count(), 1, 'the second tab signs in itself');
    await login(tab2, 'alice', 'pw-a');
    await eventually('each tab polls', () => polls.inflight() === 2, WAIT_MS);
    const bob = (await w.person('bob', 'pw-b')).page;
    await say(alice.page, 'lobby', 'one');
    await waitForTexts(alice.page, 'lobby', ['one']); // stored first: the order is known
    await say(tab2, 'lobby', 'two');
    for (const page of [alice.page, tab2, bob]) { await waitForTexts(page, 'lobby', ['one', 'two']); }
  }));

  it('without BroadcastChannel the events go through localStorage', () => inWorld(async (w) => {
    const alice = await w.person(null);
    await alice.context.addInitScript(() => { delete window.BroadcastChannel; });
    await alice.page.reload();
    const polls = countPolls(alice.context);
    await login(alice.page, 'alice', 'pw-a');
    const tabs = [alice.page, await openTab(alice, w.server.url), await openTab(alice, w.server.url)];
    await oneLeader('one leader among 3 tabs', tabs, polls);
    const bob = (await w.person('bob', 'pw-b')).page;
    await say(bob, 'lobby', 'via storage');
    await waitForTexts(tabs[2], 'lobby', ['via storage']); // stored first: the order is known
    await say(tabs[2], 'lobby', 'and back');
    for (const page of [...tabs, bob]) { await waitForTexts(page, 'lobby', ['via storage', 'and back']); }
  }));
});
