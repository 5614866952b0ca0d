// The kernel runs here, in a module Web Worker: its layer-store import is
// synchronous, and workers may read Blobs (FileReaderSync) and URLs
// (synchronous XHR with Range) synchronously without freezing the page.
//
// Messages in:  {type:'load', file?: File, url?: string}
//               {type:'generate', prompt?: string, messages?: [{role, content}], options}
//               {type:'stop'}
// Messages out: {type:'progress', loaded, total} {type:'loaded', info, ms}
//               {type:'prompt', tokens} {type:'piece', token, text, tokensPerSecond}
//               {type:'done', stats} {type:'error', message, fatal}
import {
  kernel, loadOptions, generateOptions, errorMessage, timings, BlobStore, HttpRangeStore,
} from '../src/index.js';

let model = null;
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
  // A trap (RuntimeError) leaves the instance unusable: the page starts a new worker.
  post({ type: 'error', message: errorMessage(e), fatal: e instanceof WebAssembly.RuntimeError });
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

async function load({ file, url }) {
  const t = performance.now();
  const store = withProgress(file ? new BlobStore().insert(file.name, file) : new HttpRangeStore(url));
  const name = file ? file.name : url;
  const inference = await kernel(store);
  model?.[Symbol.dispose]();
  model = null;
  model = inference.Model.load(loadOptions(name));
  const i = model.info();
  post({
    type: 'loaded',
    ms: performance.now() - t,
    info: {
      source: name,
      name: i.name,
      architecture: i.architecture,
      nParams: Number(i.nParams),
      nLayers: i.nLayers,
      fileSize: Number(i.fileSize),
      tensorTypes: i.tensorTypes,
      hasChatTemplate: i.chatTemplate !== undefined,
    },
  });
}

async function generate({ prompt, messages, options }) {
  if (!model) throw new Error('load a model first');
  const text = messages ? model.applyChatTemplate(messages, true) : prompt;
  const tokens = model.tokenize(text, true, true);
  post({ type: 'prompt', tokens: tokens.length });
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
    else if (data.type === 'generate') await generate(data);
  } catch (e) {
    if (data.type === 'load') model = null;
    fail(e);
  } finally {
    busy = false;
  }
};
