#!/usr/bin/env node
// `npm run demo`: a small static server for the browser demo, with HTTP Range
// requests (the HttpRangeStore needs them). Serves host-js/ (demo/, src/, gen/,
// the WASI shim) and, under /models/, the GGUF files of a models directory
// ($WASM_CHORD_MODELS, else ~/.cache/wasm-chord/models).
//
// By default the pages are cross-origin isolated (COOP `same-origin`, COEP
// `require-corp`), so the demo may share memory between workers and runs one
// per tensor-parallel shard; `--no-isolation` serves without those headers
// (one worker).
//
//   node demo/server.mjs [--port 8080] [--models DIR] [--no-isolation]
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const PUBLIC = ['demo/', 'src/', 'gen/', 'node_modules/@bytecodealliance/preview2-shim/'];
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
};

export const DEFAULT_MODELS = process.env.WASM_CHORD_MODELS
  || path.join(process.env.WASM_CHORD_CACHE || path.join(os.homedir(), '.cache/wasm-chord'), 'models');

/** Parse a single `bytes=` range against `size`: [start, end] inclusive, or null if unsatisfiable. */
export function parseRange(header, size) {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return null;
  let start;
  let end;
  if (m[1] === '') {
    start = Math.max(0, size - Number(m[2]));
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  return start <= end && start < size ? [start, end] : null;
}

/** `rel` joined under `dir`, or null if it would leave it. */
function inside(dir, rel) {
  const base = path.resolve(dir);
  const p = path.resolve(base, rel);
  return p === base || p.startsWith(base + path.sep) ? p : null;
}

/** Resolve a URL path to a file we may serve, or null. */
export function resolve(urlPath, models) {
  let rel;
  try {
    rel = decodeURIComponent(urlPath).replace(/^\/+/, '');
  } catch {
    return null;
  }
  // '..' between either separator (Windows takes '\\' too), NUL, ':' (drives, streams).
  if (rel.split(/[\\/]/).includes('..') || rel.includes('\0') || rel.includes(':')) return null;
  if (rel.startsWith('models/')) return inside(models, rel.slice('models/'.length));
  if (rel === 'demo' || rel === '') rel = 'demo/';
  if (!PUBLIC.some((p) => rel.startsWith(p))) return null;
  return inside(ROOT, rel.endsWith('/') ? `${rel}index.html` : rel);
}

/** Pages on this machine only (any port) may read across origins, not any site. */
export function allowedOrigin(origin) {
  try {
    const u = new URL(origin);
    return u.protocol === 'http:' && ['127.0.0.1', 'localhost', '[::1]'].includes(u.hostname) ? origin : null;
  } catch {
    return null;
  }
}

/** The headers that make a page cross-origin isolated (SharedArrayBuffer, Atomics.wait in workers). */
export const ISOLATION_HEADERS = Object.freeze({
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
});

/**
 * Start the server. `range: false` makes it ignore Range headers (to test
 * the demo's error for servers without them); `isolated: true` sends the
 * cross-origin isolation headers on every response. Resolves to the http.Server.
 */
export function startServer({
  port = 8080, host = '127.0.0.1', models = DEFAULT_MODELS, range = true, isolated = false,
} = {}) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (isolated) {
      for (const [k, v] of Object.entries(ISOLATION_HEADERS)) res.setHeader(k, v);
    }
    const origin = req.headers.origin && allowedOrigin(req.headers.origin);
    if (origin) {
      res.setHeader('Access-Control-Allow-Origin', origin);
      res.setHeader('Vary', 'Origin');
    }
    res.setHeader('Access-Control-Allow-Headers', 'Range, If-Range');
    res.setHeader('Access-Control-Expose-Headers', 'Content-Range, Content-Length, Accept-Ranges, ETag');
    if (req.method === 'OPTIONS') return res.writeHead(204).end();
    if (req.method !== 'GET' && req.method !== 'HEAD') return res.writeHead(405).end();
    if (url.pathname === '/') return res.writeHead(302, { Location: '/demo/' }).end();
    const file = resolve(url.pathname, models);
    let st;
    try {
      st = file && fs.statSync(file);
    } catch {
      st = null;
    }
    if (!st || !st.isFile()) return res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');

    // The ETag pins the file for HttpRangeStore (If-Range): size and mtime.
    const etag = `"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
    const headers = {
      'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream',
      'Cache-Control': 'no-cache',
      ETag: etag,
    };
    let status = 200;
    let start = 0;
    let end = st.size - 1;
    if (range) {
      headers['Accept-Ranges'] = 'bytes';
      const ifRange = req.headers['if-range'];
      if (req.headers.range && (!ifRange || ifRange === etag)) {
        const r = parseRange(req.headers.range, st.size);
        if (!r) return res.writeHead(416, { 'Content-Range': `bytes */${st.size}` }).end();
        [start, end] = r;
        status = 206;
        headers['Content-Range'] = `bytes ${start}-${end}/${st.size}`;
      }
    }
    headers['Content-Length'] = String(Math.max(0, end - start + 1));
    res.writeHead(status, headers);
    if (req.method === 'HEAD' || st.size === 0) return res.end();
    fs.createReadStream(file, { start, end }).pipe(res);
  });
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, () => ok(server));
  });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const opt = (name, dflt) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : dflt;
  };
  const models = opt('--models', DEFAULT_MODELS);
  const isolated = !args.includes('--no-isolation');
  const server = await startServer({ port: Number(opt('--port', process.env.PORT || 8080)), models, isolated });
  const { port } = server.address();
  console.log(`wasm-chord demo: http://127.0.0.1:${port}/demo/ (${isolated
    ? 'cross-origin isolated: one worker per shard' : 'not cross-origin isolated: one worker'})`);
  console.log(`models from ${models} at http://127.0.0.1:${port}/models/<file>.gguf`);
}
