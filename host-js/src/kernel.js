// The jco-transpiled kernel with a small convenience layer: feature checks,
// defaults like the native CLI's, one-line error messages, timed generation.
import { kernelState, setModelStore } from './layer-store.js';

/** Smallest module using a SIMD128 instruction (i8x16.splat): the kernel is built with +simd128. */
const SIMD128_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11,
]);

/**
 * A module with the two relaxed-SIMD instructions the relaxed kernel build
 * depends on, on the constants [-128, -100, 50, 127] · [15, 7, 3, 1]: export
 * `f` returns lane 0 of i32x4.relaxed_dot_i8x16_i7x16_add_s (0xfd 0x113) with
 * 1000 added (-1343), `g` lane 0 of i16x8.relaxed_dot_i8x16_i7x16_s
 * (0xfd 0x112): -128 * 15 - 100 * 7 = -2620.
 */
const RELAXED_DOT_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 127, 3, 3, 2, 0, 0, 7, 9, 2, 1,
  102, 0, 0, 1, 103, 0, 1, 10, 109, 2, 62, 0, 253, 12, 128, 156, 50, 127, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 253, 12, 15, 7, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  253, 12, 232, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 253, 147, 2, 253, 27, 0,
  11, 44, 0, 253, 12, 128, 156, 50, 127, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 253, 12, 15,
  7, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 253, 146, 2, 253, 24, 0, 11,
]);

/**
 * Whether relaxed SIMD's dots validate and compute the exact sums. Validating
 * is not enough: Node 20's experimental relaxed SIMD
 * (--experimental-wasm-relaxed-simd) validates the dot but returns another
 * number (measured: -4686), where Chromium 156 returns -1343.
 */
function relaxedDotWorks() {
  if (!WebAssembly.validate(RELAXED_DOT_PROBE)) return false;
  try {
    const { exports } = new WebAssembly.Instance(new WebAssembly.Module(RELAXED_DOT_PROBE));
    return exports.f() === -1343 && exports.g() === -2620;
  } catch {
    return false;
  }
}

/**
 * What this engine supports, found with WebAssembly.validate: `simd128`, and
 * `relaxedSimd` when relaxed SIMD validates and its dot computes exactly.
 */
export function wasmFeatures() {
  return {
    simd128: WebAssembly.validate(SIMD128_PROBE),
    relaxedSimd: relaxedDotWorks(),
  };
}

let loaded = null;
// Whether gen/relaxed/ exists (its marker module, written by `npm run build`),
// found on the first kernel() call. Not a top-level await: a module worker
// whose imports suspend at one registers its `onmessage` late, and the page's
// first messages to it are lost (the browser's shard workers waited forever).
let relaxedBuilt = null;

/** Whether to take the relaxed build: the engine validates it and it was built. */
async function relaxedChoice(validates) {
  if (!validates) return false;
  if (relaxedBuilt === null) {
    relaxedBuilt = await import('../gen/relaxed.js').then((m) => m.built === true, () => false);
  }
  return relaxedBuilt;
}

let build = null; // which kernel build the live instance is

/** The kernel build `kernel()` took: 'relaxed-simd', 'simd128', or null before the first call. */
export function kernelBuild() {
  return build;
}

let instances = 0; // kernel instances created so far (more than one after a trap)
let live = 0; // the number of the live instance

/**
 * Whether `e`, thrown by a kernel call, leaves the instance unusable: a trap
 * (WebAssembly.RuntimeError, or a RangeError such as a stack overflow) or
 * anything else that unwound through the wasm frames. The kernel's own
 * `error` results (jco's errors with a `payload`) leave it intact, and so do
 * the TypeErrors jco throws for arguments of the wrong type (before the call).
 */
function isTrap(e) {
  if (e instanceof WebAssembly.RuntimeError || e instanceof RangeError) return true;
  const payload = e && typeof e === 'object' && e.payload && typeof e.payload === 'object' && 'tag' in e.payload;
  return !payload && !(e instanceof TypeError);
}

/** Every method of the kernel's classes, checked against poisoning. */
function watch(inference, id) {
  const guard = (fn, name) => function guarded(...args) {
    if (id !== live || kernelState.poisoned) {
      throw new Error(`the kernel trapped earlier and its instance was dropped: call kernel() again and reload the model (${name})`);
    }
    try {
      return fn.apply(this, args);
    } catch (e) {
      if (isTrap(e)) kernelState.poisoned = true;
      throw e;
    }
  };
  for (const cls of Object.values(inference)) {
    if (typeof cls !== 'function' || !cls.prototype) continue;
    for (const target of [cls, cls.prototype]) {
      for (const key of [...Object.getOwnPropertyNames(target), ...Object.getOwnPropertySymbols(target)]) {
        if (key === 'constructor' || key === 'prototype' || key === 'length' || key === 'name') continue;
        const d = Object.getOwnPropertyDescriptor(target, key);
        if (typeof d.value !== 'function' || !d.writable) continue;
        // Dropping an object of a dead instance is a no-op, like the native host's.
        const dispose = key === Symbol.dispose;
        const fn = d.value;
        const g = guard(fn, `${cls.name}.${String(key)}`);
        target[key] = dispose ? function disposeGuarded() {
          if (id !== live || kernelState.poisoned) return undefined;
          return g.apply(this, arguments);
        } : g;
      }
    }
  }
  return inference;
}

/** Number of kernel instances created so far (more than one after a trap). */
export function kernelInstances() {
  return instances;
}

/**
 * The kernel's `inference` exports (Model, Session, Generation), compiled once.
 * `store` becomes the model store the kernel's `layer-store` import reads from.
 * Types: jco's declarations in gen/interfaces/wasm-chord-runtime-inference.d.ts.
 *
 * If a kernel call traps, that instance is dropped (as the native host does):
 * the call throws, objects made by it throw a clear error from then on, and
 * the next `kernel()` returns a fresh instance on which models are loaded again.
 * @param {{ open(name: string): { size: number, readInto(offset: number, dest: Uint8Array): void } }} [store]
 * @returns {Promise<typeof import('../gen/interfaces/wasm-chord-runtime-inference.js')>}
 */
export async function kernel(store) {
  if (store) setModelStore(store);
  if (!loaded || kernelState.poisoned) {
    const features = wasmFeatures();
    if (!features.simd128) {
      throw new Error('this JavaScript engine lacks WebAssembly SIMD128, which the kernel needs (Node 16.4+, Chrome 91+, Firefox 89+, Safari 16.4+)');
    }
    // Node and bundlers resolve the shim's bare specifiers; a plain browser
    // worker (no import maps) takes the build whose WASI imports are paths.
    // The relaxed-SIMD build where the engine validates it (and `npm run
    // build` made it), else the simd128 one.
    // `loaded` is set before any await, so concurrent calls share one instance.
    const id = ++instances;
    kernelState.poisoned = false;
    live = id;
    loaded = relaxedChoice(features.relaxedSimd).then((relaxed) => {
      build = relaxed ? 'relaxed-simd' : 'simd128';
      const dir = relaxed ? '../gen/relaxed' : '../gen';
      const gen = typeof process !== 'undefined' && process.versions?.node
        ? `${dir}/kernel.js`
        : `${dir}/browser/kernel.js`;
      // A module is instantiated once per URL: a fresh instance takes a new query.
      return import(id === 1 ? gen : `${gen}?instance=${id}`);
    }).then((m) => watch(m.inference, id));
    loaded.catch(() => {
      if (live === id) loaded = null;
    });
  }
  return loaded;
}

/** Sampling defaults of the native CLI (llama.cpp's). */
export const DEFAULT_SAMPLING = Object.freeze({
  temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05, repeatPenalty: 1.0, repeatLastN: 64, seed: 0n,
});

/**
 * `load-options` for `model` with the kernel's defaults.
 * @returns {import('../gen/interfaces/wasm-chord-runtime-inference.js').LoadOptions}
 */
export function loadOptions(model, o = {}) {
  return {
    model,
    residency: o.residency ?? 'auto',
    maxMemory: BigInt(o.maxMemory ?? 0),
    cacheLayers: o.cacheLayers ?? 0,
    cachePolicy: o.cachePolicy ?? 'pinned',
    kvCache: o.kvCache ?? 'f16',
  };
}

/**
 * `generate-options` from plain numbers (seed may be a number).
 * @returns {import('../gen/interfaces/wasm-chord-runtime-inference.js').GenerateOptions}
 */
export function generateOptions(o = {}) {
  const s = { ...DEFAULT_SAMPLING, ...(o.sampling ?? {}) };
  s.seed = BigInt(s.seed);
  return { maxTokens: o.maxTokens ?? 128, sampling: s, ignoreEos: !!o.ignoreEos, stop: o.stop ?? [] };
}

function storeMessage(e) {
  switch (e.tag) {
    case 'not-found': return e.val;
    case 'out-of-range': return `layer store: out of range: ${e.val}`;
    case 'io': return `layer store: I/O error: ${e.val}`;
    case 'too-large': return `layer store: request of ${e.val} bytes is too large`;
    default: return `layer store: ${JSON.stringify(e)}`;
  }
}

const PREFIX = {
  'invalid-model': 'invalid model',
  unsupported: 'unsupported',
  'context-full': 'context full',
  'invalid-input': 'invalid input',
  'out-of-memory': 'out of memory',
};

/** One line for any error a kernel call throws (worded like the native host). */
export function errorMessage(err) {
  const p = err?.payload;
  if (p && typeof p === 'object' && 'tag' in p) {
    if (p.tag === 'store') return storeMessage(p.val);
    if (PREFIX[p.tag]) return `${PREFIX[p.tag]}: ${p.val}`;
  }
  if (err instanceof WebAssembly.RuntimeError) return `the kernel trapped: ${err.message}`;
  return String(err?.message ?? err).split('\n')[0];
}

/**
 * Generate from `prompt` (token ids) in `session`, calling `onPiece(piece)`
 * for every token; `onPiece` returning `false` stops early. Returns timings
 * like the native host's (`n` generated tokens take `n - 1` evaluations).
 */
export function generate(session, prompt, options, onPiece) {
  let t = performance.now();
  const gen = session.generate(Uint32Array.from(prompt), options);
  const promptMs = performance.now() - t;
  let generated = 0;
  let stopReason;
  t = performance.now();
  try {
    for (;;) {
      const piece = gen.next();
      if (!piece) break;
      generated++;
      if (onPiece(piece) === false) {
        stopReason = 'cancelled';
        break;
      }
    }
    stopReason ??= gen.stopReason() ?? 'length';
  } finally {
    gen[Symbol.dispose]?.();
  }
  return timings(prompt.length, promptMs, generated, performance.now() - t, stopReason);
}

/** The stats of one generation, with rates. */
export function timings(promptTokens, promptMs, generatedTokens, generationMs, stopReason) {
  const rate = (n, ms) => (n > 0 && ms > 0 ? n / (ms / 1e3) : 0);
  return {
    promptTokens,
    promptMs,
    promptTokensPerSecond: rate(promptTokens, promptMs),
    generatedTokens,
    generationMs,
    generatedTokensPerSecond: rate(Math.max(0, generatedTokens - 1), generationMs),
    stopReason,
  };
}
