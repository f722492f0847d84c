'use strict';
// A lobby bigger than the first page /join lists (200): the page shows the
// people it knows and "N more online", "Show more" pages /users for the
// rest, and presence keeps both the list and the count current.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { launchBrowser, world, waitUntil } = require('./helpers');

/** Others online before the page signs in: more than one page of them. */
const CROWD = 230;

/** Joins `name` over plain HTTP (no page); its client never polls. */
async function joinOverHttp(url, name) {
  const answer = await fetch(`${url}/join`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: `name=${name}&password=pw-${name}`,
  });
  const text = await answer.text();
  assert.equal(answer.status, 200, `join ${name}: ${text}`);
  return JSON.parse(text);
}

function listed(page) {
  return page.$$eval('#user-list li', (items) => items.map((item) => item.getAttribute('data-user')));
}

describe('a big lobby', () => {
  let browser;
  before(async () => { browser = await launchBrowser(); });
  after(async () => { if (browser) { await browser.close(); } });

  it('lists the first page, counts the rest, pages on and follows presence', async () => {
    // Cheap hashes and no sign-up limit: the crowd joins from one address.
    // Nobody in it polls, so nobody may be swept meanwhile.
    const options = {
      inactivity: '10m',
      extraArgs: ['--argon2-memory-kib', '8', '--argon2-iterations', '1', '--signups-per-ip', '0'],
    };
    await world.run(browser, async (w) => {
      const names = [];
      for (let n = 0; n < CROWD; n++) { names.push(`u${String(n).padStart(3, '0')}`); }
      for (let i = 0; i < names.length; i += 10) {
        await Promise.all(names.slice(i, i + 10).map((name) => joinOverHttp(w.server.url, name)));
      }
      // `zed` sorts after every `u...`: the first page is u000..u199.
      const { page } = await w.person('zed', 'pw-zed');
      await waitUntil(page, 'the first page listed', () => document.querySelectorAll('#user-list li').length === 200);
      assert.deepEqual(await listed(page), names.slice(0, 200));
      assert.equal(await page.textContent('#user-count'), String(CROWD));
      assert.equal(await page.isVisible('#more-users'), true);
      assert.equal(await page.textContent('#more-users-count'), `${CROWD - 200} more online`);
      assert.equal(await page.isVisible('#no-users'), false);
      assert.match(await page.textContent('.pane[data-conv="lobby"] .pane-sub'), new RegExp(`${CROWD + 1} online`));

      // Someone beyond the page comes online: known now, and counted.
      await joinOverHttp(w.server.url, 'v-late');
      await page.waitForSelector('#user-list li[data-user="v-late"]');
      await waitUntil(page, 'the newcomer counted', (n) => document.getElementById('user-count').textContent === String(n), CROWD + 1);
      assert.equal(await page.textContent('#more-users-count'), `${CROWD - 200} more online`);

      await page.click('#more-users-button');
      await waitUntil(page, 'everyone listed', (n) => document.querySelectorAll('#user-list li').length === n, CROWD + 1);
      assert.deepEqual(await listed(page), [...names, 'v-late']);
      assert.equal(await page.isVisible('#more-users'), false, 'nobody more to show');
      assert.equal(await page.textContent('#user-count'), String(CROWD + 1));
      assert.match(await page.textContent('.pane[data-conv="lobby"] .pane-sub'), new RegExp(`${CROWD + 2} online`));
    }, options);
  });

  it('takes its own status from the answer even when not on the first page', async () => {
    const options = {
      inactivity: '10m',
      extraArgs: ['--argon2-memory-kib', '8', '--argon2-iterations', '1', '--signups-per-ip', '0'],
    };
    await world.run(browser, async (w) => {
      const names = [];
      for (let n = 0; n < 205; n++) { names.push(`u${String(n).padStart(3, '0')}`); }
      for (let i = 0; i < names.length; i += 10) {
        await Promise.all(names.slice(i, i + 10).map((name) => joinOverHttp(w.server.url, name)));
      }
      const zed = await joinOverHttp(w.server.url, 'zed');
      const busy = await fetch(`${w.server.url}/status`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
        body: `token=${zed.token}&status=busy`,
      });
      assert.equal(busy.status, 200);
      const { page } = await w.person('zed', 'pw-zed');
      await waitUntil(page, 'busy shown as our status', () => document.getElementById('status-select').value === 'busy');
      assert.equal(await page.locator('#user-list li[data-user="zed"]').count(), 0);
    }, options);
  });
});
