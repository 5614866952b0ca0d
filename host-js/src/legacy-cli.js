// LEGACY, to be deleted: the JS port of the native CLI's `perplexity` (and
// KL-divergence), reached from bin/wasm-chord.mjs only for the subcommands the
// guest CLI (guest/cli) does not have yet. When guest/cli gains `perplexity`,
// delete this file with cli-args.js, perplexity.js, kld.js and LEGACY in the bin.
import fs from 'node:fs';
import { parse, UsageError } from './cli-args.js';
import { perplexity, PerplexityError } from './perplexity.js';
import { KldError } from './kld.js';
import {
  kernel, loadOptions, generateOptions, generate, errorMessage, NodeFileStore, ioReason, sourceStats,
} from './node.js';

const USAGE = `Usage: wasm-chord.mjs run -m MODEL (-p PROMPT | --messages FILE.json) [options]
       wasm-chord.mjs tokenize -m MODEL [--no-special] TEXT
       wasm-chord.mjs perplexity -m MODEL (-f FILE | -p TEXT | --tokens FILE.json) [options]

run options (defaults as the native CLI):
  -n, --n-predict N      tokens to generate (128)
  --temp T               temperature, 0 = greedy (0.8)
  --top-k K (40)  --top-p P (0.95)  --min-p P (0.05)
  --repeat-penalty R (1.0)  --repeat-last-n N (64)  --seed S (0)
  --ignore-eos           keep generating past end-of-sequence
  --n-ctx N              context size (0: kernel default)
  --json                 one {"token","text"} line per token, then {"stats"}
  --stats                load time and speeds on stderr
perplexity options (llama-perplexity semantics, as the native CLI):
  -c, --n-ctx N          chunk length in tokens (512; with --tokens: at least the sequence)
  --top-k K              alternatives per scored token with --json (5)
  --json                 one {"pos","token","logprob","top"} line per scored token, then a summary
  --kl-divergence-base FILE   llama.cpp KL-divergence base file: written, or read with
  --kl-divergence             compare with the base file and print KL-divergence statistics
load options: --residency auto|resident|stream  --max-memory BYTES
              --cache-layers N  --cache-policy pinned|lru`;

const LOAD = {
  model: { short: 'm', type: 'string' },
  residency: { type: 'string', default: 'auto', choices: ['auto', 'resident', 'stream'] },
  'max-memory': { type: 'int', default: 0 },
  'cache-layers': { type: 'int', default: 0 },
  'cache-policy': { type: 'string', default: 'pinned', choices: ['pinned', 'lru'] },
  help: { short: 'h', type: 'bool' },
};

const RUN = {
  ...LOAD,
  prompt: { short: 'p', type: 'string' },
  messages: { type: 'string' },
  'n-predict': { short: 'n', type: 'int', default: 128 },
  temp: { type: 'number', default: 0.8 },
  'top-k': { type: 'int', default: 40 },
  'top-p': { type: 'number', default: 0.95 },
  'min-p': { type: 'number', default: 0.05 },
  'repeat-penalty': { type: 'number', default: 1.0 },
  'repeat-last-n': { type: 'int', default: 64 },
  seed: { type: 'int', default: 0 },
  'ignore-eos': { type: 'bool' },
  'n-ctx': { type: 'int', default: 0 },
  json: { type: 'bool' },
  stats: { type: 'bool' },
};

const TOKENIZE = { ...LOAD, 'no-special': { type: 'bool' } };

const PERPLEXITY = {
  ...LOAD,
  file: { short: 'f', type: 'string' },
  prompt: { short: 'p', type: 'string' },
  tokens: { type: 'string' },
  'n-ctx': { short: 'c', type: 'int' },
  'ctx-size': { type: 'int' },
  'top-k': { type: 'int', default: 5 },
  json: { type: 'bool' },
  'kl-divergence-base': { type: 'string' },
  'kl-divergence': { type: 'bool' },
};

class Fail extends Error {}

function fail(msg) {
  throw new Fail(msg);
}

/** Like the native `check_model`: fail before starting the kernel. */
function checkModel(path) {
  if (path === undefined) throw new UsageError("the following required argument was not provided: '--model <MODEL>'");
  let st;
  try {
    st = fs.statSync(path);
  } catch (e) {
    fail(`cannot open model '${path}': ${ioReason(e)}`);
  }
  if (st.isDirectory()) fail(`cannot open model '${path}': is a directory, not a regular file`);
  if (!st.isFile()) fail(`cannot open model '${path}': not a regular file`);
  try {
    fs.closeSync(fs.openSync(path, 'r'));
  } catch (e) {
    fail(`cannot open model '${path}': ${ioReason(e)}`);
  }
}

function validate(v) {
  if (v['n-predict'] === 0) fail('-n must be at least 1 (got 0)');
  if (!Number.isFinite(v.temp) || v.temp < 0) fail(`--temp must be a finite number >= 0 (got ${v.temp})`);
  if (!(v['top-p'] >= 0 && v['top-p'] <= 1)) fail(`--top-p must be between 0 and 1 (got ${v['top-p']})`);
  if (!(v['min-p'] >= 0 && v['min-p'] <= 1)) fail(`--min-p must be between 0 and 1 (got ${v['min-p']})`);
  if (!Number.isFinite(v['repeat-penalty']) || v['repeat-penalty'] <= 0) {
    fail(`--repeat-penalty must be a finite number > 0 (got ${v['repeat-penalty']})`);
  }
  if (v.prompt === undefined && v.messages === undefined) {
    throw new UsageError("the following required arguments were not provided: '--prompt <PROMPT>' or '--messages <FILE.json>'");
  }
  if (v.prompt !== undefined && v.messages !== undefined) {
    throw new UsageError("the argument '--prompt <PROMPT>' cannot be used with '--messages <FILE.json>'");
  }
}

function readMessages(path) {
  let text;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (e) {
    fail(`cannot read messages '${path}': ${ioReason(e)}`);
  }
  let list;
  try {
    list = JSON.parse(text);
  } catch {
    list = null;
  }
  const ok = Array.isArray(list)
    && list.every((m) => m && typeof m.role === 'string' && typeof m.content === 'string');
  if (!ok) fail(`messages '${path}' must be a JSON list of {"role", "content"} objects`);
  if (list.length === 0) fail(`messages '${path}' is an empty list`);
  return list.map(({ role, content }) => ({ role, content }));
}

/** Compile the kernel and load the model; returns [inference, model, ms]. */
async function start(v) {
  const t = performance.now();
  const inference = await kernel(new NodeFileStore());
  const model = inference.Model.load(loadOptions(v.model, {
    residency: v.residency === 'stream' ? 'streaming' : v.residency,
    maxMemory: v['max-memory'],
    cacheLayers: v['cache-layers'],
    cachePolicy: v['cache-policy'],
  }));
  return [inference, model, performance.now() - t];
}

function humanBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u + 1 < units.length) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(2)} ${units[u]}`;
}

/** A WIT record as the native CLI's JSON: snake_case keys, plain numbers. */
function snakeNumbers(record) {
  return Object.fromEntries(Object.entries(record).map(([k, x]) => [
    k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`).replace(/_(\d)/g, '$1'),
    typeof x === 'bigint' ? Number(x) : x,
  ]));
}

function cacheLine(c) {
  const [hits, misses] = [Number(c.hits), Number(c.misses)];
  const rate = hits + misses > 0 ? (100 * hits) / (hits + misses) : 0;
  return `layer cache: ${hits} hits, ${misses} misses (${rate.toFixed(1)}% hit rate), ${c.evictions} evictions, `
    + `${humanBytes(Number(c.bytesLoaded))} loaded in ${(Number(c.loadNanos) / 1e6).toFixed(0)} ms; `
    + `${c.residentLayers}/${c.totalLayers} layers resident (${humanBytes(Number(c.residentBytes))}); `
    + `guest memory ${humanBytes(Number(c.guestMemory))}`;
}

function storeLine(s) {
  return `layer store: ${humanBytes(Number(s.bytesServed))} served in ${s.reads} reads and ${s.layerLoads} layer loads `
    + `(${(Number(s.readNanos) / 1e6).toFixed(0)} ms), highest offset ${s.maxOffsetServed} of ${s.totalBytes}`
    + `${s.memory64 ? ', 64-bit storage' : ''}`;
}

function write(s) {
  process.stdout.write(s);
}

async function run(argv) {
  const { values: v, positionals } = parse(argv, RUN);
  if (v.help) return console.log(USAGE);
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}'`);
  validate(v);
  checkModel(v.model);
  const messages = v.messages !== undefined ? readMessages(v.messages) : undefined;
  const [, model, loadMs] = await start(v);
  const text = messages ? model.applyChatTemplate(messages, true) : v.prompt;
  const prompt = model.tokenize(text, true, true);
  const session = model.newSession(v['n-ctx']);
  const options = generateOptions({
    maxTokens: v['n-predict'],
    ignoreEos: v['ignore-eos'],
    sampling: {
      temperature: v.temp,
      topK: v['top-k'],
      topP: v['top-p'],
      minP: v['min-p'],
      repeatPenalty: v['repeat-penalty'],
      repeatLastN: v['repeat-last-n'],
      seed: v.seed,
    },
  });
  let endsWithNewline = true;
  const stats = generate(session, prompt, options, (piece) => {
    if (v.json) {
      write(`${JSON.stringify({ token: piece.token, text: piece.text })}\n`);
    } else {
      if (piece.text) endsWithNewline = piece.text.endsWith('\n');
      write(piece.text);
    }
  });
  // Guest memory only grows, so its current size is the peak.
  const cache = model.cacheStats();
  const peak = Number(cache.guestMemory);
  const store = sourceStats(v.model);
  if (v.json) {
    write(`${JSON.stringify({
      stats: {
        prompt_tokens: stats.promptTokens,
        prompt_tokens_per_second: stats.promptTokensPerSecond,
        generated_tokens: stats.generatedTokens,
        generated_tokens_per_second: stats.generatedTokensPerSecond,
        load_time_ms: loadMs,
        peak_guest_memory_bytes: peak,
        stop_reason: stats.stopReason,
        cache: snakeNumbers(cache),
        store: store ? snakeNumbers(store) : null,
      },
    })}\n`);
  } else if (!endsWithNewline) {
    write('\n');
  }
  if (v.stats) {
    console.error(`load time: ${loadMs.toFixed(0)} ms`);
    console.error(`prompt: ${stats.promptTokens} tokens, ${stats.promptTokensPerSecond.toFixed(2)} tokens/s`);
    console.error(`generated: ${stats.generatedTokens} tokens, ${stats.generatedTokensPerSecond.toFixed(2)} tokens/s`);
    console.error(`peak guest memory: ${humanBytes(peak)} (${peak} bytes)`);
    console.error(`stop reason: ${stats.stopReason}`);
    console.error(cacheLine(cache));
    if (store) console.error(storeLine(store));
  }
}

async function tokenize(argv) {
  const { values: v, positionals } = parse(argv, TOKENIZE);
  if (v.help) return console.log(USAGE);
  if (positionals.length !== 1) {
    throw new UsageError(positionals.length ? `unexpected argument '${positionals[1]}'` : "the following required argument was not provided: '<TEXT>'");
  }
  checkModel(v.model);
  const [, model] = await start(v);
  write(`${JSON.stringify(Array.from(model.tokenize(positionals[0], true, !v['no-special'])))}\n`);
}

async function perplexityCmd(argv) {
  const { values: v, positionals } = parse(argv, PERPLEXITY);
  if (v.help) return console.log(USAGE);
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}'`);
  if (v.model === undefined) checkModel(v.model);
  if (v['ctx-size'] !== undefined) v['n-ctx'] = v['ctx-size'];
  const given = ['file', 'prompt', 'tokens'].filter((k) => v[k] !== undefined);
  if (given.length > 1) {
    const flag = { file: "'--file <FILE>'", prompt: "'--prompt <TEXT>'", tokens: "'--tokens <FILE.json>'" };
    throw new UsageError(`the argument ${flag[given[0]]} cannot be used with ${flag[given[1]]}`);
  }
  if (v['kl-divergence'] && v['kl-divergence-base'] === undefined) {
    throw new UsageError("the following required arguments were not provided:\n  --kl-divergence-base <FILE>");
  }
  return perplexity(v, async () => {
    checkModel(v.model);
    const [, model] = await start(v);
    return model;
  }, { write });
}

async function main(argv) {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'run': return run(rest);
    case 'tokenize': return tokenize(rest);
    case 'perplexity': return perplexityCmd(rest);
    case undefined: case '-h': case '--help': case 'help':
      return console.log(USAGE);
    default: throw new UsageError(`unrecognized subcommand '${cmd}'`);
  }
}

/** Run the legacy JS CLI on `argv`; resolves to the process exit code. */
export async function legacyMain(argv) {
  try {
    await main(argv);
    return 0;
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}\n\n${USAGE.split('\n')[0]}\n\nFor more information, try '--help'.`);
      return 2;
    }
    console.error(`error: ${e instanceof Fail || e instanceof PerplexityError || e instanceof KldError ? e.message : errorMessage(e)}`);
    return 1;
  }
}
