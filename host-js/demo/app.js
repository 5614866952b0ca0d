// The demo page: the kernel runs in worker.js; this file is only UI.
//
// Cross-origin isolated (the server sends COOP/COEP), the page runs one
// worker per tensor-parallel shard, exchanging partial sums through a
// SharedArrayBuffer (src/shards.js): as many as the browser reports cores
// (`navigator.hardwareConcurrency`, at most 4; `?shards=N` overrides) and the
// model splits into. Otherwise one worker runs the whole model.
import { exchangeBytes, canShare, Exchange } from '../src/shards.js';

const $ = (id) => document.getElementById(id);
const ui = {
  file: $('file'), url: $('url'), load: $('load'), progress: $('progress'), status: $('status'), error: $('error'),
  chat: $('chat'), n: $('n'), temp: $('temp'), topk: $('topk'), topp: $('topp'), seed: $('seed'),
  ignoreEos: $('ignore-eos'), prompt: $('prompt'), run: $('run'), stop: $('stop'), clear: $('clear'),
  speed: $('speed'), output: $('output'), conversation: $('conversation'), mode: $('mode'),
};

const ISOLATED = canShare();
const WANT_SHARDS = ISOLATED
  ? Math.max(1, Number(new URLSearchParams(location.search).get('shards')) || Math.min(navigator.hardwareConcurrency || 1, 4))
  : 1;

let worker; // the one worker, or shard 0's (the leader)
let followers = []; // shards 1.. (shard mode)
let sab = null; // the exchange buffer (shard mode)
let pending = null; // a shard load in progress: { source, count, loaded, errors, info, ms }
let loaded = false;
let busy = false;
let messages = []; // chat history
let tokens = [];   // ids of the current generation (exposed for tests as data-tokens)
let reply = '';

function setBusy(b) {
  busy = b;
  ui.load.disabled = b;
  ui.run.disabled = b || !loaded;
  ui.stop.disabled = !b;
}

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

function mib(n) {
  return `${(n / 2 ** 20).toFixed(1)} MiB`;
}

function showMode(workers) {
  ui.mode.dataset.workers = String(workers);
  ui.mode.dataset.isolated = String(ISOLATED);
  ui.mode.textContent = ISOLATED
    ? `${workers} shard${workers === 1 ? '' : 's'}, cross-origin isolated${workers < WANT_SHARDS ? ` (the model splits into ${workers})` : ''}`
    : '1 worker: not cross-origin isolated';
}

function newWorker(onmessage) {
  const w = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  w.onmessage = onmessage;
  w.onerror = (e) => {
    showError(`worker failed: ${e.message}`);
    loaded = false;
    document.body.dataset.state = 'error';
    setBusy(false);
    startWorker();
  };
  return w;
}

/** Drop every worker (and the model) and start a fresh leader (or the one worker). */
function startWorker() {
  worker?.terminate();
  for (const f of followers) f.terminate();
  followers = [];
  sab = null;
  pending = null;
  worker = newWorker(({ data }) => handlers[data.type]?.(data));
}

/** Messages of shard `index` (1..): only its load, attach and failures matter. */
const followerMessage = (index) => ({ data }) => {
  if (data.type === 'loaded') shardLoaded(data);
  else if (data.type === 'attached') shardAttached();
  else if (data.type === 'error') {
    // A follower unwinding after the leader failed: the leader reports why.
    if (/another shard failed/.test(data.message)) return;
    // While loading, an index beyond the model's split fails: not an error.
    if (pending && pending.count === null) pending.errors.set(index, data);
    else if (!pending || index < pending.count) handlers.error({ ...data, fatal: true });
  }
};

/** A shard loaded (all load at once; shard 0 says how many the model splits into). */
function shardLoaded({ shard, info }) {
  if (shard.index === 0) {
    pending.info = info;
    pending.count = shard.count;
    // Fewer shards than asked for: drop the extra workers.
    for (const f of followers.slice(shard.count - 1)) f.terminate();
    followers.length = shard.count - 1;
    for (const [i, e] of pending.errors) if (i < shard.count) return handlers.error({ ...e, fatal: true });
  }
  pending.loaded.add(shard.index);
  if (pending.count === null || [...pending.loaded].filter((i) => i < pending.count).length < pending.count) return;
  sab = new SharedArrayBuffer(exchangeBytes(shard.count, shard.nEmbd, shard.nVocab));
  pending.attached = 0;
  for (const w of [worker, ...followers]) w.postMessage({ type: 'attach', sab });
}

function shardAttached() {
  pending.attached++;
  if (pending.attached < pending.count) return;
  for (const f of followers) f.postMessage({ type: 'follow' });
  const { info, ms, count } = pending;
  pending = null;
  showLoaded(info, performance.now() - ms, count);
}

function showLoaded(info, ms, workers) {
  loaded = true;
  ui.progress.value = 1;
  ui.progress.hidden = true;
  document.body.dataset.state = 'loaded';
  document.body.dataset.kernel = info.kernel;
  const types = info.tensorTypes.map(([t, n]) => `${t}×${n}`).join(' ');
  ui.status.textContent = `Loaded ${info.name || info.source} (${info.architecture}, ${(info.nParams / 1e6).toFixed(1)} M params, `
    + `${info.nLayers} layers, ${mib(info.fileSize)}, ${types}) in ${(ms / 1e3).toFixed(1)} s, ${info.kernel} kernel.`;
  ui.chat.disabled = !info.hasChatTemplate;
  if (!info.hasChatTemplate) ui.chat.checked = false;
  showMode(workers);
  setBusy(false);
}

const handlers = {
  progress({ loaded: done, total }) {
    ui.progress.hidden = false;
    ui.progress.value = done / total;
    ui.status.textContent = `Loading… ${mib(done)} of ${mib(total)}`;
  },
  loaded({ info, ms, shard }) {
    if (!shard) return showLoaded(info, ms, 1);
    return shardLoaded({ shard, info });
  },
  attached() {
    shardAttached();
  },
  prompt({ tokens: n }) {
    ui.speed.textContent = `prompt: ${n} tokens…`;
  },
  piece({ token, text, tokensPerSecond }) {
    tokens.push(token);
    reply += text;
    ui.output.textContent += text;
    ui.output.dataset.tokens = tokens.join(',');
    ui.speed.textContent = `${tokens.length} tokens, ${tokensPerSecond.toFixed(1)} tokens/s`;
  },
  done({ stats }) {
    ui.speed.textContent = `${stats.generatedTokens} tokens, ${stats.generatedTokensPerSecond.toFixed(1)} tokens/s `
      + `(prompt ${stats.promptTokens} tokens, ${stats.promptTokensPerSecond.toFixed(1)} tokens/s; stop: ${stats.stopReason})`;
    if (ui.chat.checked) {
      messages.push({ role: 'assistant', content: reply });
      renderConversation();
      ui.output.textContent = '';
    }
    document.body.dataset.state = 'done';
    setBusy(false);
  },
  error({ message, fatal }) {
    if (pending) fatal = true; // a shard failed to load: start over
    showError(message);
    if (!loaded || fatal) ui.status.textContent = 'No model loaded.';
    if (fatal) {
      loaded = false;
      startWorker();
    }
    ui.progress.hidden = true;
    document.body.dataset.state = 'error';
    setBusy(false);
  },
};

function renderConversation() {
  ui.conversation.hidden = messages.length === 0;
  ui.conversation.replaceChildren(...messages.map((m) => {
    const p = document.createElement('p');
    p.className = `msg ${m.role}`;
    p.textContent = `${m.role}: ${m.content}`;
    return p;
  }));
}

ui.load.onclick = () => {
  const file = ui.file.files[0];
  const url = ui.url.value.trim();
  if (!file && !url) return showError('Pick a GGUF file or enter a URL.');
  showError('');
  loaded = false;
  document.body.dataset.state = 'loading';
  ui.progress.value = 0;
  ui.progress.hidden = false;
  ui.status.textContent = 'Loading…';
  setBusy(true);
  ui.stop.disabled = true;
  // The file picker is cleared after use (picking it again reloads it).
  const source = url ? { type: 'load', url: new URL(url, location.href).href } : { type: 'load', file };
  if (WANT_SHARDS > 1) {
    // Shards: a fresh set of workers for every model.
    startWorker();
    // Every shard loads at once (each reads only its slices).
    pending = {
      source, count: null, loaded: new Set(), errors: new Map(), ms: performance.now(),
    };
    worker.postMessage({ ...source, shard: { index: 0, count: WANT_SHARDS } });
    for (let i = 1; i < WANT_SHARDS; i++) {
      const f = newWorker(followerMessage(i));
      followers.push(f);
      f.postMessage({ ...source, shard: { index: i, count: WANT_SHARDS } });
    }
  } else {
    worker.postMessage(source);
  }
  ui.file.value = '';
};

ui.run.onclick = () => {
  showError('');
  tokens = [];
  reply = '';
  ui.output.textContent = '';
  delete ui.output.dataset.tokens;
  const options = {
    maxTokens: Math.max(1, Number(ui.n.value) || 1),
    ignoreEos: ui.ignoreEos.checked,
    sampling: {
      temperature: Number(ui.temp.value), topK: Number(ui.topk.value), topP: Number(ui.topp.value), seed: Number(ui.seed.value),
    },
  };
  document.body.dataset.state = 'generating';
  setBusy(true);
  if (ui.chat.checked) {
    const content = ui.prompt.value.trim();
    if (!content) return setBusy(false);
    messages.push({ role: 'user', content });
    renderConversation();
    ui.prompt.value = '';
    worker.postMessage({ type: 'generate', messages, options });
  } else {
    worker.postMessage({ type: 'generate', prompt: ui.prompt.value, options });
  }
};

// The last choice wins: picking a file clears the URL.
ui.file.onchange = () => {
  if (ui.file.files.length) ui.url.value = '';
};
// Shard 0 is busy in its exchange: the stop flag is in the shared buffer.
ui.stop.onclick = () => (sab ? Exchange.requestStop(sab) : worker.postMessage({ type: 'stop' }));
ui.clear.onclick = () => {
  messages = [];
  renderConversation();
};
ui.chat.onchange = () => {
  ui.prompt.placeholder = ui.chat.checked ? 'Your message' : '';
  if (ui.chat.checked && ui.prompt.value === 'The capital of France is') ui.prompt.value = '';
};

showMode(WANT_SHARDS);
startWorker();
