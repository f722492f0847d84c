'use strict';
// Fixtures for the cluster browser test: a scratch redis-server and an nginx
// that sends each request to a node picked at random, each on a free port in
// a temporary directory of its own (never the system's Redis or nginx
// configuration). The parlor nodes themselves come from helpers.startServer.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { REPO, eventually } = require('./helpers');

const REDIS_BIN = process.env.PARLOR_REDIS_SERVER || 'redis-server';
const NGINX_BIN = process.env.PARLOR_NGINX || '/usr/sbin/nginx';

/** Processes still running, killed on exit even if a test forgot. */
const live = new Set();
process.on('exit', () => {
  for (const child of live) {
    try { child.kill('SIGKILL'); } catch { /* gone */ }
  }
});

/** A port nothing listens on right now. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Whether something at `port` answers `PING` with `+PONG`. */
function pong(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let seen = '';
    const done = (ok) => { socket.destroy(); resolve(ok); };
    socket.setTimeout(1000, () => done(false));
    socket.once('error', () => done(false));
    socket.on('data', (chunk) => {
      seen += chunk;
      if (seen.includes('\r\n')) { done(seen.startsWith('+PONG')); }
    });
    socket.once('connect', () => socket.write('PING\r\n'));
  });
}

/** Whether something accepts TCP connections at `port`. */
function accepting(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

/** Spawns `bin`, keeping its output (for failure messages) and tracking it for exit. */
function start(bin, args, what) {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let log = '';
  const keep = (chunk) => { log = (log + chunk).slice(-20000); };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((resolve) => {
    child.once('error', (err) => { live.delete(child); resolve({ error: err }); });
    child.once('exit', (code, signal) => { live.delete(child); resolve({ code, signal }); });
  });
  return {
    child,
    exited,
    log: () => log,
    async waitFor(ready) {
      let gone = null;
      exited.then((how) => { gone = how; });
      await eventually(`${what} to start`, async () => {
        if (gone) {
          throw new Error(`${what} exited (${gone.error ? gone.error.message : gone.code ?? gone.signal}): ${log}`
            + (gone.error ? ` (is it installed? scripts/test.sh installs it)` : ''));
        }
        return ready();
      });
    },
    async stop() {
      if (!live.has(child)) { return exited; }
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      const how = await exited;
      clearTimeout(timer);
      return how;
    },
  };
}

/** A redis-server on a free port, its data (AOF, fsync always) in its own directory. */
async function startRedis() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'parlor-browser-redis-'));
  const port = await freePort();
  const redis = start(REDIS_BIN, [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '',
    '--appendonly', 'yes', '--appendfsync', 'always', '--protected-mode', 'no',
  ], 'redis-server');
  await redis.waitFor(() => pong(port));
  return {
    url: `redis://127.0.0.1:${port}/0`,
    async stop() {
      await redis.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * nginx in front of `nodes` (addresses), choosing one at random for each
 * request (`random;`), with the shipped proxy settings and the shipped
 * cluster file's failover (a node that refuses is skipped for 5 s; a request
 * that never reached it, or a poll whose node died, goes to another). Its
 * access log records which node served each request.
 */
async function startRandomBalancer(nodes) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'parlor-browser-nginx-'));
  const port = await freePort();
  const servers = nodes.map((addr) => `    server ${addr} max_fails=1 fail_timeout=5s;`).join('\n');
  const conf = `daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 512; }
http {
  log_format node '$upstream_addr|$request_method|$uri|$status';
  access_log ${dir}/access.log node;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream parlor_cluster {
    random;
${servers}
    keepalive 16;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://parlor_cluster;
      include ${path.join(REPO, 'contrib', 'nginx', 'parlor-proxy.conf')};
      proxy_next_upstream error timeout;
      proxy_next_upstream_tries 3;
      proxy_connect_timeout 2s;
    }
  }
}
`;
  fs.writeFileSync(path.join(dir, 'nginx.conf'), conf);
  if (!fs.existsSync(NGINX_BIN)) {
    throw new Error(`${NGINX_BIN} is missing: install Debian's nginx (scripts/test.sh does) or set PARLOR_NGINX`);
  }
  const nginx = start(NGINX_BIN, ['-p', dir, '-e', path.join(dir, 'error.log'), '-c', path.join(dir, 'nginx.conf')], 'nginx');
  await nginx.waitFor(() => accepting(port));
  return {
    url: `http://127.0.0.1:${port}`,
    /** `{ node, method, path, status }` of every request answered so far (the node that answered). */
    requests() {
      const file = path.join(dir, 'access.log');
      if (!fs.existsSync(file)) { return []; }
      return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((line) => {
        // A request retried on another node lists every node it tried.
        const [nodes, method, uri, status] = line.split('|');
        return { node: nodes.split(', ').pop(), method, path: uri, status: Number(status) };
      });
    },
    async stop() {
      await nginx.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

module.exports = { freePort, startRedis, startRandomBalancer };
