/*
 * parlor web client: the tabs of one browser share one session and one poll.
 *
 * A browser keeps at most 6 connections per host (old ones 2), and a parked
 * long poll holds one. So the tabs of this origin share one client process:
 * its token sits in localStorage (key SESSION_KEY), a tab opened later
 * resumes it with /sync, and only one tab, the leader, polls. The leader
 * hands every batch of events to the others (BroadcastChannel where there
 * is one, else a localStorage key whose `storage` event carries it). Every
 * tab still sends its own /send, /dialog and /history requests.
 *
 * Leader election is a lease in localStorage (LEASE_KEY: tab id, expiry,
 * visible). localStorage has no compare-and-set, so a tab claims by writing
 * the lease and leads only if it still reads its own id a moment later. The
 * leader renews the lease every second; when it closes it drops the lease
 * and another tab takes over at once; when it crashes or freezes the lease
 * runs out. A visible tab takes the lease from a hidden leader, because
 * browsers slow a hidden tab's timers down to once a minute. A leader keeps
 * polling as long as the lease names it, even if its own timer was too late
 * to renew it: its re-polls are driven by replies, not timers.
 *
 * Two leaders at once (both read their own id, storage lags between
 * processes) are harmless: the server answers the older parked poll of a
 * client at once, and that tab steps down when it sees the lease name
 * another. Followers apply only events with a seq above their cursor, so a
 * batch seen twice, or from a new leader that starts further back, shows
 * nothing twice; a new leader polls from its own cursor, so nothing is lost.
 *
 * Without usable localStorage (disabled, or old Safari's private mode
 * throwing on setItem) every tab runs on its own, as a client of its own.
 */
(function (P) {
  'use strict';

  var PREFIX = 'parlor.';
  var SESSION_KEY = PREFIX + 'session';
  var LEASE_KEY = PREFIX + 'leader';
  var BUS_KEY = PREFIX + 'bus';
  var TAB_PREFIX = PREFIX + 'tab.';
  /** A lease not renewed for this long is free to take. */
  var LEASE_MS = 5000;
  /** How often the leader renews and the others check the lease. */
  var TICK_MS = 1000;
  /** A claim is confirmed after this: long enough for a rival's write to land. */
  var SETTLE_MS = 200;
  /** Each tab notes it is open this often (see othersOpen). */
  var HEARTBEAT_MS = 5000;
  /** A tab not heard from for this long counts as closed (throttled tabs tick once a minute). */
  var TAB_STALE_MS = 150000;

  var store = null;
  var tabId = String(new Date().getTime()) + '-' + String(Math.random()).slice(2, 10);
  var channel = null;
  var busCount = 0;
  var leading = false;
  var tickTimer = null;
  var lastHeartbeat = 0;

  // ---- Storage that may fail -------------------------------------------------

  /** localStorage if it works, else null (disabled, private mode, quota 0). */
  function probeStore() {
    try {
      var s = window.localStorage;
      var probe = PREFIX + 'probe';
      s.setItem(probe, tabId);
      s.removeItem(probe);
      return s;
    } catch (e) {
      return null;
    }
  }

  function readJson(key) {
    try {
      var raw = store.getItem(key);
      return raw ? JSON.parse(raw) : null;
    } catch (e) {
      return null;
    }
  }

  function writeJson(key, value) {
    try { store.setItem(key, JSON.stringify(value)); } catch (e) { /* full: run as if alone */ }
  }

  function remove(key) {
    try { store.removeItem(key); } catch (e) { /* nothing to do */ }
  }

  function now() { return new Date().getTime(); }

  function visible() { return document.visibilityState !== 'hidden' && !document.hidden; }

  // ---- The shared session ----------------------------------------------------

  /** Whether this page shares its session with the other tabs. */
  function shared() { return store !== null; }

  /** The session the tabs share, {name, user, token}, or null. */
  function storedSession() {
    var s = shared() ? readJson(SESSION_KEY) : null;
    return s && typeof s.token === 'string' && typeof s.user === 'string' ? s : null;
  }

  /**
   * Offers session S to the other tabs. The token in localStorage is readable
   * by any script of this origin, which can read the page's memory anyway;
   * the password is never written (it stays in the memory of the tab it was
   * typed in). A different session already shared is ended: one per browser.
   */
  function share(S) {
    if (!shared()) { return; }
    var old = storedSession();
    if (old && old.token !== S.token) {
      P.request('POST', '/leave', { token: old.token }, P.REQUEST_TIMEOUT_MS, P.noop);
    }
    writeJson(SESSION_KEY, { name: S.name, user: S.user, token: S.token });
  }

  /** Stops sharing session S: others showing it go to the login form. */
  function forget(S) {
    var s = storedSession();
    if (s && s.token === S.token) { remove(SESSION_KEY); }
  }

  // ---- The bus: leader -> followers ------------------------------------------

  function post(msg) {
    if (!shared()) { return; }
    if (channel) {
      try { channel.postMessage(msg); return; } catch (e) { /* fall back to storage */ }
    }
    msg.n = tabId + ':' + (busCount++); // the same value twice would fire no storage event
    writeJson(BUS_KEY, msg);
  }

  /** The leader got a batch from /poll: every other tab applies it too. */
  function publish(S, data) {
    if (!leading) { return; }
    post({ type: 'events', token: S.token, cursor: data.cursor, events: data.events || [] });
  }

  /** The leader resynced: the others' cursors are behind a gap, so they sync too. */
  function publishResync(S) {
    if (leading) { post({ type: 'resync', token: S.token }); }
  }

  function onBus(msg) {
    var S = P.session;
    if (!S || !msg || msg.token !== S.token || leading) { return; }
    if (msg.type === 'events') {
      var events = msg.events || [];
      var shown = 0;
      for (var i = 0; i < events.length; i++) {
        if (!(events[i].seq > S.cursor)) { continue; } // applied already
        shown++;
        try {
          P.handleEvent(events[i]);
        } catch (e) {
          if (window.console && window.console.error) { window.console.error('parlor: event failed', events[i], e); }
        }
      }
      if (msg.cursor > S.cursor) { S.cursor = msg.cursor; }
      if (shown) { P.renderAll(); }
      P.setConnection('connected');
      P.kickOutbox();
    } else if (msg.type === 'resync' && S.stage !== 'resync') {
      P.stopLoop();
      P.resync();
    }
  }

  // ---- Leader election -------------------------------------------------------

  function readLease() {
    var lease = readJson(LEASE_KEY);
    return lease && typeof lease.id === 'string' ? lease : null;
  }

  function writeLease() {
    writeJson(LEASE_KEY, { id: tabId, until: now() + LEASE_MS, visible: visible() });
  }

  /** Whether this tab should try for the lease. */
  function wantLease(lease) {
    if (!lease) { return true; }
    if (lease.id === tabId) { return false; }
    return lease.until < now() || (!lease.visible && visible());
  }

  function claim() {
    var S = P.session;
    writeLease();
    setTimeout(function () {
      var lease = readLease();
      if (P.alive(S) && !leading && lease && lease.id === tabId) { lead(); }
    }, SETTLE_MS);
  }

  function lead() {
    leading = true;
    P.stopLoop();
    P.poll();
  }

  function follow() {
    if (!leading) { return; }
    leading = false;
    P.stopLoop();
    P.session.stage = 'follow';
    P.setConnection('connected');
  }

  /** Whether this tab may poll now: it runs alone, or the lease names it. */
  function mayPoll() {
    if (!shared()) { return true; }
    var lease = readLease();
    if (!lease || lease.id !== tabId) {
      if (leading) { follow(); }
      return false;
    }
    return leading;
  }

  /** Whether this tab may /join again when the server forgot the shared client. */
  function mayRejoin() { return !shared() || leading; }

  function heartbeat() {
    if (now() - lastHeartbeat < HEARTBEAT_MS) { return; }
    lastHeartbeat = now();
    writeJson(TAB_PREFIX + tabId, lastHeartbeat);
  }

  function tick() {
    tickTimer = null;
    if (!P.session) { return; }
    heartbeat();
    var lease = readLease();
    if (leading) {
      if (lease && lease.id !== tabId) { follow(); } else { writeLease(); }
    } else if (wantLease(lease)) {
      claim();
    }
    tickTimer = setTimeout(tick, TICK_MS);
  }

  /** Session S has started in this tab: take part in the election. */
  function start(S) {
    if (!shared()) { return; }
    S.stage = 'follow';
    lastHeartbeat = 0;
    if (tickTimer) { clearTimeout(tickTimer); }
    tick();
  }

  /** This tab's session ends: let another tab lead at once. */
  function stop() {
    if (tickTimer) { clearTimeout(tickTimer); tickTimer = null; }
    if (!shared()) { return; }
    var lease = readLease();
    if (lease && lease.id === tabId) { remove(LEASE_KEY); }
    leading = false;
  }

  /** Whether another tab of this browser is open (it noted so recently). */
  function othersOpen() {
    if (!shared()) { return false; }
    var fresh = now() - TAB_STALE_MS;
    var keys = [];
    try {
      for (var i = 0; i < store.length; i++) { keys.push(store.key(i)); }
    } catch (e) { return false; }
    for (var j = 0; j < keys.length; j++) {
      var key = keys[j];
      if (!key || key.indexOf(TAB_PREFIX) !== 0 || key === TAB_PREFIX + tabId) { continue; }
      var seen = readJson(key);
      if (typeof seen === 'number' && seen > fresh) { return true; }
      remove(key); // closed without saying so, long ago
    }
    return false;
  }

  /**
   * The page is going away. Returns whether it was the last tab of the
   * shared session (then the caller ends the client process at once).
   */
  function closing() {
    stop();
    if (!shared()) { return true; }
    remove(TAB_PREFIX + tabId);
    if (othersOpen()) { return false; }
    if (P.session) { forget(P.session); }
    return true;
  }

  // ---- What other tabs change ------------------------------------------------

  function onStorage(event) {
    event = event || window.event;
    if (!event || !event.key) { return; }
    if (event.key === BUS_KEY) {
      var msg = null;
      try { msg = JSON.parse(event.newValue); } catch (e) { msg = null; }
      onBus(msg);
    } else if (event.key === LEASE_KEY) {
      var lease = readLease();
      if (leading && lease && lease.id !== tabId) {
        follow();
      } else if (P.session && !leading && wantLease(lease)) {
        claim(); // the leader let go: take over now, not at the next tick
      }
    } else if (event.key === SESSION_KEY) {
      P.sessionChanged(storedSession());
    }
  }

  store = probeStore();
  if (store) {
    if (typeof window.BroadcastChannel === 'function') {
      try {
        channel = new window.BroadcastChannel('parlor');
        channel.onmessage = function (e) { onBus(e.data); };
      } catch (e) { channel = null; }
    }
    P.on(window, 'storage', onStorage);
    P.on(document, 'visibilitychange', function () {
      if (!P.session) { return; }
      var lease = readLease();
      if (leading) { writeLease(); } else if (wantLease(lease)) { claim(); }
    });
  }

  P.tabs = {
    shared: shared,
    storedSession: storedSession,
    share: share,
    forget: forget,
    publish: publish,
    publishResync: publishResync,
    mayPoll: mayPoll,
    mayRejoin: mayRejoin,
    start: start,
    stop: stop,
    closing: closing,
    isLeader: function () { return leading; }
  };
}(window.parlor));
