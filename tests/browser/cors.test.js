'use strict';
// A page on another origin uses parlor with plain XHR when parlor admits
// that origin (--allow-origin): the join, a send with the token in an
// Authorization header (which makes the browser send a preflight) and a
// poll all succeed. A page on an origin parlor does not admit cannot read
// any answer.

const http = require('node:http');
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startServer, launchBrowser } = require('./helpers');

/** A blank page on its own local origin (another port is another origin). */
async function otherOrigin() {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>another origin</title>');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

/** Runs in the other origin's page: join, send with a bearer, poll. */
function talkToParlor(parlor) {
  function xhr(method, path, body, token) {
    return new Promise((resolve) => {
      const request = new XMLHttpRequest();
      request.open(method, parlor + path);
      request.setRequestHeader('Content-Type', 'application/x-www-form-urlencoded');
      if (token) { request.setRequestHeader('Authorization', 'Bearer ' + token); }
      request.onload = () => resolve({ status: request.status, body: request.responseText });
      request.onerror = () => resolve({ status: 0, body: '' });
      request.send(body);
    });
  }
  return (async () => {
    const joined = await xhr('POST', '/join', 'name=carol&password=pw-carol');
    if (joined.status !== 200) { return { joined }; }
    const token = JSON.parse(joined.body).token;
    const sent = await xhr('POST', '/send', 'conversation=lobby&text=from+afar', token);
    const polled = await xhr('POST', '/poll', 'cursor=0&timeout=0', token);
    return { joined, sent, polled };
  })();
}

describe('cross-origin pages', () => {
  let browser;
  let allowed;
  let refused;
  before(async () => {
    browser = await launchBrowser();
    allowed = await otherOrigin();
    refused = await otherOrigin();
  });
  after(async () => {
    if (browser) { await browser.close(); }
    for (const site of [allowed, refused]) { if (site) { site.server.close(); } }
  });

  it('an admitted origin joins, sends with a bearer and polls; another cannot read', async () => {
    const parlor = await startServer({ extraArgs: ['--allow-origin', allowed.origin] });
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      await page.goto(allowed.origin + '/');
      const ok = await page.evaluate(talkToParlor, parlor.url);
      assert.equal(ok.joined.status, 200, JSON.stringify(ok));
      assert.equal(ok.sent.status, 200, JSON.stringify(ok));
      assert.equal(ok.polled.status, 200, JSON.stringify(ok));
      const texts = JSON.parse(ok.polled.body).events
        .filter((event) => event.type === 'message')
        .map((event) => event.text);
      assert.deepEqual(texts, ['from afar']);

      await page.goto(refused.origin + '/');
      const blocked = await page.evaluate(talkToParlor, parlor.url);
      assert.equal(blocked.joined.status, 0, JSON.stringify(blocked));
    } finally {
      await context.close();
      await parlor.stop();
    }
  });
});
