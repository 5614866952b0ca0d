// The kernel's `wasm-chord:runtime/layer-store` import, for jco.
//
// `npm run build` transpiles the kernel with
// `--map wasm-chord:runtime/layer-store=../src/layer-store.js`, so the
// generated gen/kernel.js imports `open`, `isEnabled` and `Source` from here.
// Which bytes are served is decided by the *model store* set with
// `setModelStore` (a Node file, an ArrayBuffer, a Blob, an HTTP URL...).
//
// A model store is `{ open(name) -> backend }`; a backend is
// `{ size: number, readInto(offset: number, dest: Uint8Array): void }`,
// synchronous (the import is synchronous), and may add `prefetch(offset, len)`
// and `close()`. Backends throw `StoreError` to report failures; anything else
// they throw becomes a `store-error` too (`io`, or `not-found` from `open`):
// nothing thrown by a store may unwind through the kernel's wasm frames.

/** Largest single request served (bytes), like the native host's default. */
export const MAX_REQUEST = 2 ** 31;

/**
 * A `store-error` of the WIT. jco turns a thrown error that carries a
 * `payload` into the `err` case of the import's `result`.
 */
export class StoreError extends Error {
  /** @param {'not-found'|'out-of-range'|'io'|'too-large'} tag @param {string|bigint} val */
  constructor(tag, val) {
    super(tag === 'too-large' ? `request of ${val} bytes is too large` : String(val));
    this.name = 'StoreError';
    Object.defineProperty(this, 'payload', { value: { tag, val } });
  }
}

/**
 * Shared with kernel.js: `poisoned` is set when a kernel call traps. A trap in
 * a kernel call made from inside a store (re-entering the kernel) must reach
 * the outer call as the trap it is, not as a store error.
 */
export const kernelState = { poisoned: false };

/**
 * Run `f`, turning anything it throws other than a `StoreError` into one
 * (tag `tag`, the thrown value's first line as the message).
 */
function guarded(tag, f) {
  try {
    return f();
  } catch (e) {
    if (e instanceof StoreError || kernelState.poisoned) throw e;
    const msg = String(e?.message ?? e).split('\n')[0] || String(e?.name ?? 'error');
    throw new StoreError(tag, msg);
  }
}

let current = null;

/** Choose the model store the kernel reads from (before `Model.load`). */
export function setModelStore(store) {
  current = store;
}

/** The model store in use. */
export function modelStore() {
  return current;
}

const nowNs = typeof process !== 'undefined' && process.hrtime
  ? () => process.hrtime.bigint()
  : () => BigInt(Math.round(performance.now() * 1e6));

/** An opened model: the WIT resource `source`. */
export class Source {
  #backend;
  #size;
  #stats = { bytesServed: 0n, reads: 0n, layerLoads: 0n, readNanos: 0n, maxOffsetServed: 0n };

  constructor(backend) {
    this.#backend = backend;
    const size = guarded('io', () => backend.size);
    if (!(typeof size === 'bigint' ? size >= 0n : Number.isSafeInteger(size) && size >= 0)) {
      throw new StoreError('io', `the store reported an invalid size (${String(size)})`);
    }
    this.#size = BigInt(size);
  }

  size() {
    return this.#size;
  }

  read(offset, len) {
    return guarded('io', () => this.#read(offset, len));
  }

  #read(offset, len) {
    const t = nowNs();
    const buf = new Uint8Array(this.#checkLen(len));
    this.#fill(offset, len, buf);
    this.#count(t, len, offset + len);
    this.#stats.reads++;
    return buf;
  }

  loadLayer(layer, ranges) {
    return guarded('io', () => this.#loadLayer(layer, ranges));
  }

  #loadLayer(layer, ranges) {
    const t = nowNs();
    let total = 0n;
    let end = 0n;
    for (const r of ranges) {
      total += r.len;
      if (r.offset + r.len > end) end = r.offset + r.len;
    }
    const buf = new Uint8Array(this.#checkLen(total));
    let at = 0;
    for (const r of ranges) {
      this.#fill(r.offset, r.len, buf.subarray(at, at + Number(r.len)));
      at += Number(r.len);
    }
    this.#count(t, total, end);
    this.#stats.layerLoads++;
    return buf;
  }

  prefetch(_layer, ranges) {
    if (!this.#backend.prefetch) return;
    // A hint: a failing prefetch is ignored (it has no error to return).
    try {
      for (const r of ranges) {
        if (r.offset + r.len <= this.#size) this.#backend.prefetch(Number(r.offset), Number(r.len));
      }
    } catch {
      // ignored
    }
  }

  stats() {
    return { totalBytes: this.#size, ...this.#stats, memory64: isEnabled() };
  }

  #checkLen(len) {
    if (len > BigInt(MAX_REQUEST)) throw new StoreError('too-large', len);
    return Number(len);
  }

  #fill(offset, len, dest) {
    if (offset + len > this.#size) {
      throw new StoreError(
        'out-of-range',
        `range ${offset}..${offset + len} is outside the source (${this.#size} bytes)`,
      );
    }
    if (len > 0n) this.#backend.readInto(Number(offset), dest);
  }

  #count(started, bytes, end) {
    const s = this.#stats;
    s.bytesServed += bytes;
    s.readNanos += nowNs() - started;
    if (end > s.maxOffsetServed) s.maxOffsetServed = end;
    // A progress hook that throws must not fail the read.
    try {
      current?.onServed?.(s.bytesServed, this.#size);
    } catch {
      // ignored
    }
  }
}

const opened = new Map(); // name -> the Source most recently opened for it

/** WIT `open`: ask the model store for `name`. */
export function open(name) {
  if (!current) throw new StoreError('not-found', `no model store is set (cannot open '${name}')`);
  const store = current;
  const source = new Source(guarded('not-found', () => store.open(name)));
  opened.set(name, source);
  return source;
}

/** Counters of the source most recently opened for `name`, if any (like the native `store_stats`). */
export function sourceStats(name) {
  return opened.get(name)?.stats();
}

/**
 * WIT `is-enabled`: whether the model store serves offsets beyond 4 GiB (then
 * the kernel streams models larger than its memory). A store says so with a
 * `memory64: true` property (NodeFileStore); others keep models below 3.5 GiB.
 */
export function isEnabled() {
  return current?.memory64 === true;
}
