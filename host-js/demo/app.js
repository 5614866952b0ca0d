// The demo page: the kernel runs in worker.js; this file is only UI.
const $ = (id) => document.getElementById(id);
const ui = {
  file: $('file'), url: $('url'), load: $('load'), progress: $('progress'), status: $('status'), error: $('error'),
  chat: $('chat'), n: $('n'), temp: $('temp'), topk: $('topk'), topp: $('topp'), seed: $('seed'),
  ignoreEos: $('ignore-eos'), prompt: $('prompt'), run: $('run'), stop: $('stop'), clear: $('clear'),
  speed: $('speed'), output: $('output'), conversation: $('conversation'),
};

let worker;
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

function startWorker() {
  worker?.terminate();
  worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = ({ data }) => handlers[data.type]?.(data);
  worker.onerror = (e) => {
    showError(`worker failed: ${e.message}`);
    loaded = false;
    setBusy(false);
    startWorker();
  };
}

const handlers = {
  progress({ loaded: done, total }) {
    ui.progress.hidden = false;
    ui.progress.value = done / total;
    ui.status.textContent = `Loading… ${mib(done)} of ${mib(total)}`;
  },
  loaded({ info, ms }) {
    loaded = true;
    ui.progress.value = 1;
    ui.progress.hidden = true;
    document.body.dataset.state = 'loaded';
    const types = info.tensorTypes.map(([t, n]) => `${t}×${n}`).join(' ');
    ui.status.textContent = `Loaded ${info.name || info.source} (${info.architecture}, ${(info.nParams / 1e6).toFixed(1)} M params, `
      + `${info.nLayers} layers, ${mib(info.fileSize)}, ${types}) in ${(ms / 1e3).toFixed(1)} s.`;
    ui.chat.disabled = !info.hasChatTemplate;
    if (!info.hasChatTemplate) ui.chat.checked = false;
    setBusy(false);
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
  if (url) worker.postMessage({ type: 'load', url: new URL(url, location.href).href });
  else worker.postMessage({ type: 'load', file });
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
ui.stop.onclick = () => worker.postMessage({ type: 'stop' });
ui.clear.onclick = () => {
  messages = [];
  renderConversation();
};
ui.chat.onchange = () => {
  ui.prompt.placeholder = ui.chat.checked ? 'Your message' : '';
  if (ui.chat.checked && ui.prompt.value === 'The capital of France is') ui.prompt.value = '';
};

startWorker();
