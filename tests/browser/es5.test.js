'use strict';
// The web client must run on old browsers: ES5 syntax, XMLHttpRequest only,
// nothing loaded from elsewhere. These checks need no server or browser.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const acorn = require('acorn');
const { REPO } = require('./helpers');

const PUBLIC = path.join(REPO, 'public');

function publicFiles(ext) {
  const out = [];
  (function walk(dir) {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) { walk(full); } else if (entry.name.endsWith(ext)) { out.push(full); }
    }
  }(PUBLIC));
  return out;
}

const JS_FILES = publicFiles('.js');

/** The scripts index.html loads, as paths under public/, in page order. */
const PAGE_SCRIPTS = (() => {
  const html = fs.readFileSync(path.join(PUBLIC, 'index.html'), 'utf8');
  const out = [];
  const re = /<script\b[^>]*\bsrc\s*=\s*["']?([^"'\s>]+)/gi;
  let m;
  while ((m = re.exec(html))) { out.push(path.join(PUBLIC, m[1])); }
  return out;
})();

/**
 * APIs an old browser lacks, or that a locked-down network defeats. Matched
 * against identifiers, property names and string literals in the code (not
 * comments), so `window['fetch']` is caught but a comment may explain why
 * fetch is not used.
 */
const FORBIDDEN = ['fetch', 'WebSocket', 'EventSource', 'classList', 'Promise',
  // The password must never outlive the page.
  'localStorage', 'sessionStorage'];

/**
 * The one exception: tabs.js shares the session token (never the password)
 * and the poll between the tabs of a browser through localStorage.
 */
const ALLOWED = { 'public/tabs.js': ['localStorage'] };

test('public/ has JavaScript to check', () => {
  assert.ok(JS_FILES.length > 0, 'no .js files in public/');
});

test('every script index.html loads is one of the files checked here', () => {
  assert.ok(PAGE_SCRIPTS.length > 0, 'index.html loads no script');
  const unchecked = PAGE_SCRIPTS.filter((file) => !JS_FILES.includes(file))
    .map((file) => path.relative(REPO, file));
  assert.deepEqual(unchecked, [], 'scripts the page loads that are not in public/');
});

for (const file of JS_FILES) {
  const rel = path.relative(REPO, file);

  test(`${rel} parses as ES5 (acorn, ecmaVersion 5)`, () => {
    const source = fs.readFileSync(file, 'utf8');
    try {
      acorn.parse(source, { ecmaVersion: 5, sourceType: 'script', allowReserved: false });
    } catch (err) {
      assert.fail(`${rel} is not ES5: ${err.message}`);
    }
  });

  // The files share one global, window.parlor; anything declared at the
  // top level of a classic script would be another.
  test(`${rel} declares no globals (its top level is one function called at once)`, () => {
    const ast = acorn.parse(fs.readFileSync(file, 'utf8'), { ecmaVersion: 5, sourceType: 'script' });
    const [only] = ast.body;
    const iife = ast.body.length === 1 && only.type === 'ExpressionStatement' &&
      only.expression.type === 'CallExpression' && only.expression.callee.type === 'FunctionExpression';
    assert.ok(iife, `${rel}: top level is ${ast.body.map((n) => n.type).join(', ')}`);
  });

  const forbidden = FORBIDDEN.filter((word) => !(ALLOWED[rel] || []).includes(word));
  test(`${rel} does not use ${forbidden.join(', ')}`, () => {
    const source = fs.readFileSync(file, 'utf8');
    const found = [];
    for (const token of acorn.tokenizer(source, { ecmaVersion: 5, locations: true })) {
      const isName = token.type.label === 'name';
      const isString = token.type.label === 'string';
      if ((isName || isString) && forbidden.includes(token.value)) {
        found.push(`${rel}:${token.loc.start.line}: ${token.value}`);
      }
    }
    // Also a plain grep over the code with comments removed, in case a
    // name is assembled in a way the token scan does not see.
    const code = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"\\])\/\/.*$/gm, '$1');
    for (const word of forbidden) {
      const re = new RegExp(`\\b${word}\\b`);
      if (re.test(code) && !found.some((f) => f.endsWith(`: ${word}`))) {
        found.push(`${rel}: ${word} (grep)`);
      }
    }
    assert.deepEqual(found, [], 'forbidden APIs referenced');
  });
}

test('the ES5 check rejects ES2015 syntax (it is not vacuous)', () => {
  for (const snippet of ['let a = 1;', 'const b = 2;', 'var f = () => 1;', 'class C {}',
    'var s = `t`;', 'var {a} = o;', 'function g(x = 1) {}', 'for (var x of y) {}']) {
    assert.throws(() => acorn.parse(snippet, { ecmaVersion: 5 }), SyntaxError, snippet);
  }
});

test('pages load nothing from other origins (no CDN, no web fonts)', () => {
  const files = [...publicFiles('.html'), ...publicFiles('.css'), ...JS_FILES];
  const external = [];
  for (const file of files) {
    const source = fs.readFileSync(file, 'utf8');
    const re = /(?:src|href)\s*=\s*["']?\s*(?:https?:)?\/\/|url\(\s*["']?(?:https?:)?\/\/|@import\s+["']?(?:url\()?\s*["']?(?:https?:)?\/\//gi;
    let m;
    while ((m = re.exec(source))) {
      external.push(`${path.relative(REPO, file)}: ${source.slice(m.index, m.index + 60)}`);
    }
  }
  assert.deepEqual(external, []);
});

test('index.html has no inline script or inline event handler', () => {
  const html = fs.readFileSync(path.join(PUBLIC, 'index.html'), 'utf8');
  const inline = html.match(/<script(?![^>]*\bsrc=)[^>]*>|\son[a-z]+\s*=/gi) || [];
  assert.deepEqual(inline, []);
});

// The page runs under a Content-Security-Policy without 'unsafe-inline' or
// 'unsafe-eval' (tests/browser/csp.test.js): the browser would refuse these.
test('index.html has no inline style and no javascript: URL', () => {
  const html = fs.readFileSync(path.join(PUBLIC, 'index.html'), 'utf8');
  const inline = html.match(/<style\b[^>]*>|\sstyle\s*=|javascript:/gi) || [];
  assert.deepEqual(inline, []);
});

test('no script compiles text into code (eval, Function, a string given to a timer)', () => {
  const found = [];
  for (const file of JS_FILES) {
    const rel = path.relative(REPO, file);
    const tokens = [...acorn.tokenizer(fs.readFileSync(file, 'utf8'), { ecmaVersion: 5, locations: true })];
    tokens.forEach((token, i) => {
      const name = token.type.label === 'name' ? token.value : null;
      const timerWithText = (name === 'setTimeout' || name === 'setInterval') &&
        tokens[i + 1] && tokens[i + 1].type.label === '(' &&
        tokens[i + 2] && tokens[i + 2].type.label === 'string';
      if (name === 'eval' || name === 'Function' || timerWithText) {
        found.push(`${rel}:${token.loc.start.line}: ${name}`);
      }
    });
  }
  assert.deepEqual(found, []);
});
