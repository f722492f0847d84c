/*
 * parlor web client: the namespace and the DOM helpers every other file uses.
 *
 * Written for the browsers parlor exists for: old ones, behind networks where
 * WebSocket does not get through. So the client is ES5 only (var, function,
 * no Promise), talks to the server with XMLHttpRequest alone, and needs no
 * build step and no library. tests/browser/es5.test.js keeps it that way.
 *
 * # Files, loaded in this order by index.html
 *   - base.js: the one global, window.parlor, DOM helpers (el(), on()...)
 *     and Dict, the map for keys that come from outside
 *   - transport.js: request() over XHR, retry policy, the connection loop
 *     (poll -> events; on failure back off, rejoin or resync)
 *   - state.js: the session, snapshots from /join and /sync, events,
 *     conversations, my status
 *   - messages.js: history and live messages merged in order; the outbox
 *   - view.js: panes, sidebar, tabs, notices, connection badge, title
 *   - app.js: the login form, starting and ending a session, page wiring;
 *     it runs last and shows the login form
 *
 * Each file is one function called at once, so nothing leaks into the page
 * but window.parlor. Inside a file, `P` is that object: a file puts what
 * others call on it (listed at the file's end) and calls others through it
 * at run time (P.renderAll()), so files may call each other both ways. A
 * file keeps local names (var el = P.el) only for files loaded before it.
 *
 * # Safety rule
 *   Text that came from a user (names, messages, room names, notification
 *   data) only ever reaches the page through document.createTextNode or an
 *   attribute set with setAttribute: never innerHTML. A name or id from the
 *   server is a key only in a Dict, never of a plain object.
 *
 * # Content-Security-Policy
 *   The server sends the page a policy without 'unsafe-inline' or
 *   'unsafe-eval' (src/http/static_files.rs). So: no inline script or
 *   on...= handler in index.html, no style= attribute in markup (setting
 *   node.style.x from script is fine), no eval, new Function or string
 *   given to setTimeout. The browser would refuse them.
 */
(function () {
  'use strict';

  var P = window.parlor = {
    /**
     * The signed-in session (see P.newSession in state.js), null while the
     * login form shows. Every asynchronous callback checks that it is still
     * the session it started with (P.alive), so a reply that arrives after
     * logging out is dropped.
     */
    session: null,
    /** Time limit for every request that is not a poll. */
    REQUEST_TIMEOUT_MS: 15000
  };

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

  /**
   * A map from any string to a value: what the page keys by names and ids
   * that come from outside (users, conversations, rooms). People choose
   * those names, and "__proto__", "constructor" or "toString" are valid
   * ones: as keys of a plain object they would find what every object
   * inherits, and assigning to "__proto__" would replace the object's
   * prototype. Here each key is stored behind a "$", which starts no
   * property of Object.prototype. It works in every browser, which
   * Object.create(null) (IE9+) and Map (IE11, partly) do not.
   */
  function Dict() { this.items = {}; }
  Dict.prototype.has = function (key) { return hasOwn(this.items, '$' + key); };
  Dict.prototype.get = function (key) { return this.has(key) ? this.items['$' + key] : undefined; };
  Dict.prototype.set = function (key, value) { this.items['$' + key] = value; };
  Dict.prototype.remove = function (key) { delete this.items['$' + key]; };
  /** The keys, in no particular order. */
  Dict.prototype.keys = function () {
    var keys = [];
    for (var k in this.items) {
      if (hasOwn(this.items, k)) { keys.push(k.slice(1)); }
    }
    return keys;
  };

  function pad2(n) { return n < 10 ? '0' + n : String(n); }

  function formatTime(ms) {
    var d = new Date(ms);
    return pad2(d.getHours()) + ':' + pad2(d.getMinutes());
  }

  P.byId = byId;
  P.noop = noop;
  P.on = on;
  P.stop = stop;
  P.el = el;
  P.clear = clear;
  P.setText = setText;
  P.removeNode = removeNode;
  P.hasClass = hasClass;
  P.addClass = addClass;
  P.removeClass = removeClass;
  P.setClass = setClass;
  P.trim = trim;
  P.hasOwn = hasOwn;
  P.Dict = Dict;
  P.formatTime = formatTime;
}());
