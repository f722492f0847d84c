/*
 * parlor web client: the messages of each conversation.
 *
 * Owns the list of messages in a pane (history and live events merged in
 * order, each shown once), system lines ("bob joined the room"), loading
 * history one request at a time, and the outbox: what was typed, sent in
 * order with a client_msg_id so that a retried send is stored once.
 */
(function (P) {
  'use strict';

  /** Messages asked for when a conversation opens (server max is 200). */
  var HISTORY_LIMIT = 50;
  /** Pages of history walked back to close a gap after a resync. */
  var HISTORY_GAP_PAGES = 8;

  var el = P.el;
  var request = P.request;
  var alive = P.alive;

  /** A per-page random prefix for client_msg_id: unique across tabs of one user. */
  var pageNonce = (new Date().getTime()).toString(36) + '-' +
    Math.floor(Math.random() * 2176782336).toString(36);
  var sendCounter = 0;

  // ---- Messages ------------------------------------------------------------

  /** Sort order of entries: epoch first (see P.newSession), then message id. */
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
    var S = P.session;
    var key = m.id + ':' + m.at;
    if (conv.seen.has(key)) { return false; }
    conv.seen.set(key, true);
    if (m.id > S.maxMsgId) { S.maxMsgId = m.id; }

    var mine = m.from === S.user;
    var node = el('li', mine ? 'msg mine' : 'msg from-' + senderColour(m.from));
    node.setAttribute('data-id', String(m.id));
    var head = el('div', 'msg-head');
    head.appendChild(el('span', 'msg-from', m.from));
    var time = el('span', 'msg-time', P.formatTime(m.at));
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
      P.noteUnseenMessage();
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
    var S = P.session;
    var node = el('li', 'system', text);
    insertEntry(conv, { epoch: S.epoch, id: S.maxMsgId + 0.5, node: node });
    if (conv.stick) { scrollToBottom(conv); }
  }

  function scrollToBottom(conv) {
    conv.scroller.scrollTop = conv.scroller.scrollHeight;
    conv.stick = true;
  }

  // ---- History -------------------------------------------------------------

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
    var S = P.session;
    var epoch = S.epoch;
    function current() {
      return alive(S) && S.convs.get(conv.id) === conv && S.epoch === epoch;
    }
    queueHistory(S, function (next) {
      if (!current()) { next(); return; }
      var params = { token: S.token, conversation: conv.id, limit: HISTORY_LIMIT };
      if (before !== undefined) { params.before = before; }
      request('GET', '/history', params, P.REQUEST_TIMEOUT_MS, function (err, data) {
        next();
        if (!current()) { return; }
        if (err) {
          // Transient: try again later. unknown_client: the poll will notice
          // and rejoin, which loads history again. not_member etc.: nothing to show.
          if (P.isTransient(err) && pagesLeft > 0) {
            setTimeout(function () { loadHistory(conv, fillGap, before, pagesLeft - 1); }, P.backoffDelay(1));
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
        P.renderEarlier(conv);
      });
    });
  }

  function queueHistory(session, job) {
    session.historyQueue.push(job);
    runHistoryQueue(session);
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
    var S = P.session;
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
    var S = P.session;
    if (S.sendTimer) {
      clearTimeout(S.sendTimer);
      S.sendTimer = null;
    }
    flushOutbox();
  }

  function flushOutbox() {
    var S = P.session;
    if (!S || S.sending || S.sendTimer) { return; }
    var item = null;
    for (var i = 0; i < S.outbox.length; i++) {
      if (S.outbox[i].id === null) { item = S.outbox[i]; break; }
    }
    if (!item) { return; }
    if (S.stage === 'rejoin') { return; } // kickOutbox runs when it is done
    var token = S.token;
    S.sending = true;
    request('POST', '/send', {
      token: token,
      conversation: item.conv,
      text: item.text,
      client_msg_id: item.clientMsgId
    }, P.REQUEST_TIMEOUT_MS, function (err, data) {
      if (!alive(S)) { return; }
      S.sending = false;
      if (!err) {
        S.sendAttempt = 0;
        item.id = data.id;
        item.at = data.at;
        var conv = S.convs.get(item.conv);
        if (conv && conv.seen.has(item.id + ':' + item.at)) { dropOutboxItem(item); }
        flushOutbox();
        return;
      }
      if (P.isTransient(err) || err.code === 'unknown_client') {
        var tooFast = err.code === 'rate_limited';
        if (tooFast && S.sendAttempt === 0) {
          P.showNotice('You are sending faster than the server allows: your messages will go ' +
            'out in a moment.', 'warn');
        }
        P.setText(item.stateNode, tooFast ? 'sending too fast, will retry\u2026'
          : 'waiting for connection\u2026');
        P.addClass(item.node, 'waiting');
        if (err.code === 'unknown_client' && token === S.token && S.stage !== 'rejoin' &&
            P.tabs.mayRejoin()) {
          // Our client is gone: rejoin now rather than wait for the poll. A
          // tab that follows waits for the leader's new token instead (tabs.js).
          P.stopLoop();
          P.rejoin();
          return;
        }
        if (token !== S.token) { flushOutbox(); return; } // sent with an old token: retry at once
        // The same client_msg_id goes again, after the server's
        // Retry-After when it gave one: a retry is never a second message.
        S.sendTimer = setTimeout(function () {
          if (!alive(S)) { return; }
          S.sendTimer = null;
          flushOutbox();
        }, Math.max(P.backoffDelay(S.sendAttempt++), err.retryAfterMs || 0));
        return;
      }
      // A real refusal (too long, not a member any more...): give the text
      // back to the person instead of losing it.
      dropOutboxItem(item);
      var target = S.convs.get(item.conv);
      if (target && !target.input.value) { target.input.value = item.text; }
      P.showNotice('Message not sent: ' + (err.code === 'invalid_text'
        ? 'messages are 1 to 4096 bytes long.' : err.message), 'warn');
      flushOutbox();
    });
  }

  /** The stored message `m` is now shown: its outbox item has done its job. */
  function settleOutbox(conv, m) {
    var S = P.session;
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
    var outbox = P.session.outbox;
    for (var i = 0; i < outbox.length; i++) {
      if (outbox[i] === item) { outbox.splice(i, 1); break; }
    }
    P.removeNode(item.node);
  }

  P.addMessage = addMessage;
  P.addSystemLine = addSystemLine;
  P.scrollToBottom = scrollToBottom;
  P.loadHistory = loadHistory;
  P.queueSend = queueSend;
  P.kickOutbox = kickOutbox;
}(window.parlor));
