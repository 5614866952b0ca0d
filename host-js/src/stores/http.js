// Model store over HTTP(S): model names are URLs, bytes come from Range
// requests made with synchronous XMLHttpRequest (allowed, with binary
// responses, only in Web Workers). The server must answer `Range` with 206.
//
// Small reads (the GGUF header and metadata come as many small reads) go
// through a block cache, so they cost one request per block.
import { StoreError } from '../layer-store.js';

const BLOCK = 1 << 20;

function request(url, first, last) {
  const xhr = new XMLHttpRequest();
  xhr.open('GET', url, false);
  xhr.responseType = 'arraybuffer';
  xhr.setRequestHeader('Range', `bytes=${first}-${last}`);
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

class HttpBackend {
  #cache = new Map(); // block index -> Uint8Array

  constructor(url, size) {
    this.url = url;
    this.size = size;
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
    const xhr = request(this.url, offset, offset + len - 1);
    if (xhr.status !== 206) throw statusError(this.url, xhr);
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
    const m = /\/(\d+)\s*$/.exec(xhr.getResponseHeader('Content-Range') ?? '');
    if (!m) throw new StoreError('io', `cannot open '${name}': the server sent no total size in Content-Range`);
    return new HttpBackend(url, Number(m[1]));
  }
}
