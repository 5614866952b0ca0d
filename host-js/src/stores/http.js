// Model store over HTTP(S): model names are URLs, bytes come from Range
// requests made with synchronous XMLHttpRequest (allowed, with binary
// responses, only in Web Workers). The server must answer `Range` with 206.
//
// Small reads (the GGUF header and metadata come as many small reads) go
// through a block cache, so they cost one request per block. Blocks are
// 64 KiB, not larger: a tensor-parallel shard reads only its rows of most
// tensors, and a block reaching into the next tensor's rows would fetch
// bytes of the other shards (reads of a block or more are fetched exactly).
//
// Every 206 must carry the `Content-Range` asked for (same first and last
// byte, same total size), and the file is pinned at open: its strong `ETag`
// (else `Last-Modified`) is sent as `If-Range` (same-origin) and must come
// back unchanged on every response,
// so a proxy or a file replaced meanwhile cannot mix bytes of two files.
import { StoreError } from '../layer-store.js';

const BLOCK = 1 << 16;

// `If-Range` is not a CORS-safelisted header: cross-origin it would need the
// server's preflight consent, so there the returned validator alone is checked.
function sameOrigin(url) {
  const here = globalThis.location?.origin;
  return !here || new URL(url).origin === here;
}

function request(url, first, last, validator) {
  const xhr = new XMLHttpRequest();
  xhr.open('GET', url, false);
  xhr.responseType = 'arraybuffer';
  xhr.setRequestHeader('Range', `bytes=${first}-${last}`);
  if (validator && sameOrigin(url)) xhr.setRequestHeader('If-Range', validator.value);
  try {
    xhr.send();
  } catch (e) {
    throw new StoreError('io', `cannot fetch '${url}': ${e.message || 'network error'}`);
  }
  return xhr;
}

function statusError(url, xhr) {
  if (xhr.status === 404 || xhr.status === 410) {
    return new StoreError('not-found', `cannot open '${url}': HTTP ${xhr.status} (not found)`);
  }
  if (xhr.status === 200) {
    return new StoreError('io', `cannot open '${url}': the server does not support HTTP Range requests (answered 200, not 206)`);
  }
  if (xhr.status === 0) {
    return new StoreError('not-found', `cannot open '${url}': network error (is the server up, does it allow CORS?)`);
  }
  return new StoreError('io', `cannot open '${url}': HTTP ${xhr.status} ${xhr.statusText}`);
}

/** `Content-Range: bytes FIRST-LAST/TOTAL` as numbers, or null. */
function contentRange(xhr) {
  const m = /^\s*bytes\s+(\d+)-(\d+)\/(\d+)\s*$/i.exec(xhr.getResponseHeader('Content-Range') ?? '');
  return m ? { first: Number(m[1]), last: Number(m[2]), total: Number(m[3]) } : null;
}

/** What pins the file: a strong ETag, else Last-Modified, else nothing. */
function validatorOf(xhr) {
  const etag = xhr.getResponseHeader('ETag');
  if (etag && !etag.trim().startsWith('W/')) return { header: 'ETag', value: etag.trim() };
  const modified = xhr.getResponseHeader('Last-Modified');
  if (modified) return { header: 'Last-Modified', value: modified.trim() };
  return null;
}

class HttpBackend {
  #cache = new Map(); // block index -> Uint8Array

  constructor(url, size, validator) {
    this.url = url;
    this.size = size;
    this.validator = validator;
  }

  readInto(offset, dest) {
    if (dest.length >= BLOCK) {
      dest.set(this.#fetch(offset, dest.length));
      return;
    }
    let at = 0;
    while (at < dest.length) {
      const pos = offset + at;
      const block = this.#block(Math.floor(pos / BLOCK));
      const from = pos % BLOCK;
      const n = Math.min(dest.length - at, block.length - from);
      dest.set(block.subarray(from, from + n), at);
      at += n;
    }
  }

  #block(i) {
    let b = this.#cache.get(i);
    if (!b) {
      const start = i * BLOCK;
      b = this.#fetch(start, Math.min(BLOCK, this.size - start));
      if (this.#cache.size >= 16) this.#cache.delete(this.#cache.keys().next().value);
      this.#cache.set(i, b);
    }
    return b;
  }

  #fetch(offset, len) {
    const last = offset + len - 1;
    const xhr = request(this.url, offset, last, this.validator);
    const v = this.validator;
    if (v && (xhr.status === 200 || xhr.getResponseHeader(v.header)?.trim() !== v.value)) {
      throw new StoreError('io', `cannot read '${this.url}': the file changed on the server since it was opened (${v.header} ${v.value})`);
    }
    if (xhr.status !== 206) throw statusError(this.url, xhr);
    const r = contentRange(xhr);
    if (!r || r.first !== offset || r.last !== last || r.total !== this.size) {
      const got = xhr.getResponseHeader('Content-Range') ?? 'no Content-Range';
      throw new StoreError('io', `cannot read '${this.url}': asked bytes ${offset}-${last}/${this.size}, the server sent ${JSON.stringify(got)}`);
    }
    const bytes = new Uint8Array(xhr.response);
    if (bytes.length !== len) {
      throw new StoreError('io', `cannot read '${this.url}': asked ${len} bytes at ${offset}, got ${bytes.length}`);
    }
    return bytes;
  }
}

/** Opens models by URL (relative URLs resolve against `base`). */
export class HttpRangeStore {
  constructor(base = globalThis.location?.href) {
    this.base = base;
  }

  open(name) {
    if (typeof XMLHttpRequest === 'undefined') {
      throw new StoreError('io', 'the HTTP store needs XMLHttpRequest (run it in a Web Worker)');
    }
    const url = new URL(name, this.base).href;
    // Probe with the first byte: a 206 carries the total size in Content-Range.
    const xhr = request(url, 0, 0);
    if (xhr.status !== 206) throw statusError(name, xhr);
    const r = contentRange(xhr);
    if (!r) throw new StoreError('io', `cannot open '${name}': the server sent no total size in Content-Range`);
    if (r.first !== 0 || r.last !== 0 || !Number.isSafeInteger(r.total)) {
      throw new StoreError('io', `cannot open '${name}': asked bytes 0-0, the server sent ${JSON.stringify(xhr.getResponseHeader('Content-Range'))}`);
    }
    return new HttpBackend(url, r.total, validatorOf(xhr));
  }
}
