/*
 * parlor web client: the login form and the page's wiring. Loaded last.
 *
 * Owns signing in (the form, /join, the words for its errors), starting and
 * ending a session, logging out (and leaving at once when the tab closes),
 * and the handlers of the page's fixed controls: menu, logout, connection
 * badge, room form, status select. Its last line shows the login form.
 */
(function (P) {
  'use strict';

  var byId = P.byId;
  var on = P.on;
  var stop = P.stop;
  var setText = P.setText;
  var trim = P.trim;

  var loginForm = byId('login-form');
  var loginName = byId('login-name');
  var loginPassword = byId('login-password');
  var loginError = byId('login-error');
  var loginSubmit = byId('login-submit');
  var statusSelect = byId('status-select');
  var joining = false;

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

  // ---- Login ---------------------------------------------------------------

  function showLogin(name, message) {
    document.body.className = 'at-login';
    loginName.value = name || loginName.value;
    loginPassword.value = '';
    setText(loginError, message || '');
    loginSubmit.disabled = false;
    setText(loginSubmit, 'Enter');
    P.clearTitleUnread();
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
    P.request('POST', '/join', { name: name, password: password }, P.REQUEST_TIMEOUT_MS, function (err, data) {
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
      P.tabs.share(P.session);
    });
  });

  // ---- Session start and end -----------------------------------------------

  /** `token` is given when resuming a session shared by another tab (a /sync reply has none). */
  function startSession(name, password, reply, token) {
    P.session = P.newSession(name, password);
    if (token) { P.session.token = token; }
    P.resetChatView();
    document.body.className = 'at-chat';
    P.applySnapshot(reply, 'join');
    P.setConnection('connected');
    P.tabs.start(P.session);
    P.poll();
  }

  var resuming = null;

  /** Opens the session another tab of this browser signed in (tabs.js). */
  function resumeSession(shared) {
    if (resuming === shared.token) { return; }
    resuming = shared.token;
    P.request('GET', '/sync', { token: shared.token }, P.REQUEST_TIMEOUT_MS, function (err, data) {
      if (resuming !== shared.token) { return; }
      resuming = null;
      if (P.session) { return; } // signed in here meanwhile
      if (!err) {
        startSession(shared.name, null, data, shared.token);
      } else if (err.code === 'unknown_client') {
        P.tabs.forget({ token: shared.token });
        showLogin(shared.name, '');
      } else {
        showLogin(shared.name, describeJoinError(err));
      }
    });
  }

  /** Another tab signed in, out, or rejoined with a new token. */
  function sessionChanged(shared) {
    var S = P.session;
    if (S && shared && S.token === shared.token) { return; }
    if (S && shared && S.user === shared.user) {
      // The same person on a new client process (the leader rejoined).
      S.token = shared.token;
      S.epoch++;
      S.maxMsgId = 0;
      P.stopLoop();
      P.resync();
      return;
    }
    if (S) {
      endSession();
      showLogin(S.name, '');
    }
    if (shared) { resumeSession(shared); }
  }

  function logout() {
    var session = P.session;
    if (!session) { return; }
    P.tabs.forget(session);
    P.request('POST', '/leave', { token: session.token }, P.REQUEST_TIMEOUT_MS, P.noop);
    endSession();
    showLogin(session.name, '');
  }

  function endSession() {
    var S = P.session;
    if (!S) { return; }
    P.stopLoop();
    P.tabs.stop();
    if (S.sendTimer) { clearTimeout(S.sendTimer); }
    P.session = null;
  }

  // Closing the last tab ends its client process at once, so others see us
  // go without waiting for the inactivity sweep. Browsers without sendBeacon
  // rely on the sweep.
  on(window, 'pagehide', function () {
    var S = P.session;
    var last = P.tabs.closing();
    if (!S || !S.token || !last || !navigator.sendBeacon || typeof Blob === 'undefined') { return; }
    try {
      navigator.sendBeacon('/leave', new Blob([P.encodeForm({ token: S.token })],
        { type: 'application/x-www-form-urlencoded' }));
    } catch (e) { /* best effort */ }
  });

  // A page restored from the back-forward cache said goodbye on pagehide:
  // take part again, or follow what the other tabs did meanwhile.
  on(window, 'pageshow', function (event) {
    var S = P.session;
    if (!event || !event.persisted || !S || !P.tabs.shared()) { return; }
    var stored = P.tabs.storedSession();
    if (!stored || stored.token !== S.token) {
      sessionChanged(stored);
      return;
    }
    P.tabs.start(S);
  });

  // ---- Page wiring ---------------------------------------------------------

  on(byId('menu-toggle'), 'click', P.toggleSidebar);
  on(byId('scrim'), 'click', P.closeSidebar);
  on(byId('logout'), 'click', logout);
  on(byId('conn'), 'click', P.retryNow);
  on(byId('more-users-button'), 'click', P.loadMoreUsers);

  on(byId('room-form'), 'submit', function (event) {
    stop(event);
    var name = trim(byId('room-name').value);
    if (name && P.session) { P.joinRoom(name); }
  });

  on(statusSelect, 'change', function () {
    if (P.session) { P.setStatus(statusSelect.value); }
  });

  P.describeJoinError = describeJoinError;
  P.showLogin = showLogin;
  P.endSession = endSession;
  P.sessionChanged = sessionChanged;

  var stored = P.tabs.storedSession();
  showLogin(stored ? stored.name : '', '');
  if (stored) { resumeSession(stored); }
}(window.parlor));
