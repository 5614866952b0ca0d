// HttpRangeStore against a local server that misbehaves: a 206 for another
// range than asked, a wrong total size, a file replaced after open (with and
// without a proxy that ignores If-Range). Node has no synchronous
// XMLHttpRequest: a small stand-in makes each request with fetch in a child
// process, and the server runs in a worker thread (the main thread blocks).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { HttpRangeStore, StoreError } from '../src/index.js';

const SIZE = 3 << 20;
const byteAt = (i, version) => (i * 7 + (i >> 11) + version * 13) & 255;

const SERVER = `
const http = require('node:http');
const { parentPort } = require('node:worker_threads');
const SIZE = ${SIZE};
const byteAt = ${byteAt.toString()};
const files = { 1: Buffer.alloc(SIZE), 2: Buffer.alloc(SIZE) };
for (const v of [1, 2]) for (let i = 0; i < SIZE; i++) files[v][i] = byteAt(i, v);
const served = new Map(); // path -> requests so far
const server = http.createServer((req, res) => {
  const [, mode] = req.url.split('/');
  const n = (served.get(req.url) ?? 0) + 1;
  served.set(req.url, n);
  // 'changing' and 'proxy': the file is replaced after the first two requests.
  const version = (mode === 'changing' || mode === 'proxy') && n > 2 ? 2 : 1;
  const etag = '"v' + version + '"';
  const m = /^bytes=(\\d+)-(\\d+)$/.exec(req.headers.range ?? '');
  const ifRange = req.headers['if-range'];
  const headers = { ETag: etag, 'Accept-Ranges': 'bytes' };
  if (!m || (ifRange && ifRange !== etag && mode !== 'proxy')) {
    res.writeHead(200, { ...headers, 'Content-Length': SIZE });
    return res.end(files[version]);
  }
  let first = Number(m[1]);
  let last = Math.min(Number(m[2]), SIZE - 1);
  let total = SIZE;
  if (mode === 'shifted' && first > 0) { last -= first; first = 0; } // right length, wrong place
  if (mode === 'total' && n > 1) total = SIZE + 1;
  res.writeHead(206, { ...headers, 'Content-Range': 'bytes ' + first + '-' + last + '/' + total });
  res.end(files[version].subarray(first, last + 1));
});
server.listen(0, '127.0.0.1', () => parentPort.postMessage(server.address().port));
parentPort.on('message', () => server.close(() => process.exit(0)));
`;

const FETCH = `
const { url, headers } = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));
fetch(url, { headers }).then(async (r) => {
  const body = Buffer.from(await r.arrayBuffer()).toString('base64');
  process.stdout.write(JSON.stringify({ status: r.status, statusText: r.statusText, headers: Object.fromEntries(r.headers), body }));
}, (e) => process.stdout.write(JSON.stringify({ status: 0, statusText: String(e), headers: {}, body: '' })));
`;

/** Synchronous XMLHttpRequest, as much of it as the store uses. */
class SyncXhr {
  #url;
  #headers = {};
  #r = null;
  responseType = '';
  open(method, url, async) {
    assert.equal(method, 'GET');
    assert.equal(async, false);
    this.#url = url;
  }
  setRequestHeader(k, v) {
    this.#headers[k] = v;
  }
  send() {
    const out = spawnSync(process.execPath, ['-e', FETCH], {
      input: JSON.stringify({ url: this.#url, headers: this.#headers }), maxBuffer: 64 << 20,
    });
    this.#r = JSON.parse(out.stdout.toString());
  }
  get status() { return this.#r.status; }
  get statusText() { return this.#r.statusText; }
  get response() { return Uint8Array.from(Buffer.from(this.#r.body, 'base64')).buffer; }
  getResponseHeader(k) { return this.#r.headers[k.toLowerCase()] ?? null; }
}

let worker;
let base;
before(async () => {
  globalThis.XMLHttpRequest = SyncXhr;
  worker = new Worker(SERVER, { eval: true });
  const port = await new Promise((resolve) => worker.once('message', resolve));
  base = `http://127.0.0.1:${port}/`;
});
after(() => {
  delete globalThis.XMLHttpRequest;
  worker.postMessage('stop');
});

const read = (backend, offset, len) => {
  const dest = new Uint8Array(len);
  backend.readInto(offset, dest);
  return dest;
};
const expected = (offset, len, version = 1) => Uint8Array.from({ length: len }, (_, i) => byteAt(offset + i, version));
const storeError = (re) => (e) => e instanceof StoreError && e.payload.tag === 'io' && re.test(e.message);

test('http store: a well-behaved server serves small and large reads', () => {
  const b = new HttpRangeStore(base).open('good/m.gguf');
  assert.equal(b.size, SIZE);
  assert.deepEqual(read(b, 5, 100), expected(5, 100));
  assert.deepEqual(read(b, (1 << 20) + 3, 1 << 20), expected((1 << 20) + 3, 1 << 20));
});

test('http store: a 206 of the right length for another range is refused', () => {
  const b = new HttpRangeStore(base).open('shifted/m.gguf');
  assert.throws(() => read(b, 1 << 20, 1 << 20), storeError(/asked bytes 1048576-2097151\/3145728, the server sent "bytes 0-1048575\/3145728"/));
});

test('http store: a 206 with another total size is refused', () => {
  const b = new HttpRangeStore(base).open('total/m.gguf');
  assert.throws(() => read(b, 0, 10), storeError(/the server sent "bytes 0-65535\/3145729"/));
});

test('http store: a file replaced after open is detected (If-Range honoured, or ignored by a proxy)', () => {
  for (const mode of ['changing', 'proxy']) {
    const b = new HttpRangeStore(base).open(`${mode}/m.gguf`);
    assert.deepEqual(read(b, 0, 64), expected(0, 64)); // request 2: still the same file
    assert.throws(() => read(b, 2 << 20, 1 << 20), storeError(/the file changed on the server since it was opened \(ETag "v1"\)/), mode);
  }
});
