/*
 * parlor web client: what the page knows.
 *
 * Owns the session object (who we are, the cursor, users, conversations),
 * bringing it in line with a /join or /sync snapshot, applying the server's
 * events to it (presence, conversations added and removed, members,
 * messages, notifications), the conversations themselves (create-or-get,
 * remove, which one is shown, opening a dialog, joining and leaving rooms)
 * and our own status. Drawing is view.js's; messages are messages.js's.
 */
(function (P) {
  'use strict';

  var byId = P.byId;
  var hasOwn = P.hasOwn;
  var Dict = P.Dict;
  var setClass = P.setClass;
  var request = P.request;

  // ---- The session ---------------------------------------------------------

  /**
   * The password lives in the session, in memory, for one reason: to /join
   * again by itself when the server has forgotten this client (restart,
   * sweep). It is never written to localStorage, sessionStorage or a cookie.
   */
  function newSession(name, password) {
    return {
      name: name,            // what was typed at login, for /join again
      password: password,    // memory only, see above
      user: name,            // the server's spelling of our name
      token: null,
      cursor: null,
      pollTimeoutMs: 25000,
      users: new Dict(),     // name -> status, others who are available
      usersKnown: 0,         // how many names `users` holds
      // A big lobby's list comes in pages (see applyUsersPage): how many are
      // online, us included (null: the server did not say), and the last
      // name of the newest page when more follow it.
      usersTotal: null,
      usersNext: null,
      usersPaging: null,     // the /users request in flight, if any
      pageTouched: null,     // names with presence events while it is
      myStatus: 'online',
      convs: new Dict(),     // conversation id -> conv (see makeConv)
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
      historyQueue: [],      // history loads run one at a time (see P.loadHistory)
      historyBusy: false
    };
  }

  /** Whether `session` is still the signed-in one (and `gen` its current loop run, if given). */
  function alive(session, gen) {
    return P.session === session && (gen === undefined || gen === session.loopGen);
  }

  // ---- Snapshots: /join and /sync ------------------------------------------

  /**
   * Brings the page in line with a /join or /sync reply. `mode` is 'join'
   * (first sign-in), 'rejoin' (the server had forgotten us) or 'sync' (we
   * fell behind the event buffer). Conversations already shown keep their
   * messages; history is loaded again to fill what was missed.
   */
  function applySnapshot(data, mode) {
    var S = P.session;
    var i, id, conv;
    if (data.token) { S.token = data.token; }
    S.user = data.user || S.user;
    S.cursor = data.cursor;
    if (data.poll_timeout_ms) { S.pollTimeoutMs = data.poll_timeout_ms; }

    S.users = new Dict();
    S.usersKnown = 0;
    var users = data.users || [];
    for (i = 0; i < users.length; i++) {
      if (users[i].name === S.user) {
        S.myStatus = users[i].status;
      } else {
        setUser(users[i].name, users[i].status);
      }
    }
    // Our own status apart: in a big lobby we may not be on the first page.
    if (data.status) { S.myStatus = data.status; }
    if (S.usersPaging) { S.usersPaging.abort(); }
    S.usersPaging = null;
    S.pageTouched = null;
    S.usersTotal = typeof data.users_total === 'number' ? data.users_total : null;
    S.usersNext = data.users_next || null;
    fitUsersTotal();
    P.setText(byId('me-name'), S.user);
    P.renderMyStatus();

    var present = new Dict();
    var convsIn = data.conversations || [];
    for (i = 0; i < convsIn.length; i++) {
      present.set(convsIn[i].id, true);
      conv = S.convs.get(convsIn[i].id);
      if (conv) {
        updateConv(conv, convsIn[i]);
        if (mode === 'rejoin') {
          // Ids of the old epoch mean nothing to the server now.
          conv.hasEarlier = false;
          P.renderEarlier(conv);
        }
        P.loadHistory(conv, true);
      } else {
        ensureConv(convsIn[i]);
      }
    }

    // Conversations we show that the server no longer has for us.
    var gone = [];
    for (i = 0; i < S.order.length; i++) {
      if (!present.has(S.order[i])) { gone.push(S.order[i]); }
    }
    for (i = 0; i < gone.length; i++) {
      id = gone[i];
      conv = S.convs.get(id);
      if (mode === 'rejoin' && conv.kind === 'room') {
        // The server forgot us (restart or sweep), we never left: join again.
        restoreConv(conv, '/rooms/join', { name: conv.name || conv.id }, 'gone');
      } else if (mode === 'rejoin' && conv.kind === 'dialog' && S.users.has(conv.peer)) {
        restoreConv(conv, '/dialog', { 'with': conv.peer }, 'user_offline');
      } else {
        removeConv(id, conv.kind === 'dialog' ? 'user_offline' : 'gone');
      }
    }

    if (!S.active || !S.convs.has(S.active)) { activateHome(); }
    P.renderAll();
  }

  /**
   * Asks again for a conversation the server forgot along with us: the room
   * (/rooms/join) or the dialog (/dialog). If it does not come back, or comes
   * back under another id, the one shown goes with `lostReason`.
   */
  function restoreConv(conv, path, params, lostReason) {
    var S = P.session;
    params.token = S.token;
    request('POST', path, params, P.REQUEST_TIMEOUT_MS, function (err, data) {
      if (!alive(S)) { return; }
      if (err) {
        removeConv(conv.id, lostReason);
        return;
      }
      if (data.conversation.id !== conv.id) { removeConv(conv.id, lostReason); }
      var fresh = ensureConv(data.conversation);
      if (fresh === conv) { P.loadHistory(conv, true); }
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
      case 'notification': P.showNotice(describeNotification(ev.data), 'info'); break;
      default: break; // newer servers may add event types; ignore them
    }
  }

  function onPresence(ev) {
    var S = P.session;
    if (ev.user === S.user) {
      // Our own status, perhaps set from another tab.
      if (ev.status !== 'offline') { S.myStatus = ev.status; P.renderMyStatus(); }
      return;
    }
    if (S.pageTouched) { S.pageTouched.set(ev.user, true); }
    var known = S.users.has(ev.user);
    if (ev.status === 'offline') {
      // Someone listed, or (as far as we can tell) one of those not listed.
      if (S.usersTotal !== null && (known || moreOnline() > 0)) { S.usersTotal--; }
      removeUser(ev.user);
    } else {
      // A newcomer comes online as "online"; another status from someone
      // not listed is a change beyond the pages we have.
      if (S.usersTotal !== null && !known && ev.status === 'online') { S.usersTotal++; }
      setUser(ev.user, ev.status);
    }
    fitUsersTotal();
  }

  function setUser(name, status) {
    var S = P.session;
    if (!S.users.has(name)) { S.usersKnown++; }
    S.users.set(name, status);
  }

  function removeUser(name) {
    var S = P.session;
    if (S.users.has(name)) { S.usersKnown--; }
    S.users.remove(name);
  }

  /** Whoever we list is online, and so are we. */
  function fitUsersTotal() {
    var S = P.session;
    if (S.usersTotal !== null && S.usersTotal < S.usersKnown + 1) { S.usersTotal = S.usersKnown + 1; }
  }

  /** How many others are online that the list does not show (0 if unknown). */
  function moreOnline() {
    var S = P.session;
    return S.usersTotal === null ? 0 : Math.max(0, S.usersTotal - 1 - S.usersKnown);
  }

  // ---- Pages of the online list ---------------------------------------------

  /** Names a "show more" asks for at once (the server answers up to 1000). */
  var USERS_PAGE = 200;

  /** The next page of the online list (GET /users after the last one). */
  function loadMoreUsers() {
    var S = P.session;
    if (!S || S.usersPaging) { return; }
    var params = { token: S.token, limit: USERS_PAGE };
    if (S.usersNext) { params.after = S.usersNext; }
    var touched = new Dict();
    S.pageTouched = touched;
    S.usersPaging = request('GET', '/users', params, P.REQUEST_TIMEOUT_MS, function (err, data) {
      if (!alive(S) || S.pageTouched !== touched) { return; }
      S.usersPaging = null;
      S.pageTouched = null;
      if (err) {
        P.showNotice('Could not list more people: ' + err.message, 'warn');
      } else {
        applyUsersPage(data, touched);
      }
      P.renderAll();
    });
    P.renderAll();
  }

  /**
   * A page and a presence event both set a state (someone's status now), so
   * applying a page and then the events after it ends where the server is.
   * The one ordering to avoid is an event applied before a page that is
   * older than it: names with an event while the page was on its way keep
   * the event's status (any change after that event comes as another one).
   */
  function applyUsersPage(data, touched) {
    var S = P.session;
    var users = data.users || [];
    for (var i = 0; i < users.length; i++) {
      var name = users[i].name;
      if (name !== S.user && !touched.has(name)) { setUser(name, users[i].status); }
    }
    if (typeof data.total === 'number') { S.usersTotal = data.total; }
    S.usersNext = data.next || null;
    fitUsersTotal();
  }

  function onConversationAdded(ev) {
    var conv = P.session.convs.get(ev.conversation.id);
    if (conv) {
      updateConv(conv, ev.conversation);
      conv.closed = false;
    } else {
      ensureConv(ev.conversation);
    }
  }

  function onMessage(ev) {
    var conv = P.session.convs.get(ev.conversation);
    if (!conv) { return; } // not ours (any more): the server will not send these
    P.addMessage(conv, ev, false);
  }

  function onMember(ev, joined) {
    var S = P.session;
    var conv = S.convs.get(ev.conversation);
    if (!conv) { return; }
    var members = conv.members;
    var at = -1;
    for (var i = 0; i < members.length; i++) { if (members[i] === ev.user) { at = i; } }
    if (joined && at < 0) { members.push(ev.user); }
    if (!joined && at >= 0) { members.splice(at, 1); }
    P.renderPaneHead(conv);
    // The lobby's membership is presence, already shown in the people list.
    if (conv.id !== 'lobby' && ev.user !== S.user) {
      P.addSystemLine(conv, ev.user + (joined ? ' joined the room' : ' left the room'));
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
      // The lobby's size, when its members are a first page of them.
      memberCount: typeof c.member_count === 'number' ? c.member_count : null,
      peer: null,
      entries: [],
      seen: new Dict(),
      unread: 0,
      closed: false,     // a dialog tab closed by hand; reopens on a new message
      stick: true,       // scrolled to the bottom: follow new messages
      hasEarlier: false, // the first history page was full: offer older ones
      oldestId: null
    };
    conv.peer = dialogPeer(conv);
    P.buildPane(conv);
    return conv;
  }

  function dialogPeer(conv) {
    if (conv.kind !== 'dialog') { return null; }
    var me = P.session.user;
    for (var i = 0; i < conv.members.length; i++) {
      if (conv.members[i] !== me) { return conv.members[i]; }
    }
    // Members missing: the id is "dialog:A:B".
    var parts = conv.id.split(':');
    return parts[1] === me ? parts[2] : parts[1];
  }

  function updateConv(conv, c) {
    if (c.members) { conv.members = c.members.slice(0); }
    conv.memberCount = typeof c.member_count === 'number' ? c.member_count : null;
    if (c.name) { conv.name = c.name; }
    conv.peer = dialogPeer(conv);
    P.renderPaneHead(conv);
  }

  /** Create-or-get: the same id never gets a second pane. */
  function ensureConv(c) {
    var S = P.session;
    var conv = S.convs.get(c.id);
    if (conv) {
      updateConv(conv, c);
      return conv;
    }
    conv = makeConv(c);
    S.convs.set(c.id, conv);
    // The lobby first, then in the order they came.
    if (c.id === 'lobby') { S.order.unshift(c.id); } else { S.order.push(c.id); }
    byId('panes').appendChild(conv.pane);
    P.loadHistory(conv, false);
    P.renderAll();
    return conv;
  }

  var REMOVAL_WORDS = {
    user_offline: function (conv) { return conv.peer + ' went offline; your conversation was closed.'; },
    left: function (conv) { return 'You left ' + convTitle(conv) + '.'; },
    gone: function (conv) { return convTitle(conv) + ' is no longer available.'; }
  };

  /** The server tore a conversation down (or we left it): drop it with a notice. */
  function removeConv(id, reason) {
    var S = P.session;
    var conv = S.convs.get(id);
    if (!conv) { return; }
    S.convs.remove(id);
    for (var i = 0; i < S.order.length; i++) {
      if (S.order[i] === id) { S.order.splice(i, 1); break; }
    }
    P.removeNode(conv.pane);
    // Unsent messages for it cannot be delivered any more.
    for (var j = S.outbox.length - 1; j >= 0; j--) {
      if (S.outbox[j].conv === id) { S.outbox.splice(j, 1); }
    }
    var words = hasOwn(REMOVAL_WORDS, reason) ? REMOVAL_WORDS[reason] : REMOVAL_WORDS.gone;
    P.showNotice(words(conv), 'warn');
    if (S.active === id) {
      S.active = null;
      activateHome();
    }
    P.renderAll();
  }

  function convTitle(conv) {
    if (conv.kind === 'dialog') { return conv.peer; }
    if (conv.id === 'lobby') { return 'lobby'; }
    return '#' + conv.name;
  }

  /** Shows a conversation's pane; `focusPrompt` puts the caret in its prompt. */
  function activate(id, focusPrompt) {
    var S = P.session;
    var conv = id && S.convs.get(id);
    if (!conv) { return; }
    conv.closed = false;
    S.active = id;
    for (var i = 0; i < S.order.length; i++) {
      var other = S.convs.get(S.order[i]);
      setClass(other.pane, 'active', other === conv);
    }
    conv.unread = 0;
    if (conv.stick) { P.scrollToBottom(conv); }
    P.closeSidebar();
    P.renderAll();
    if (focusPrompt) {
      try { conv.input.focus(); } catch (e) { /* hidden in a very old browser */ }
    }
  }

  /** Shows the lobby, or the first conversation there is, when the one shown went away. */
  function activateHome() {
    var S = P.session;
    activate(S.convs.has('lobby') ? 'lobby' : S.order[0], false);
  }

  /** The dialog shown with `name`, or null. */
  function dialogWith(name) {
    var S = P.session;
    for (var i = 0; i < S.order.length; i++) {
      var conv = S.convs.get(S.order[i]);
      if (conv.kind === 'dialog' && conv.peer === name) { return conv; }
    }
    return null;
  }

  /** Create-or-focus the dialog with `name`. */
  function openDialogWith(name) {
    var shown = dialogWith(name);
    if (shown) {
      activate(shown.id, true);
      return;
    }
    var S = P.session;
    request('POST', '/dialog', { token: S.token, 'with': name }, P.REQUEST_TIMEOUT_MS, function (err, data) {
      if (!alive(S)) { return; }
      if (err) {
        P.showNotice(err.code === 'unknown_user' ? name + ' is not online any more.'
          : 'Could not open a conversation with ' + name + ': ' + err.message, 'warn');
        return;
      }
      activate(ensureConv(data.conversation).id, true);
    });
  }

  function joinRoom(name) {
    var S = P.session;
    request('POST', '/rooms/join', { token: S.token, name: name }, P.REQUEST_TIMEOUT_MS, function (err, data) {
      if (!alive(S)) { return; }
      if (err) {
        P.showNotice(err.code === 'invalid_name'
          ? 'Room names are 1 to 32 letters, digits, "_", "-" or ".".'
          : 'Could not join ' + name + ': ' + err.message, 'warn');
        return;
      }
      byId('room-name').value = '';
      activate(ensureConv(data.conversation).id, true);
    });
  }

  function leaveRoom(conv) {
    var S = P.session;
    request('POST', '/rooms/leave', { token: S.token, conversation: conv.id }, P.REQUEST_TIMEOUT_MS,
      function (err) {
        if (!alive(S)) { return; }
        if (err) {
          P.showNotice('Could not leave ' + convTitle(conv) + ': ' + err.message, 'warn');
          return;
        }
        // The conversation_removed event will do the same; whichever comes first wins.
        removeConv(conv.id, 'left');
      });
  }

  // ---- My status -----------------------------------------------------------

  function setStatus(wanted) {
    var S = P.session;
    request('POST', '/status', { token: S.token, status: wanted }, P.REQUEST_TIMEOUT_MS, function (err) {
      if (!alive(S)) { return; }
      if (err) {
        P.showNotice('Could not change your status: ' + err.message, 'warn');
        P.renderMyStatus(); // back to what the server has
        return;
      }
      // The presence event confirms it; show it at once meanwhile.
      S.myStatus = wanted;
      P.renderMyStatus();
    });
  }

  P.newSession = newSession;
  P.alive = alive;
  P.applySnapshot = applySnapshot;
  P.handleEvent = handleEvent;
  P.convTitle = convTitle;
  P.activate = activate;
  P.activateHome = activateHome;
  P.dialogWith = dialogWith;
  P.openDialogWith = openDialogWith;
  P.joinRoom = joinRoom;
  P.leaveRoom = leaveRoom;
  P.setStatus = setStatus;
  P.moreOnline = moreOnline;
  P.loadMoreUsers = loadMoreUsers;
}(window.parlor));
