/*
 * parlor web client: talking to the server.
 *
 * Owns request() (one XHR, form-encoded, with its own timeout), the retry
 * policy (which failures are transient, exponential backoff with jitter) and
 * the connection loop: poll -> events; on failure wait and poll again with
 * the same cursor, /join again when the server forgot us, /sync when we fell
 * behind. The loop does one thing at a time; session.stage names it.
 */
(function (P) {
  'use strict';

  /** First retry delay after a failed poll or send; doubles each failure. */
  var BACKOFF_BASE_MS = 500;
  /** Retry delays never exceed this, so a restarted server is found quickly. */
  var BACKOFF_CAP_MS = 10000;
  /** Extra time the client waits for a parked poll beyond the server's hold. */
  var POLL_SLACK_MS = 10000;

  var noop = P.noop;
  var hasOwn = P.hasOwn;

  // ---- HTTP ----------------------------------------------------------------

  function encodeForm(params) {
    var parts = [];
    for (var key in params) {
      if (hasOwn(params, key) && params[key] !== undefined && params[key] !== null) {
        parts.push(encodeURIComponent(key) + '=' + encodeURIComponent(String(params[key])));
      }
    }
    return parts.join('&');
  }

  /**
   * One request to parlor. GET parameters go in the query string, except the
   * token, which goes in an Authorization header: URLs end up in proxy and
   * server logs. POST bodies (token included) are
   * application/x-www-form-urlencoded, which every browser can send.
   * `done(err, body)` is called exactly once. err is
   * {status, code, message}: status 0 means the network failed or the
   * request timed out (we run our own timer: old XHRs have no .timeout).
   * Returns a handle whose abort() drops the request without calling done.
   */
  function request(method, path, params, timeoutMs, done) {
    var xhr = new XMLHttpRequest();
    var bearer = null;
    var fields = params || {};
    if (method === 'GET' && fields.token) {
      bearer = fields.token;
      fields = {};
      for (var key in params) {
        if (hasOwn(params, key) && key !== 'token') { fields[key] = params[key]; }
      }
    }
    var query = encodeForm(fields);
    var url = path;
    var body = null;
    var finished = false;
    var timer = null;

    if (method === 'GET') {
      // A cache-busting parameter as well as the server's no-store: some old
      // browsers and proxies cache GETs regardless.
      url += '?' + (query ? query + '&' : '') + '_=' + new Date().getTime();
    } else {
      body = query;
    }

    function finish(err, data) {
      if (finished) { return; }
      finished = true;
      if (timer) { clearTimeout(timer); }
      xhr.onreadystatechange = noop;
      done(err, data);
    }

    xhr.onreadystatechange = function () {
      if (xhr.readyState !== 4) { return; }
      var status = 0;
      var data = null;
      try { status = xhr.status; } catch (e) { status = 0; }
      try { data = JSON.parse(xhr.responseText); } catch (e2) { data = null; }
      if (status >= 200 && status < 300 && data !== null) {
        finish(null, data);
      } else if (status === 0) {
        finish({ status: 0, code: 'network', message: 'The server could not be reached.' });
      } else {
        finish({
          status: status,
          code: (data && data.error) || 'http_' + status,
          message: (data && data.message) || 'The server answered ' + status + '.',
          retryAfterMs: retryAfterMs(xhr)
        });
      }
    };

    xhr.open(method, url, true);
    if (bearer !== null) {
      xhr.setRequestHeader('Authorization', 'Bearer ' + bearer);
    }
    if (body !== null) {
      xhr.setRequestHeader('Content-Type', 'application/x-www-form-urlencoded');
    }
    timer = setTimeout(function () {
      finish({ status: 0, code: 'timeout', message: 'The server took too long to answer.' });
      try { xhr.abort(); } catch (e) { /* already done */ }
    }, timeoutMs);
    xhr.send(body);

    return {
      abort: function () {
        finished = true;
        if (timer) { clearTimeout(timer); }
        xhr.onreadystatechange = noop;
        try { xhr.abort(); } catch (e) { /* already done */ }
      }
    };
  }

  /**
   * Failures worth retrying unchanged: the network, a timeout, the server
   * or a proxy in trouble. Everything else is an answer to act on.
   */
  /** A 429's or 503's `Retry-After` (seconds) in ms; 0 when absent. */
  function retryAfterMs(xhr) {
    var seconds = 0;
    try { seconds = parseInt(xhr.getResponseHeader('Retry-After'), 10); } catch (e) { seconds = 0; }
    return seconds > 0 ? seconds * 1000 : 0;
  }

  function isTransient(err) {
    return err.status === 0 || err.status >= 500 || err.status === 408 || err.status === 429;
  }

  /** Delay before retry number `attempt` (0-based): exponential, capped, jittered. */
  function backoffDelay(attempt) {
    var ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, Math.min(attempt, 16)));
    // "Equal jitter": at least half the ceiling, so retries still back off,
    // plus a random half, so clients cut off together don't return together.
    return Math.round(ceiling / 2 + Math.random() * ceiling / 2);
  }

  // ---- The connection loop -------------------------------------------------

  /** Cancels whatever the loop is doing; its callbacks will find loopGen moved on. */
  function stopLoop() {
    var S = P.session;
    S.loopGen++;
    if (S.inflight) { S.inflight.abort(); S.inflight = null; }
    if (S.retryTimer) { clearTimeout(S.retryTimer); S.retryTimer = null; }
    S.retryFn = null;
  }

  /** Runs `step` again after a backoff delay, showing "reconnecting". */
  function retryLater(step) {
    var S = P.session;
    var gen = S.loopGen;
    var delay = backoffDelay(S.attempt);
    S.attempt++;
    S.stage = 'wait';
    S.retryFn = step;
    P.setConnection('reconnecting');
    S.retryTimer = setTimeout(function () {
      if (!P.alive(S, gen)) { return; }
      S.retryTimer = null;
      S.retryFn = null;
      step();
    }, delay);
  }

  /** Clicking "reconnecting" skips the rest of the wait. */
  function retryNow() {
    var S = P.session;
    if (!S || !S.retryTimer || !S.retryFn) { return; }
    var step = S.retryFn;
    clearTimeout(S.retryTimer);
    S.retryTimer = null;
    S.retryFn = null;
    step();
  }

  /**
   * The long poll. After a failure we poll again with the same cursor: the
   * server re-delivers the same events, so nothing is lost or doubled.
   */
  function poll() {
    var S = P.session;
    // Another tab of this browser polls for us all (tabs.js).
    if (!P.tabs.mayPoll()) { S.stage = 'follow'; return; }
    var gen = ++S.loopGen;
    S.stage = 'poll';
    S.inflight = request('POST', '/poll', { token: S.token, cursor: S.cursor },
      S.pollTimeoutMs + POLL_SLACK_MS, function (err, data) {
        if (!P.alive(S, gen)) { return; }
        S.inflight = null;
        if (!err) {
          S.attempt = 0;
          P.setConnection('connected');
          var events = data.events || [];
          // Move the cursor first: an event that breaks the page must not
          // make us fetch it again forever.
          S.cursor = data.cursor;
          P.tabs.publish(S, data);
          for (var i = 0; i < events.length; i++) {
            try {
              P.handleEvent(events[i]);
            } catch (e) {
              if (window.console && window.console.error) { window.console.error('parlor: event failed', events[i], e); }
            }
          }
          if (events.length) { P.renderAll(); }
          P.kickOutbox();
          poll();
        } else if (err.code === 'unknown_client') {
          rejoin();
        } else if (err.code === 'cursor_expired' || err.code === 'invalid_cursor') {
          resync();
        } else {
          retryLater(poll);
        }
      });
  }

  /**
   * The server does not know our token any more (it restarted, or swept us
   * while the computer slept): /join again with the name and password kept
   * in memory. Only if they stop working do we ask the person.
   */
  function rejoin() {
    var S = P.session;
    if (!S.password) {
      // A tab that resumed the session of another never saw the password.
      signedOut('please enter your password again.');
      return;
    }
    var gen = ++S.loopGen;
    S.stage = 'rejoin';
    P.setConnection('reconnecting');
    S.inflight = request('POST', '/join', { name: S.name, password: S.password }, P.REQUEST_TIMEOUT_MS,
      function (err, data) {
        if (!P.alive(S, gen)) { return; }
        S.inflight = null;
        if (!err) {
          S.attempt = 0;
          S.epoch++;
          S.maxMsgId = 0;
          var chosenStatus = S.myStatus;
          P.applySnapshot(data, 'rejoin');
          P.tabs.share(S);
          // A server that forgot us also forgot that we were busy or away.
          if (chosenStatus !== S.myStatus) { P.setStatus(chosenStatus); }
          P.setConnection('connected');
          P.kickOutbox();
          poll();
        } else if (isTransient(err)) {
          retryLater(rejoin);
        } else {
          // The password no longer works (an ephemeral server forgot the
          // name and someone else took it) or the name became invalid.
          signedOut(P.describeJoinError(err));
        }
      });
  }

  /** The session cannot go on: every tab sharing it goes to the login form. */
  function signedOut(why) {
    var S = P.session;
    P.tabs.forget(S);
    P.endSession();
    P.showLogin(S.name, 'You were signed out: ' + why);
  }

  /** We fell too far behind (410): take a fresh snapshot, then reload history. */
  function resync() {
    var S = P.session;
    var gen = ++S.loopGen;
    S.stage = 'resync';
    P.setConnection('reconnecting');
    S.inflight = request('GET', '/sync', { token: S.token }, P.REQUEST_TIMEOUT_MS, function (err, data) {
      if (!P.alive(S, gen)) { return; }
      S.inflight = null;
      if (!err) {
        S.attempt = 0;
        P.applySnapshot(data, 'sync');
        P.tabs.publishResync(S);
        P.setConnection('connected');
        P.kickOutbox();
        poll();
      } else if (err.code === 'unknown_client' && P.tabs.mayRejoin()) {
        rejoin();
      } else {
        retryLater(resync);
      }
    });
  }

  P.encodeForm = encodeForm;
  P.request = request;
  P.isTransient = isTransient;
  P.backoffDelay = backoffDelay;
  P.stopLoop = stopLoop;
  P.retryNow = retryNow;
  P.poll = poll;
  P.rejoin = rejoin;
  P.resync = resync;
}(window.parlor));
