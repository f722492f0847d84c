/*
 * parlor web client.
 *
 * Written for the browsers parlor exists for: old ones, behind networks where
 * WebSocket does not get through. So this file is ES5 only (var, function,
 * no Promise), talks to the server with XMLHttpRequest alone, and needs no
 * build step and no library. tests/browser/es5.test.js keeps it that way.
 *
 * # Layout of this file
 *   - DOM and HTTP helpers: el(), on(), request()
 *   - Session state (S): who we are, the cursor, users, conversations
 *   - The connection loop: poll -> events; on failure back off, rejoin or resync
 *   - Events: presence, conversation_added/removed, message, member_*, notification
 *   - Conversations: one pane and one tab each; history + live messages merged
 *   - Sending: an outbox with client_msg_id, so a retried send never doubles
 *   - Views: login form, sidebar (people, rooms), tabs, notices, title
 *
 * # Safety rule
 *   Text that came from a user (names, messages, room names, notification
 *   data) only ever reaches the page through document.createTextNode or an
 *   attribute set with setAttribute: never innerHTML.
 */
(function () {
  'use strict';

  // ---- Tunables ------------------------------------------------------------

  /** First retry delay after a failed poll or send; doubles each failure. */
  var BACKOFF_BASE_MS = 500;
  /** Retry delays never exceed this, so a restarted server is found quickly. */
  var BACKOFF_CAP_MS = 10000;
  /** Extra time the client waits for a parked poll beyond the server's hold. */
  var POLL_SLACK_MS = 10000;
  /** Time limit for every request that is not a poll. */
  var REQUEST_TIMEOUT_MS = 15000;
  /** Messages asked for when a conversation opens (server max is 200). */
  var HISTORY_LIMIT = 50;
  /** Pages of history walked back to close a gap after a resync. */
  var HISTORY_GAP_PAGES = 8;
  /** How long a notice stays up unless closed by hand. */
  var NOTICE_MS = 8000;
  /** Notices shown at once; older ones go first. */
  var NOTICE_MAX = 4;
  /** Distance from the bottom (px) that still counts as "reading the newest". */
  var STICK_PX = 40;
  var APP_TITLE = 'parlor';

  // ---- DOM helpers ---------------------------------------------------------

  function byId(id) { return document.getElementById(id); }

  function noop() {}

  /** addEventListener with the old-IE fallback; handler gets (event). */
  function on(node, type, handler) {
    if (node.addEventListener) {
      node.addEventListener(type, handler, false);
    } else if (node.attachEvent) {
      node.attachEvent('on' + type, function () { return handler.call(node, window.event); });
    }
  }

  function stop(event) {
    if (!event) { return; }
    if (event.preventDefault) { event.preventDefault(); } else { event.returnValue = false; }
  }

  /**
   * Creates an element; `text`, if given, goes in as a text node, which is
   * what keeps user text from ever being parsed as HTML.
   */
  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.appendChild(document.createTextNode(String(text))); }
    return node;
  }

  function clear(node) {
    while (node.firstChild) { node.removeChild(node.firstChild); }
  }

  function setText(node, text) {
    clear(node);
    node.appendChild(document.createTextNode(String(text)));
  }

  function removeNode(node) {
    if (node && node.parentNode) { node.parentNode.removeChild(node); }
  }

  // classList is missing in old browsers; these work on className.
  function hasClass(node, name) {
    return (' ' + node.className + ' ').indexOf(' ' + name + ' ') >= 0;
  }
  function addClass(node, name) {
    if (!hasClass(node, name)) { node.className = node.className ? node.className + ' ' + name : name; }
  }
  function removeClass(node, name) {
    node.className = (' ' + node.className + ' ').replace(' ' + name + ' ', ' ')
      .replace(/^\s+|\s+$/g, '');
  }
  function setClass(node, name, wanted) {
    if (wanted) { addClass(node, name); } else { removeClass(node, name); }
  }

  function trim(s) { return String(s).replace(/^\s+|\s+$/g, ''); }

  function hasOwn(obj, key) { return Object.prototype.hasOwnProperty.call(obj, key); }

  function pad2(n) { return n < 10 ? '0' + n : String(n); }

  function formatTime(ms) {
    var d = new Date(ms);
    return pad2(d.getHours()) + ':' + pad2(d.getMinutes());
  }

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
   * One request to parlor. GET parameters go in the query string; POST bodies
   * are application/x-www-form-urlencoded, which every browser can send.
   * `done(err, body)` is called exactly once. err is
   * {status, code, message}: status 0 means the network failed or the
   * request timed out (we run our own timer: old XHRs have no .timeout).
   * Returns a handle whose abort() drops the request without calling done.
   */
  function request(method, path, params, timeoutMs, done) {
    var xhr = new XMLHttpRequest();
    var query = encodeForm(params || {});
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
          message: (data && data.message) || 'The server answered ' + status + '.'
        });
      }
    };

    xhr.open(method, url, true);
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

  /** Words for a /join failure, shown under the login form. */
  function describeJoinError(err) {
    switch (err.code) {
      case 'bad_credentials':
        return 'Wrong password for that name. (If the name is not yours, pick another one.)';
      case 'invalid_name':
        return 'That name cannot be used. Names are 1 to 32 letters, digits, "_", "-" or ".".';
      case 'invalid_password':
        return 'Please enter a password (at most 256 bytes).';
      case 'network':
      case 'timeout':
        return 'The server cannot be reached right now. Please try again in a moment.';
      default:
        return err.message || 'Something went wrong (' + err.code + ').';
    }
  }

  // ---- Session state -------------------------------------------------------

  /**
   * S is the signed-in session, null while the login form shows. Every
   * asynchronous callback checks that S is still the session it started
   * with, so a reply that arrives after logging out is dropped.
   *
   * The password lives here, in memory, for one reason: to /join again by
   * itself when the server has forgotten this client (restart, sweep). It is
   * never written to localStorage, sessionStorage or a cookie.
   */
  var S = null;

  /** Whether the browser window has focus; drives the unread count in the title. */
  var windowFocused = document.hasFocus ? document.hasFocus() : true;
  /** Messages from others that arrived while the window was not focused. */
  var titleUnread = 0;

  /** A per-page random prefix for client_msg_id: unique across tabs of one user. */
  var pageNonce = (new Date().getTime()).toString(36) + '-' +
    Math.floor(Math.random() * 2176782336).toString(36);
  var sendCounter = 0;

  function newSession(name, password) {
    return {
      name: name,            // what was typed at login, for /join again
      password: password,    // memory only, see above
      user: name,            // the server's spelling of our name
      token: null,
      cursor: null,
      pollTimeoutMs: 25000,
      users: {},             // name -> status, others who are available
      myStatus: 'online',
      convs: {},             // conversation id -> conv (see makeConv)
      order: [],             // conversation ids in tab order
      active: null,          // id of the conversation shown
      // The connection loop does one thing at a time: poll, wait, rejoin or
      // resync. `stage` names it; bumping `loopGen` orphans what was running.
      stage: 'idle',
      loopGen: 0,
      inflight: null,        // the current poll/join/sync request handle
      retryTimer: null,
      retryFn: null,
      attempt: 0,
      // Message ids are global and increase, but an ephemeral server that
      // restarted counts from 1 again. Every /join after the first starts a
      // new epoch; messages sort by (epoch, id) and are deduplicated by
      // (id, at), which a restarted server will not repeat by accident.
      epoch: 0,
      maxMsgId: 0,           // newest message id seen in this epoch
      outbox: [],            // messages typed but not yet stored, in order
      sending: false,
      sendTimer: null,
      sendAttempt: 0,
      historyQueue: [],      // history loads run one at a time (see loadHistory)
      historyBusy: false
    };
  }

  function alive(session, gen) {
    return S === session && (gen === undefined || gen === session.loopGen);
  }

  // ---- Login ---------------------------------------------------------------

  var loginForm = byId('login-form');
  var loginName = byId('login-name');
  var loginPassword = byId('login-password');
  var loginError = byId('login-error');
  var loginSubmit = byId('login-submit');
  var joining = false;

  function showLogin(name, message) {
    document.body.className = 'at-login';
    loginName.value = name || loginName.value;
    loginPassword.value = '';
    setText(loginError, message || '');
    loginSubmit.disabled = false;
    setText(loginSubmit, 'Enter');
    titleUnread = 0;
    updateTitle();
    (loginName.value ? loginPassword : loginName).focus();
  }

  on(loginForm, 'submit', function (event) {
    stop(event);
    if (joining) { return; }
    var name = trim(loginName.value);
    var password = loginPassword.value;
    joining = true;
    loginSubmit.disabled = true;
    setText(loginSubmit, 'Entering\u2026');
    setText(loginError, '');
    // No local checks on name or password: the server's words are the rules.
    request('POST', '/join', { name: name, password: password }, REQUEST_TIMEOUT_MS, function (err, data) {
      joining = false;
      loginSubmit.disabled = false;
      setText(loginSubmit, 'Enter');
      if (err) {
        setText(loginError, describeJoinError(err));
        loginPassword.focus();
        return;
      }
      loginPassword.value = '';
      startSession(name, password, data);
    });
  });

  function startSession(name, password, joinReply) {
    S = newSession(name, password);
    resetChatView();
    document.body.className = 'at-chat';
    applySnapshot(joinReply, 'join');
    setConnection('connected');
    poll();
  }

  function logout() {
    var session = S;
    if (!session) { return; }
    request('POST', '/leave', { token: session.token }, REQUEST_TIMEOUT_MS, noop);
    endSession();
    showLogin(session.name, '');
  }

  function endSession() {
    if (!S) { return; }
    stopLoop();
    if (S.sendTimer) { clearTimeout(S.sendTimer); }
    S = null;
  }

  // Closing the tab ends its client process at once, so others see us go
  // without waiting for the inactivity sweep. Browsers without sendBeacon
  // rely on the sweep.
  on(window, 'pagehide', function () {
    if (!S || !S.token || !navigator.sendBeacon || typeof Blob === 'undefined') { return; }
    try {
      navigator.sendBeacon('/leave', new Blob([encodeForm({ token: S.token })],
        { type: 'application/x-www-form-urlencoded' }));
    } catch (e) { /* best effort */ }
  });

  // ---- Snapshots: /join and /sync ------------------------------------------

  /**
   * Brings the page in line with a /join or /sync reply. `mode` is 'join'
   * (first sign-in), 'rejoin' (the server had forgotten us) or 'sync' (we
   * fell behind the event buffer). Conversations already shown keep their
   * messages; history is loaded again to fill what was missed.
   */
  function applySnapshot(data, mode) {
    var i, id, conv;
    if (data.token) { S.token = data.token; }
    S.user = data.user || S.user;
    S.cursor = data.cursor;
    if (data.poll_timeout_ms) { S.pollTimeoutMs = data.poll_timeout_ms; }

    S.users = {};
    var users = data.users || [];
    for (i = 0; i < users.length; i++) {
      if (users[i].name === S.user) {
        S.myStatus = users[i].status;
      } else {
        S.users[users[i].name] = users[i].status;
      }
    }
    setText(byId('me-name'), S.user);
    renderMyStatus();

    var present = {};
    var convsIn = data.conversations || [];
    for (i = 0; i < convsIn.length; i++) {
      present[convsIn[i].id] = true;
      conv = S.convs[convsIn[i].id];
      if (conv) {
        updateConv(conv, convsIn[i]);
        if (mode === 'rejoin') {
          // Ids of the old epoch mean nothing to the server now.
          conv.hasEarlier = false;
          renderEarlier(conv);
        }
        loadHistory(conv, true);
      } else {
        ensureConv(convsIn[i]);
      }
    }

    // Conversations we show that the server no longer has for us.
    var gone = [];
    for (i = 0; i < S.order.length; i++) {
      if (!present[S.order[i]]) { gone.push(S.order[i]); }
    }
    for (i = 0; i < gone.length; i++) {
      id = gone[i];
      conv = S.convs[id];
      if (mode === 'rejoin' && conv.kind === 'room') {
        // The server forgot us (restart or sweep), we never left: join again.
        restoreRoom(conv);
      } else if (mode === 'rejoin' && conv.kind === 'dialog' && hasOwn(S.users, conv.peer)) {
        restoreDialog(conv);
      } else {
        removeConv(id, conv.kind === 'dialog' ? 'user_offline' : 'gone');
      }
    }

    if (!S.active || !S.convs[S.active]) {
      activate(S.convs.lobby ? 'lobby' : S.order[0], false);
    }
    renderAll();
  }

  function restoreRoom(conv) {
    var session = S;
    request('POST', '/rooms/join', { token: S.token, name: conv.name || conv.id }, REQUEST_TIMEOUT_MS,
      function (err, data) {
        if (!alive(session)) { return; }
        if (err) {
          removeConv(conv.id, 'gone');
          return;
        }
        if (data.conversation.id !== conv.id) { removeConv(conv.id, 'gone'); }
        var fresh = ensureConv(data.conversation);
        if (fresh === conv) { loadHistory(conv, true); }
      });
  }

  function restoreDialog(conv) {
    var session = S;
    request('POST', '/dialog', { token: S.token, 'with': conv.peer }, REQUEST_TIMEOUT_MS, function (err, data) {
      if (!alive(session)) { return; }
      if (err) {
        removeConv(conv.id, 'user_offline');
        return;
      }
      if (data.conversation.id !== conv.id) { removeConv(conv.id, 'user_offline'); }
      var fresh = ensureConv(data.conversation);
      if (fresh === conv) { loadHistory(conv, true); }
    });
  }

  // ---- The connection loop -------------------------------------------------

  /** Cancels whatever the loop is doing; its callbacks will find loopGen moved on. */
  function stopLoop() {
    S.loopGen++;
    if (S.inflight) { S.inflight.abort(); S.inflight = null; }
    if (S.retryTimer) { clearTimeout(S.retryTimer); S.retryTimer = null; }
    S.retryFn = null;
  }

  /** Runs `step` again after a backoff delay, showing "reconnecting". */
  function retryLater(step) {
    var session = S;
    var gen = S.loopGen;
    var delay = backoffDelay(S.attempt);
    S.attempt++;
    S.stage = 'wait';
    S.retryFn = step;
    setConnection('reconnecting');
    S.retryTimer = setTimeout(function () {
      if (!alive(session, gen)) { return; }
      S.retryTimer = null;
      S.retryFn = null;
      step();
    }, delay);
  }

  /** Clicking "reconnecting" skips the rest of the wait. */
  function retryNow() {
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
    var session = S;
    var gen = ++S.loopGen;
    S.stage = 'poll';
    S.inflight = request('POST', '/poll', { token: S.token, cursor: S.cursor },
      S.pollTimeoutMs + POLL_SLACK_MS, function (err, data) {
        if (!alive(session, gen)) { return; }
        S.inflight = null;
        if (!err) {
          S.attempt = 0;
          setConnection('connected');
          var events = data.events || [];
          // Move the cursor first: an event that breaks the page must not
          // make us fetch it again forever.
          S.cursor = data.cursor;
          for (var i = 0; i < events.length; i++) {
            try {
              handleEvent(events[i]);
            } catch (e) {
              if (window.console && window.console.error) { window.console.error('parlor: event failed', events[i], e); }
            }
          }
          if (events.length) { renderAll(); }
          kickOutbox();
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
    var session = S;
    var gen = ++S.loopGen;
    S.stage = 'rejoin';
    setConnection('reconnecting');
    S.inflight = request('POST', '/join', { name: S.name, password: S.password }, REQUEST_TIMEOUT_MS,
      function (err, data) {
        if (!alive(session, gen)) { return; }
        S.inflight = null;
        if (!err) {
          S.attempt = 0;
          S.epoch++;
          S.maxMsgId = 0;
          var chosenStatus = S.myStatus;
          applySnapshot(data, 'rejoin');
          // A server that forgot us also forgot that we were busy or away.
          if (chosenStatus !== S.myStatus) { setStatus(chosenStatus); }
          setConnection('connected');
          kickOutbox();
          poll();
        } else if (isTransient(err)) {
          retryLater(rejoin);
        } else {
          // The password no longer works (an ephemeral server forgot the
          // name and someone else took it) or the name became invalid.
          var name = S.name;
          endSession();
          showLogin(name, 'You were signed out: ' + describeJoinError(err));
        }
      });
  }

  /** We fell too far behind (410): take a fresh snapshot, then reload history. */
  function resync() {
    var session = S;
    var gen = ++S.loopGen;
    S.stage = 'resync';
    setConnection('reconnecting');
    S.inflight = request('GET', '/sync', { token: S.token }, REQUEST_TIMEOUT_MS, function (err, data) {
      if (!alive(session, gen)) { return; }
      S.inflight = null;
      if (!err) {
        S.attempt = 0;
        applySnapshot(data, 'sync');
        setConnection('connected');
        kickOutbox();
        poll();
      } else if (err.code === 'unknown_client') {
        rejoin();
      } else {
        retryLater(resync);
      }
    });
  }

  // ---- Events --------------------------------------------------------------

  function handleEvent(ev) {
    switch (ev.type) {
      case 'presence': onPresence(ev); break;
      case 'conversation_added': onConversationAdded(ev); break;
      case 'conversation_removed': removeConv(ev.conversation, ev.reason); break;
      case 'message': onMessage(ev); break;
      case 'member_joined': onMember(ev, true); break;
      case 'member_left': onMember(ev, false); break;
      case 'notification': showNotice(describeNotification(ev.data), 'info'); break;
      default: break; // newer servers may add event types; ignore them
    }
  }

  function onPresence(ev) {
    if (ev.user === S.user) {
      // Our own status, perhaps set from another tab.
      if (ev.status !== 'offline') { S.myStatus = ev.status; renderMyStatus(); }
      return;
    }
    if (ev.status === 'offline') {
      delete S.users[ev.user];
    } else {
      S.users[ev.user] = ev.status;
    }
  }

  function onConversationAdded(ev) {
    var conv = S.convs[ev.conversation.id];
    if (conv) {
      updateConv(conv, ev.conversation);
      conv.closed = false;
    } else {
      ensureConv(ev.conversation);
    }
  }

  function onMessage(ev) {
    var conv = S.convs[ev.conversation];
    if (!conv) { return; } // not ours (any more): the server will not send these
    addMessage(conv, ev, false);
  }

  function onMember(ev, joined) {
    var conv = S.convs[ev.conversation];
    if (!conv) { return; }
    var members = conv.members;
    var at = -1;
    for (var i = 0; i < members.length; i++) { if (members[i] === ev.user) { at = i; } }
    if (joined && at < 0) { members.push(ev.user); }
    if (!joined && at >= 0) { members.splice(at, 1); }
    renderPaneHead(conv);
    // The lobby's membership is presence, already shown in the people list.
    if (conv.id !== 'lobby' && ev.user !== S.user) {
      addSystemLine(conv, ev.user + (joined ? ' joined the room' : ' left the room'));
    }
  }

  function describeNotification(data) {
    if (typeof data === 'string') { return data; }
    if (data && typeof data.text === 'string') { return data.text; }
    if (data && typeof data.message === 'string') { return data.message; }
    try { return JSON.stringify(data); } catch (e) { return String(data); }
  }

  // ---- Conversations -------------------------------------------------------

  /**
   * A conversation on the page: the server's object plus its pane, tab and
   * the messages shown. `entries` is sorted by (epoch, id) and mirrors the
   * children of `list`; `seen` holds "id:at" of every message shown.
   */
  function makeConv(c) {
    var conv = {
      id: c.id,
      kind: c.kind,
      name: c.name || c.id,
      members: (c.members || []).slice(0),
      peer: null,
      entries: [],
      seen: {},
      unread: 0,
      closed: false,     // a dialog tab closed by hand; reopens on a new message
      stick: true,       // scrolled to the bottom: follow new messages
      hasEarlier: false, // the first history page was full: offer older ones
      oldestId: null
    };
    conv.peer = dialogPeer(conv);
    buildPane(conv);
    return conv;
  }

  function dialogPeer(conv) {
    if (conv.kind !== 'dialog') { return null; }
    for (var i = 0; i < conv.members.length; i++) {
      if (conv.members[i] !== S.user) { return conv.members[i]; }
    }
    // Members missing: the id is "dialog:A:B".
    var parts = conv.id.split(':');
    return parts[1] === S.user ? parts[2] : parts[1];
  }

  function updateConv(conv, c) {
    if (c.members) { conv.members = c.members.slice(0); }
    if (c.name) { conv.name = c.name; }
    conv.peer = dialogPeer(conv);
    renderPaneHead(conv);
  }

  /** Create-or-get: the same id never gets a second pane. */
  function ensureConv(c) {
    var conv = S.convs[c.id];
    if (conv) {
      updateConv(conv, c);
      return conv;
    }
    conv = makeConv(c);
    S.convs[c.id] = conv;
    // The lobby first, then in the order they came.
    if (c.id === 'lobby') { S.order.unshift(c.id); } else { S.order.push(c.id); }
    byId('panes').appendChild(conv.pane);
    loadHistory(conv, false);
    renderAll();
    return conv;
  }

  var REMOVAL_WORDS = {
    user_offline: function (conv) { return conv.peer + ' went offline; your conversation was closed.'; },
    left: function (conv) { return 'You left ' + convTitle(conv) + '.'; },
    gone: function (conv) { return convTitle(conv) + ' is no longer available.'; }
  };

  /** The server tore a conversation down (or we left it): drop it with a notice. */
  function removeConv(id, reason) {
    var conv = S.convs[id];
    if (!conv) { return; }
    delete S.convs[id];
    for (var i = 0; i < S.order.length; i++) {
      if (S.order[i] === id) { S.order.splice(i, 1); break; }
    }
    removeNode(conv.pane);
    // Unsent messages for it cannot be delivered any more.
    for (var j = S.outbox.length - 1; j >= 0; j--) {
      if (S.outbox[j].conv === id) { S.outbox.splice(j, 1); }
    }
    var words = REMOVAL_WORDS[reason] || REMOVAL_WORDS.gone;
    showNotice(words(conv), 'warn');
    if (S.active === id) {
      S.active = null;
      activate(S.convs.lobby ? 'lobby' : S.order[0], false);
    }
    renderAll();
  }

  function convTitle(conv) {
    if (conv.kind === 'dialog') { return conv.peer; }
    if (conv.id === 'lobby') { return 'lobby'; }
    return '#' + conv.name;
  }

  /** Shows a conversation's pane; `focusPrompt` puts the caret in its prompt. */
  function activate(id, focusPrompt) {
    var conv = id && S.convs[id];
    if (!conv) { return; }
    conv.closed = false;
    S.active = id;
    for (var i = 0; i < S.order.length; i++) {
      var other = S.convs[S.order[i]];
      setClass(other.pane, 'active', other === conv);
    }
    conv.unread = 0;
    if (conv.stick) { scrollToBottom(conv); }
    closeSidebar();
    renderAll();
    if (focusPrompt) {
      try { conv.input.focus(); } catch (e) { /* hidden in a very old browser */ }
    }
  }

  /** Create-or-focus the dialog with `name`. */
  function openDialogWith(name) {
    for (var i = 0; i < S.order.length; i++) {
      var conv = S.convs[S.order[i]];
      if (conv.kind === 'dialog' && conv.peer === name) {
        activate(conv.id, true);
        return;
      }
    }
    var session = S;
    request('POST', '/dialog', { token: S.token, 'with': name }, REQUEST_TIMEOUT_MS, function (err, data) {
      if (!alive(session)) { return; }
      if (err) {
        showNotice(err.code === 'unknown_user' ? name + ' is not online any more.'
          : 'Could not open a conversation with ' + name + ': ' + err.message, 'warn');
        return;
      }
      activate(ensureConv(data.conversation).id, true);
    });
  }

  function joinRoom(name) {
    var session = S;
    request('POST', '/rooms/join', { token: S.token, name: name }, REQUEST_TIMEOUT_MS, function (err, data) {
      if (!alive(session)) { return; }
      if (err) {
        showNotice(err.code === 'invalid_name'
          ? 'Room names are 1 to 32 letters, digits, "_", "-" or ".".'
          : 'Could not join ' + name + ': ' + err.message, 'warn');
        return;
      }
      byId('room-name').value = '';
      activate(ensureConv(data.conversation).id, true);
    });
  }

  function leaveRoom(conv) {
    var session = S;
    request('POST', '/rooms/leave', { token: S.token, conversation: conv.id }, REQUEST_TIMEOUT_MS,
      function (err) {
        if (!alive(session)) { return; }
        if (err) {
          showNotice('Could not leave ' + convTitle(conv) + ': ' + err.message, 'warn');
          return;
        }
        // The conversation_removed event will do the same; whichever comes first wins.
        removeConv(conv.id, 'left');
      });
  }

  // ---- Messages ------------------------------------------------------------

  /** Sort order of entries: epoch first (see newSession), then message id. */
  function entryAfter(a, b) {
    return a.epoch > b.epoch || (a.epoch === b.epoch && a.id > b.id);
  }

  function insertEntry(conv, entry) {
    var entries = conv.entries;
    // New messages nearly always go last, so search from the end.
    var i = entries.length;
    while (i > 0 && entryAfter(entries[i - 1], entry)) { i--; }
    conv.list.insertBefore(entry.node, i < entries.length ? entries[i].node : null);
    entries.splice(i, 0, entry);
  }

  /**
   * Shows one message unless it is shown already: history and live events
   * overlap, and a re-delivered poll repeats events. Returns true if new.
   */
  function addMessage(conv, m, fromHistory) {
    var key = m.id + ':' + m.at;
    if (conv.seen[key]) { return false; }
    conv.seen[key] = true;
    if (m.id > S.maxMsgId) { S.maxMsgId = m.id; }

    var mine = m.from === S.user;
    var node = el('li', mine ? 'msg mine' : 'msg from-' + senderColour(m.from));
    node.setAttribute('data-id', String(m.id));
    var head = el('div', 'msg-head');
    head.appendChild(el('span', 'msg-from', m.from));
    var time = el('span', 'msg-time', formatTime(m.at));
    time.setAttribute('title', new Date(m.at).toString());
    head.appendChild(time);
    node.appendChild(head);
    node.appendChild(el('div', 'msg-text', m.text));

    var wasStuck = conv.stick;
    insertEntry(conv, { epoch: S.epoch, id: m.id, node: node });
    settleOutbox(conv, m);
    if (wasStuck || (mine && !fromHistory)) { scrollToBottom(conv); }

    if (!fromHistory && !mine) {
      if (conv.closed) { conv.closed = false; }
      if (conv.id !== S.active) { conv.unread++; }
      if (!windowFocused) { titleUnread++; updateTitle(); }
    }
    return true;
  }

  /** Each sender keeps one of six colours, so a busy room is easy to follow. */
  function senderColour(name) {
    var h = 0;
    for (var i = 0; i < name.length; i++) { h = (h * 31 + name.charCodeAt(i)) % 9973; }
    return h % 6;
  }

  /**
   * A line like "bob joined the room". It has no message id; it sorts just
   * after the newest message seen anywhere (ids are global), which is when
   * it happened as far as this page can tell.
   */
  function addSystemLine(conv, text) {
    var node = el('li', 'system', text);
    insertEntry(conv, { epoch: S.epoch, id: S.maxMsgId + 0.5, node: node });
    if (conv.stick) { scrollToBottom(conv); }
  }

  function scrollToBottom(conv) {
    conv.scroller.scrollTop = conv.scroller.scrollHeight;
    conv.stick = true;
  }

  /**
   * Loads recent history for a conversation. History requests run one at a
   * time: old browsers allow two connections per host, one of which the
   * poll holds.
   *
   * `fillGap`: the conversation already shows messages (we resynced or
   * rejoined), so walk back page by page until a page overlaps what is
   * shown, or history ends: otherwise messages missed while away could
   * leave a silent hole.
   */
  function loadHistory(conv, fillGap, before, pagesLeft) {
    if (pagesLeft === undefined) { pagesLeft = HISTORY_GAP_PAGES; }
    var session = S;
    var epoch = S.epoch;
    queueHistory(function (next) {
      if (!alive(session) || S.convs[conv.id] !== conv || S.epoch !== epoch) { next(); return; }
      var params = { token: S.token, conversation: conv.id, limit: HISTORY_LIMIT };
      if (before !== undefined) { params.before = before; }
      request('GET', '/history', params, REQUEST_TIMEOUT_MS, function (err, data) {
        next();
        if (!alive(session) || S.convs[conv.id] !== conv || S.epoch !== epoch) { return; }
        if (err) {
          // Transient: try again later. unknown_client: the poll will notice
          // and rejoin, which loads history again. not_member etc.: nothing to show.
          if (isTransient(err) && pagesLeft > 0) {
            setTimeout(function () { loadHistory(conv, fillGap, before, pagesLeft - 1); }, backoffDelay(1));
          }
          return;
        }
        var msgs = data.messages || [];
        var overlap = false;
        var heightBefore = conv.scroller.scrollHeight;
        var topBefore = conv.scroller.scrollTop;
        for (var i = 0; i < msgs.length; i++) {
          if (!addMessage(conv, msgs[i], true)) { overlap = true; }
        }
        if (!conv.stick && before !== undefined) {
          // Older messages went in above: keep the reader's place.
          conv.scroller.scrollTop = topBefore + (conv.scroller.scrollHeight - heightBefore);
        }
        var full = msgs.length >= HISTORY_LIMIT;
        if (fillGap) {
          if (full && !overlap && pagesLeft > 1) {
            loadHistory(conv, true, msgs[0].id, pagesLeft - 1);
          }
          return;
        }
        // A first page or an "earlier messages" page: a full page means
        // there may be more before it.
        if (msgs.length) { conv.oldestId = msgs[0].id; }
        conv.hasEarlier = full;
        renderEarlier(conv);
      });
    });
  }

  function queueHistory(job) {
    S.historyQueue.push(job);
    runHistoryQueue(S);
  }

  function runHistoryQueue(session) {
    if (session.historyBusy || !session.historyQueue.length) { return; }
    session.historyBusy = true;
    var job = session.historyQueue.shift();
    job(function () {
      session.historyBusy = false;
      runHistoryQueue(session);
    });
  }

  // ---- Sending -------------------------------------------------------------

  /**
   * A message typed and sent goes into the outbox and shows below the
   * conversation as "sending". It is not a copy of the message: the message
   * itself appears when the server's event brings it back, the same in every
   * tab. The outbox item goes away once the stored message is shown.
   * Items are sent one at a time, in order, each with its own client_msg_id,
   * so a retry after a lost reply is stored once.
   */
  function queueSend(conv, text) {
    sendCounter++;
    var item = {
      conv: conv.id,
      text: text,
      clientMsgId: pageNonce + '-' + sendCounter,
      id: null,      // the server's id, once stored
      at: null,
      node: el('li', 'msg mine pending')
    };
    var head = el('div', 'msg-head');
    head.appendChild(el('span', 'msg-from', S.user));
    item.stateNode = el('span', 'msg-time', 'sending\u2026');
    head.appendChild(item.stateNode);
    item.node.appendChild(head);
    item.node.appendChild(el('div', 'msg-text', text));
    conv.outboxList.appendChild(item.node);
    scrollToBottom(conv);
    S.outbox.push(item);
    flushOutbox();
  }

  /** Retry waiting sends now, e.g. because a poll just got through. */
  function kickOutbox() {
    if (S.sendTimer) {
      clearTimeout(S.sendTimer);
      S.sendTimer = null;
    }
    flushOutbox();
  }

  function flushOutbox() {
    if (!S || S.sending || S.sendTimer) { return; }
    var item = null;
    for (var i = 0; i < S.outbox.length; i++) {
      if (S.outbox[i].id === null) { item = S.outbox[i]; break; }
    }
    if (!item) { return; }
    if (S.stage === 'rejoin') { return; } // kickOutbox runs when it is done
    var session = S;
    var token = S.token;
    S.sending = true;
    request('POST', '/send', {
      token: token,
      conversation: item.conv,
      text: item.text,
      client_msg_id: item.clientMsgId
    }, REQUEST_TIMEOUT_MS, function (err, data) {
      if (!alive(session)) { return; }
      S.sending = false;
      if (!err) {
        S.sendAttempt = 0;
        item.id = data.id;
        item.at = data.at;
        var conv = S.convs[item.conv];
        if (conv && conv.seen[item.id + ':' + item.at]) { dropOutboxItem(item); }
        flushOutbox();
        return;
      }
      if (isTransient(err) || err.code === 'unknown_client') {
        setText(item.stateNode, 'waiting for connection\u2026');
        addClass(item.node, 'waiting');
        if (err.code === 'unknown_client' && token === S.token && S.stage !== 'rejoin') {
          // Our client is gone: rejoin now rather than wait for the poll.
          stopLoop();
          rejoin();
          return;
        }
        if (token !== S.token) { flushOutbox(); return; } // sent with an old token: retry at once
        S.sendTimer = setTimeout(function () {
          if (!alive(session)) { return; }
          S.sendTimer = null;
          flushOutbox();
        }, backoffDelay(S.sendAttempt++));
        return;
      }
      // A real refusal (too long, not a member any more...): give the text
      // back to the person instead of losing it.
      dropOutboxItem(item);
      var target = S.convs[item.conv];
      if (target && !target.input.value) { target.input.value = item.text; }
      showNotice('Message not sent: ' + (err.code === 'invalid_text'
        ? 'messages are 1 to 4096 bytes long.' : err.message), 'warn');
      flushOutbox();
    });
  }

  /** The stored message `m` is now shown: its outbox item has done its job. */
  function settleOutbox(conv, m) {
    for (var i = 0; i < S.outbox.length; i++) {
      var item = S.outbox[i];
      if (item.conv !== conv.id) { continue; }
      if ((m.client_msg_id && m.client_msg_id === item.clientMsgId && m.from === S.user) ||
          (item.id === m.id && item.at === m.at)) {
        dropOutboxItem(item);
        return;
      }
    }
  }

  function dropOutboxItem(item) {
    for (var i = 0; i < S.outbox.length; i++) {
      if (S.outbox[i] === item) { S.outbox.splice(i, 1); break; }
    }
    removeNode(item.node);
  }

  // ---- Panes ---------------------------------------------------------------

  function buildPane(conv) {
    var pane = el('div', 'pane');
    pane.setAttribute('data-conv', conv.id);
    pane.setAttribute('role', 'tabpanel');

    var head = el('div', 'pane-head');
    conv.titleNode = el('h2', 'pane-title');
    conv.subNode = el('div', 'pane-sub');
    head.appendChild(conv.titleNode);
    head.appendChild(conv.subNode);
    if (conv.kind === 'room' && conv.id !== 'lobby') {
      var leave = el('button', 'leave quiet', 'Leave room');
      leave.setAttribute('type', 'button');
      on(leave, 'click', function () { leaveRoom(conv); });
      head.appendChild(leave);
    }
    pane.appendChild(head);

    var scroller = el('div', 'scroller');
    conv.earlierNode = el('button', 'earlier quiet', 'Show earlier messages');
    conv.earlierNode.setAttribute('type', 'button');
    conv.earlierNode.style.display = 'none';
    on(conv.earlierNode, 'click', function () {
      conv.hasEarlier = false;
      renderEarlier(conv);
      if (conv.oldestId !== null) { loadHistory(conv, false, conv.oldestId, 1); }
    });
    scroller.appendChild(conv.earlierNode);
    conv.list = el('ul', 'messages');
    scroller.appendChild(conv.list);
    conv.outboxList = el('ul', 'outbox');
    scroller.appendChild(conv.outboxList);
    on(scroller, 'scroll', function () {
      conv.stick = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < STICK_PX;
    });
    conv.scroller = scroller;
    pane.appendChild(scroller);

    var form = el('form', 'prompt');
    form.setAttribute('action', '#');
    conv.input = el('input', 'prompt-input');
    conv.input.setAttribute('type', 'text');
    conv.input.setAttribute('autocomplete', 'off');
    conv.input.setAttribute('maxlength', '4096');
    conv.input.setAttribute('aria-label', 'Message');
    var send = el('button', 'send', 'Send');
    send.setAttribute('type', 'submit');
    form.appendChild(conv.input);
    form.appendChild(send);
    // Enter in a one-line input submits the form in every browser.
    on(form, 'submit', function (event) {
      stop(event);
      var text = conv.input.value;
      if (!trim(text)) { return; }
      conv.input.value = '';
      queueSend(conv, text);
      conv.input.focus();
    });
    pane.appendChild(form);

    conv.pane = pane;
    renderPaneHead(conv);
  }

  function renderPaneHead(conv) {
    if (!conv.titleNode) { return; }
    setText(conv.titleNode, convTitle(conv));
    var sub;
    if (conv.kind === 'dialog') {
      var status = S.users[conv.peer];
      sub = status ? 'Private conversation \u00b7 ' + status : 'Private conversation';
    } else if (conv.id === 'lobby') {
      sub = 'Everyone who is here';
    } else {
      sub = conv.members.length + (conv.members.length === 1 ? ' member: ' : ' members: ') +
        conv.members.join(', ');
    }
    setText(conv.subNode, sub);
    if (conv.input) { conv.input.setAttribute('placeholder', 'Message ' + convTitle(conv)); }
  }

  function renderEarlier(conv) {
    conv.earlierNode.style.display = conv.hasEarlier ? '' : 'none';
  }

  // ---- Sidebar, tabs, status, title ----------------------------------------

  function renderAll() {
    if (!S) { return; }
    renderUsers();
    renderRooms();
    renderTabs();
    for (var i = 0; i < S.order.length; i++) {
      var conv = S.convs[S.order[i]];
      if (conv.kind === 'dialog') { renderPaneHead(conv); }
    }
  }

  function sortedNames(obj) {
    var names = [];
    for (var k in obj) { if (hasOwn(obj, k)) { names.push(k); } }
    names.sort(function (a, b) {
      var x = a.toLowerCase();
      var y = b.toLowerCase();
      return x < y ? -1 : (x > y ? 1 : 0);
    });
    return names;
  }

  function dialogWith(name) {
    for (var i = 0; i < S.order.length; i++) {
      var conv = S.convs[S.order[i]];
      if (conv.kind === 'dialog' && conv.peer === name) { return conv; }
    }
    return null;
  }

  function badge(count) {
    var node = el('span', 'badge', count > 99 ? '99+' : count);
    node.setAttribute('title', count + ' unread');
    return node;
  }

  function renderUsers() {
    var list = byId('user-list');
    clear(list);
    var names = sortedNames(S.users);
    for (var i = 0; i < names.length; i++) {
      list.appendChild(userItem(names[i], S.users[names[i]]));
    }
    setText(byId('user-count'), names.length ? String(names.length) : '');
    byId('no-users').style.display = names.length ? 'none' : '';
  }

  function userItem(name, status) {
    var item = el('li', 'user');
    item.setAttribute('data-user', name);
    item.setAttribute('data-status', status);
    var button = el('button', 'side-item');
    button.setAttribute('type', 'button');
    button.setAttribute('title', 'Talk with ' + name + ' (' + status + ')');
    button.appendChild(el('span', 'dot dot-' + status));
    button.appendChild(el('span', 'side-name', name));
    if (status !== 'online') { button.appendChild(el('span', 'user-status', status)); }
    var conv = dialogWith(name);
    if (conv && conv.unread) { button.appendChild(badge(conv.unread)); }
    setClass(item, 'current', !!(conv && conv.id === S.active));
    on(button, 'click', function () { openDialogWith(name); });
    item.appendChild(button);
    return item;
  }

  function renderRooms() {
    var list = byId('room-list');
    clear(list);
    for (var i = 0; i < S.order.length; i++) {
      var conv = S.convs[S.order[i]];
      if (conv.kind !== 'room') { continue; }
      list.appendChild(roomItem(conv));
    }
  }

  function roomItem(conv) {
    var item = el('li', 'room');
    item.setAttribute('data-conv', conv.id);
    var button = el('button', 'side-item');
    button.setAttribute('type', 'button');
    button.appendChild(el('span', 'hash', conv.id === 'lobby' ? '\u2302' : '#'));
    button.appendChild(el('span', 'side-name', conv.id === 'lobby' ? 'lobby' : conv.name));
    if (conv.unread) { button.appendChild(badge(conv.unread)); }
    setClass(item, 'current', conv.id === S.active);
    on(button, 'click', function () { activate(conv.id, true); });
    item.appendChild(button);
    return item;
  }

  function renderTabs() {
    var tabs = byId('tabs');
    clear(tabs);
    for (var i = 0; i < S.order.length; i++) {
      var conv = S.convs[S.order[i]];
      if (conv.closed && conv.id !== S.active) { continue; }
      tabs.appendChild(tabItem(conv));
    }
  }

  function tabItem(conv) {
    var tab = el('div', 'tab' + (conv.id === S.active ? ' active' : '') + (conv.unread ? ' has-unread' : ''));
    tab.setAttribute('data-conv', conv.id);
    var open = el('button', 'tab-open');
    open.setAttribute('type', 'button');
    open.setAttribute('role', 'tab');
    open.setAttribute('aria-selected', conv.id === S.active ? 'true' : 'false');
    if (conv.kind === 'dialog') {
      open.appendChild(el('span', 'dot dot-' + (S.users[conv.peer] || 'offline')));
    }
    open.appendChild(el('span', 'tab-name', convTitle(conv)));
    if (conv.unread) { open.appendChild(badge(conv.unread)); }
    on(open, 'click', function () { activate(conv.id, true); });
    tab.appendChild(open);
    if (conv.kind === 'dialog') {
      // A dialog cannot be left, only hidden; a new message brings it back.
      var close = el('button', 'tab-close', '\u00d7');
      close.setAttribute('type', 'button');
      close.setAttribute('title', 'Close');
      close.setAttribute('aria-label', 'Close conversation with ' + conv.peer);
      on(close, 'click', function () { closeTab(conv); });
      tab.appendChild(close);
    }
    return tab;
  }

  function closeTab(conv) {
    conv.closed = true;
    if (S.active === conv.id) {
      S.active = null;
      activate(S.convs.lobby ? 'lobby' : S.order[0], false);
    }
    renderAll();
  }

  var statusSelect = byId('status-select');

  function renderMyStatus() {
    statusSelect.value = S.myStatus;
    byId('me-dot').className = 'dot dot-' + S.myStatus;
  }

  on(statusSelect, 'change', function () {
    if (S) { setStatus(statusSelect.value); }
  });

  function setStatus(wanted) {
    var session = S;
    request('POST', '/status', { token: S.token, status: wanted }, REQUEST_TIMEOUT_MS, function (err) {
      if (!alive(session)) { return; }
      if (err) {
        showNotice('Could not change your status: ' + err.message, 'warn');
        renderMyStatus(); // back to what the server has
        return;
      }
      // The presence event confirms it; show it at once meanwhile.
      S.myStatus = wanted;
      renderMyStatus();
    });
  }

  function setConnection(state) {
    var node = byId('conn');
    if (node.getAttribute('data-state') === state) { return; }
    node.setAttribute('data-state', state);
    node.className = 'conn conn-' + state;
    setText(node, state === 'connected' ? 'connected' : 'reconnecting\u2026');
    node.setAttribute('title', state === 'connected' ? 'Connected to the server'
      : 'Connection lost; trying again (click to retry now)');
  }

  function updateTitle() {
    var base = S ? APP_TITLE + ' \u2014 ' + S.user : APP_TITLE;
    document.title = titleUnread ? '(' + titleUnread + ') ' + base : base;
  }

  // ---- Notices -------------------------------------------------------------

  function showNotice(text, kind) {
    var box = byId('notices');
    var notice = el('div', 'notice notice-' + (kind || 'info'));
    notice.setAttribute('role', 'status');
    notice.appendChild(el('span', 'notice-text', text));
    var close = el('button', 'notice-close', '\u00d7');
    close.setAttribute('type', 'button');
    close.setAttribute('aria-label', 'Dismiss');
    on(close, 'click', function () { removeNode(notice); });
    notice.appendChild(close);
    box.appendChild(notice);
    while (box.childNodes.length > NOTICE_MAX) { box.removeChild(box.firstChild); }
    setTimeout(function () { removeNode(notice); }, NOTICE_MS);
  }

  // ---- Page wiring ---------------------------------------------------------

  function resetChatView() {
    clear(byId('panes'));
    clear(byId('tabs'));
    clear(byId('notices'));
    setConnection('connected');
    updateTitle();
  }

  function closeSidebar() { removeClass(document.body, 'show-sidebar'); }

  on(byId('menu-toggle'), 'click', function () {
    setClass(document.body, 'show-sidebar', !hasClass(document.body, 'show-sidebar'));
  });
  on(byId('scrim'), 'click', closeSidebar);
  on(byId('logout'), 'click', logout);
  on(byId('conn'), 'click', retryNow);

  on(byId('room-form'), 'submit', function (event) {
    stop(event);
    var name = trim(byId('room-name').value);
    if (name && S) { joinRoom(name); }
  });

  on(window, 'focus', function () {
    windowFocused = true;
    titleUnread = 0;
    updateTitle();
    if (S && S.active && S.convs[S.active]) {
      S.convs[S.active].unread = 0;
      renderAll();
    }
  });
  on(window, 'blur', function () { windowFocused = false; });

  showLogin('', '');
}());
