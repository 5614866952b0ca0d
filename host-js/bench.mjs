#!/usr/bin/env node
// Decode speed of the Node host vs the native (wasmtime) host, same model,
// prompt and greedy settings, in one run: `npm run bench [-- -n 64 -r 3]`.
// Model: $WASM_CHORD_SMOLLM2 (or -m); native CLI: $WASM_CHORD_BIN.
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { kernel, kernelBuild, loadOptions, generateOptions, generate, NodeFileStore, wasmFeatures } from './src/node.js';
import { MODEL, NATIVE_BIN } from './test/helpers.js';

const { values: v } = parseArgs({
  args: process.argv.slice(2),
  options: {
    model: { short: 'm', type: 'string', default: MODEL },
    'n-predict': { short: 'n', type: 'string', default: '64' },
    repetitions: { short: 'r', type: 'string', default: '3' },
    prompt: { short: 'p', type: 'string', default: 'The capital of France is' },
  },
});
const int = (name) => {
  const x = Number(v[name]);
  if (!Number.isInteger(x) || x < 1) throw new Error(`--${name} must be a positive integer, not '${v[name]}'`);
  return x;
};
const n = int('n-predict');
v.repetitions = int('repetitions');
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function native() {
  const r = spawnSync(NATIVE_BIN, ['run', '-m', v.model, '-p', v.prompt, '-n', String(n), '--temp', '0', '--ignore-eos', '--json'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`native CLI failed: ${r.stderr || r.error}`);
  const { stats } = JSON.parse(r.stdout.trim().split('\n').pop());
  return { prompt: stats.prompt_tokens_per_second, decode: stats.generated_tokens_per_second };
}

const inference = await kernel(new NodeFileStore());
const model = inference.Model.load(loadOptions(v.model));
const prompt = model.tokenize(v.prompt, true, true);
function js() {
  const session = model.newSession(0);
  const s = generate(session, prompt, generateOptions({ maxTokens: n, ignoreEos: true, sampling: { temperature: 0 } }), () => {});
  session[Symbol.dispose]();
  return { prompt: s.promptTokensPerSecond, decode: s.generatedTokensPerSecond };
}

js(); // warm-up: the engine's optimizing tiers
const rows = { 'native (wasmtime)': [], [`node ${process.version} (jco)`]: [] };
for (let i = 0; i < v.repetitions; i++) {
  rows['native (wasmtime)'].push(native());
  rows[`node ${process.version} (jco)`].push(js());
}
console.log(`model ${v.model}\nprompt ${prompt.length} tokens, ${n} generated (greedy), median of ${v.repetitions}; simd128: ${wasmFeatures().simd128}, relaxed SIMD: ${wasmFeatures().relaxedSimd}; kernel build: ${kernelBuild()}`);
console.log('host                      decode tok/s   prompt tok/s');
for (const [name, rs] of Object.entries(rows)) {
  const d = median(rs.map((r) => r.decode)).toFixed(2);
  const p = median(rs.map((r) => r.prompt)).toFixed(2);
  console.log(`${name.padEnd(26)}${d.padStart(12)}${p.padStart(15)}`);
}
