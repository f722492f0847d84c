/*
 * parlor web client: drawing the chat.
 *
 * Owns the DOM of the chat view: a pane per conversation (head, messages
 * scroller, prompt), the sidebar (people, rooms), the tabs, my status, the
 * connection badge, notices, and the window title with its unread count.
 * It draws from the session (state.js) and hands clicks back to it; user
 * text goes in only as text nodes (P.el, P.setText).
 */
(function (P) {
  'use strict';

  /** How long a notice stays up unless closed by hand. */
  var NOTICE_MS = 8000;
  /** Notices shown at once; older ones go first. */
  var NOTICE_MAX = 4;
  /** Distance from the bottom (px) that still counts as "reading the newest". */
  var STICK_PX = 40;
  var APP_TITLE = 'parlor';

  var byId = P.byId;
  var on = P.on;
  var el = P.el;
  var clear = P.clear;
  var setText = P.setText;
  var setClass = P.setClass;

  /** Whether the browser window has focus; drives the unread count in the title. */
  var windowFocused = document.hasFocus ? document.hasFocus() : true;
  /** Messages from others that arrived while the window was not focused. */
  var titleUnread = 0;

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
      on(leave, 'click', function () { P.leaveRoom(conv); });
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
      if (conv.oldestId !== null) { P.loadHistory(conv, false, conv.oldestId, 1); }
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
      P.stop(event);
      var text = conv.input.value;
      if (!P.trim(text)) { return; }
      conv.input.value = '';
      P.queueSend(conv, text);
      conv.input.focus();
    });
    pane.appendChild(form);

    conv.pane = pane;
    renderPaneHead(conv);
  }

  function renderPaneHead(conv) {
    if (!conv.titleNode) { return; }
    var title = P.convTitle(conv);
    setText(conv.titleNode, title);
    var sub;
    if (conv.kind === 'dialog') {
      var status = P.session.users.get(conv.peer);
      sub = status ? 'Private conversation \u00b7 ' + status : 'Private conversation';
    } else if (conv.id === 'lobby') {
      sub = 'Everyone who is here';
      if (conv.memberCount !== null) {
        // Counted by the server; kept current by presence since.
        var count = P.session.usersTotal !== null ? P.session.usersTotal : conv.memberCount;
        sub += ' \u00b7 ' + count + ' online';
      }
    } else {
      sub = conv.members.length + (conv.members.length === 1 ? ' member: ' : ' members: ') +
        conv.members.join(', ');
    }
    setText(conv.subNode, sub);
    if (conv.input) { conv.input.setAttribute('placeholder', 'Message ' + title); }
  }

  function renderEarlier(conv) {
    conv.earlierNode.style.display = conv.hasEarlier ? '' : 'none';
  }

  // ---- Sidebar, tabs -------------------------------------------------------

  function renderAll() {
    var S = P.session;
    if (!S) { return; }
    renderUsers();
    renderRooms();
    renderTabs();
    for (var i = 0; i < S.order.length; i++) {
      var conv = S.convs.get(S.order[i]);
      if (conv.kind === 'dialog' || conv.id === 'lobby') { renderPaneHead(conv); }
    }
  }

  function sortedNames(dict) {
    var names = dict.keys();
    names.sort(function (a, b) {
      var x = a.toLowerCase();
      var y = b.toLowerCase();
      return x < y ? -1 : (x > y ? 1 : 0);
    });
    return names;
  }

  function badge(count) {
    var node = el('span', 'badge', count > 99 ? '99+' : count);
    node.setAttribute('title', count + ' unread');
    return node;
  }

  function renderUsers() {
    var users = P.session.users;
    var list = byId('user-list');
    clear(list);
    var names = sortedNames(users);
    for (var i = 0; i < names.length; i++) {
      list.appendChild(userItem(names[i], users.get(names[i])));
    }
    // In a big lobby, the people listed and how many more are online.
    var more = P.moreOnline();
    var others = names.length + more;
    setText(byId('user-count'), others ? String(others) : '');
    byId('no-users').style.display = others ? 'none' : '';
    byId('more-users').style.display = more ? 'block' : 'none';
    setText(byId('more-users-count'), more + ' more online');
    var button = byId('more-users-button');
    button.disabled = !!P.session.usersPaging;
    setText(button, P.session.usersPaging ? 'Loading\u2026' : 'Show more');
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
    var conv = P.dialogWith(name);
    if (conv && conv.unread) { button.appendChild(badge(conv.unread)); }
    setClass(item, 'current', !!(conv && conv.id === P.session.active));
    on(button, 'click', function () { P.openDialogWith(name); });
    item.appendChild(button);
    return item;
  }

  function renderRooms() {
    var S = P.session;
    var list = byId('room-list');
    clear(list);
    for (var i = 0; i < S.order.length; i++) {
      var conv = S.convs.get(S.order[i]);
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
    setClass(item, 'current', conv.id === P.session.active);
    on(button, 'click', function () { P.activate(conv.id, true); });
    item.appendChild(button);
    return item;
  }

  function renderTabs() {
    var S = P.session;
    var tabs = byId('tabs');
    clear(tabs);
    for (var i = 0; i < S.order.length; i++) {
      var conv = S.convs.get(S.order[i]);
      if (conv.closed && conv.id !== S.active) { continue; }
      tabs.appendChild(tabItem(conv));
    }
  }

  function tabItem(conv) {
    var S = P.session;
    var tab = el('div', 'tab' + (conv.id === S.active ? ' active' : '') + (conv.unread ? ' has-unread' : ''));
    tab.setAttribute('data-conv', conv.id);
    var open = el('button', 'tab-open');
    open.setAttribute('type', 'button');
    open.setAttribute('role', 'tab');
    open.setAttribute('aria-selected', conv.id === S.active ? 'true' : 'false');
    if (conv.kind === 'dialog') {
      open.appendChild(el('span', 'dot dot-' + (S.users.get(conv.peer) || 'offline')));
    }
    open.appendChild(el('span', 'tab-name', P.convTitle(conv)));
    if (conv.unread) { open.appendChild(badge(conv.unread)); }
    on(open, 'click', function () { P.activate(conv.id, true); });
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
    var S = P.session;
    conv.closed = true;
    if (S.active === conv.id) {
      S.active = null;
      P.activateHome();
    }
    renderAll();
  }

  function closeSidebar() { P.removeClass(document.body, 'show-sidebar'); }

  function toggleSidebar() {
    setClass(document.body, 'show-sidebar', !P.hasClass(document.body, 'show-sidebar'));
  }

  // ---- Status, connection, title -------------------------------------------

  function renderMyStatus() {
    var status = P.session.myStatus;
    byId('status-select').value = status;
    byId('me-dot').className = 'dot dot-' + status;
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
    var S = P.session;
    var base = S ? APP_TITLE + ' \u2014 ' + S.user : APP_TITLE;
    document.title = titleUnread ? '(' + titleUnread + ') ' + base : base;
  }

  /** A message from someone else arrived: count it in the title if nobody is looking. */
  function noteUnseenMessage() {
    if (windowFocused) { return; }
    titleUnread++;
    updateTitle();
  }

  function clearTitleUnread() {
    titleUnread = 0;
    updateTitle();
  }

  on(window, 'focus', function () {
    var S = P.session;
    windowFocused = true;
    clearTitleUnread();
    if (S && S.active && S.convs.has(S.active)) {
      S.convs.get(S.active).unread = 0;
      renderAll();
    }
  });
  on(window, 'blur', function () { windowFocused = false; });

  // ---- Notices -------------------------------------------------------------

  function showNotice(text, kind) {
    var box = byId('notices');
    var notice = el('div', 'notice notice-' + (kind || 'info'));
    notice.setAttribute('role', 'status');
    notice.appendChild(el('span', 'notice-text', text));
    var close = el('button', 'notice-close', '\u00d7');
    close.setAttribute('type', 'button');
    close.setAttribute('aria-label', 'Dismiss');
    on(close, 'click', function () { P.removeNode(notice); });
    notice.appendChild(close);
    box.appendChild(notice);
    while (box.childNodes.length > NOTICE_MAX) { box.removeChild(box.firstChild); }
    setTimeout(function () { P.removeNode(notice); }, NOTICE_MS);
  }

  /** An empty chat view for a new session. */
  function resetChatView() {
    clear(byId('panes'));
    clear(byId('tabs'));
    clear(byId('notices'));
    setConnection('connected');
    updateTitle();
  }

  P.buildPane = buildPane;
  P.renderPaneHead = renderPaneHead;
  P.renderEarlier = renderEarlier;
  P.renderAll = renderAll;
  P.closeSidebar = closeSidebar;
  P.toggleSidebar = toggleSidebar;
  P.renderMyStatus = renderMyStatus;
  P.setConnection = setConnection;
  P.noteUnseenMessage = noteUnseenMessage;
  P.clearTitleUnread = clearTitleUnread;
  P.showNotice = showNotice;
  P.resetChatView = resetChatView;
}(window.parlor));
