// The kernel runs here, in a module Web Worker: its layer-store import is
// synchronous, and workers may read Blobs (FileReaderSync) and URLs
// (synchronous XHR with Range) synchronously without freezing the page.
//
// With cross-origin isolation the page runs one such worker per tensor-parallel
// shard (src/shards.js): each loads only its shard (`shard`), then all get the
// SharedArrayBuffer (`attach`); shard 0 (the leader) answers `generate`, the
// others block in the exchange (`follow`) until the page terminates them.
//
// Messages in:  {type:'load', file?: File, url?: string, shard?: {index, count}}
//               {type:'attach', sab} {type:'follow'} (shards only)
//               {type:'generate', prompt?: string, messages?: [{role, content}], options}
//               {type:'stop'} (one worker; shards stop through the shared buffer)
// Messages out: {type:'progress', loaded, total} {type:'loaded', info, ms, shard?}
//               {type:'attached'}
//               {type:'prompt', tokens} {type:'piece', token, text, tokensPerSecond}
//               {type:'done', stats} {type:'error', message, fatal}
import {
  kernel, kernelBuild, loadOptions, generateOptions, errorMessage, timings, BlobStore, HttpRangeStore, ShardHost,
} from '../src/index.js';

let model = null;
let shard = null; // a ShardHost in shard mode
let stopRequested = false;
let busy = false;

const post = (m) => self.postMessage(m);

/** Let queued messages (the stop button) in between tokens. */
const yieldToEvents = () => new Promise((r) => {
  const ch = new MessageChannel();
  ch.port1.onmessage = r;
  ch.port2.postMessage(null);
});

function fail(e) {
  // A trap (RuntimeError) leaves the instance unusable, and a failed exchange
  // the whole set of shards: the page starts new workers.
  const broken = shard?.exchange?.aborted ?? false;
  post({ type: 'error', message: errorMessage(e), fatal: e instanceof WebAssembly.RuntimeError || broken });
}

function withProgress(store) {
  let last = -1;
  store.onServed = (loaded, total) => {
    const pct = Math.floor((Number(loaded) / Number(total)) * 100);
    if (pct !== last) {
      last = pct;
      post({ type: 'progress', loaded: Number(loaded), total: Number(total) });
    }
  };
  return store;
}

async function load({ file, url, shard: spec }) {
  const t = performance.now();
  const store = file ? new BlobStore().insert(file.name, file) : new HttpRangeStore(url);
  // Progress from one worker only (the leader's, in shard mode).
  if (!spec || spec.index === 0) withProgress(store);
  const name = file ? file.name : url;
  const inference = await kernel(store);
  model?.[Symbol.dispose]();
  model = null;
  let shardInfo;
  if (spec) {
    shard = new ShardHost(inference);
    shardInfo = shard.load(loadOptions(name), spec.index, spec.count);
    model = shard.model;
  } else {
    model = inference.Model.load(loadOptions(name));
  }
  const i = model.info();
  post({
    type: 'loaded',
    ms: performance.now() - t,
    shard: shardInfo,
    info: {
      source: name,
      name: i.name,
      architecture: i.architecture,
      nParams: Number(i.nParams),
      nLayers: i.nLayers,
      fileSize: Number(i.fileSize),
      tensorTypes: i.tensorTypes,
      hasChatTemplate: i.chatTemplate !== undefined,
      kernel: kernelBuild(),
    },
  });
}

function generateShards(tokens, options) {
  let n = 0;
  let first = 0;
  const r = shard.generate(Array.from(tokens), generateOptions(options), (piece) => {
    n++;
    if (n === 1) first = performance.now();
    const ms = performance.now() - first;
    post({ type: 'piece', token: piece.token, text: piece.text, tokensPerSecond: n > 1 ? (n - 1) / (ms / 1e3) : 0 });
  }, () => shard.exchange.takeStop());
  post({ type: 'done', stats: timings(tokens.length, r.promptMs, r.tokens.length, r.generationMs, r.stopReason) });
}

async function generate({ prompt, messages, options }) {
  if (!model) throw new Error('load a model first');
  const text = messages ? model.applyChatTemplate(messages, true) : prompt;
  const tokens = model.tokenize(text, true, true);
  post({ type: 'prompt', tokens: tokens.length });
  if (shard) return generateShards(tokens, options);
  const session = model.newSession(0);
  stopRequested = false;
  let t = performance.now();
  const gen = session.generate(tokens, generateOptions(options));
  const promptMs = performance.now() - t;
  let n = 0;
  let stopReason;
  t = performance.now();
  try {
    for (;;) {
      const piece = gen.next();
      if (!piece) break;
      n++;
      const ms = performance.now() - t;
      post({ type: 'piece', token: piece.token, text: piece.text, tokensPerSecond: n > 1 ? (n - 1) / (ms / 1e3) : 0 });
      await yieldToEvents();
      if (stopRequested) {
        stopReason = 'stopped';
        break;
      }
    }
    stopReason ??= gen.stopReason() ?? 'length';
  } finally {
    gen[Symbol.dispose]();
    session[Symbol.dispose]();
  }
  post({ type: 'done', stats: timings(tokens.length, promptMs, n, performance.now() - t, stopReason) });
}

self.onmessage = async ({ data }) => {
  if (data.type === 'stop') {
    stopRequested = true;
    return;
  }
  if (busy) return post({ type: 'error', message: 'busy: wait for the current request (or press Stop)' });
  busy = true;
  try {
    if (data.type === 'load') await load(data);
    else if (data.type === 'attach') {
      shard.attach(data.sab);
      post({ type: 'attached' });
    } else if (data.type === 'follow') shard.follow();
    else if (data.type === 'generate') await generate(data);
  } catch (e) {
    if (data.type === 'load') model = null;
    fail(e);
  } finally {
    busy = false;
  }
};
