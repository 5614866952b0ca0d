// Shared paths and helpers of the Node tests.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const HOST_JS = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
export const REPO = path.dirname(HOST_JS);
export const CLI = path.join(HOST_JS, 'bin', 'wasm-chord.mjs');

const target = process.env.CARGO_TARGET_DIR || path.join(os.homedir(), '.cache/wasm-chord/target');
const cache = process.env.WASM_CHORD_CACHE || path.join(os.homedir(), '.cache/wasm-chord');

/** The SmolLM2 model file ($WASM_CHORD_SMOLLM2, else the xtask models cache). */
export const MODEL = process.env.WASM_CHORD_SMOLLM2
  || path.join(cache, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');

/** The Gemma-3-270M model file ($WASM_CHORD_GEMMA3, else the xtask models cache). */
export const GEMMA3 = process.env.WASM_CHORD_GEMMA3
  || path.join(cache, 'models', 'gemma-3-270m-q4_k_m.gguf');

/** The native CLI ($WASM_CHORD_BIN, else the cargo build). */
export const NATIVE_BIN = process.env.WASM_CHORD_BIN || path.join(target, 'release', 'wasm-chord');

export const GOLDEN = JSON.parse(fs.readFileSync(
  path.join(REPO, 'tests', 'fixtures', 'smollm2-135m-instruct-q4_1.golden.json'), 'utf8',
));

export function requireFile(p, hint) {
  if (!fs.existsSync(p)) throw new Error(`missing '${p}': ${hint}`);
}

/** A temporary directory removed at exit. */
export function tempDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wasm-chord-js-'));
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Run a CLI (with `input` on its stdin, if given); returns { status, stdout, stderr }. */
export function runCli(cmd, args, input = undefined) {
  const [exe, pre] = cmd === 'js' ? [process.execPath, [CLI]] : [NATIVE_BIN, []];
  const r = spawnSync(exe, [...pre, ...args], { encoding: 'utf8', maxBuffer: 64 << 20, input });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `--json` output lines parsed: { tokens: [{token, text}], stats }. */
export function parseJsonRun(stdout) {
  const lines = stdout.trim().split('\n').map((l) => JSON.parse(l));
  const stats = lines.pop();
  return { tokens: lines, stats };
}

export { execFileSync };

/**
 * The fixtures rule (tests/fixtures README): tokens equal llama.cpp's greedy
 * tokens until they part; parting must be at a `null` step or a near tie.
 * Returns the step where they part (or null); throws if the rule fails.
 */
export function checkGreedy(id, ours, c, nearTie = 0.75) {
  for (let i = 0; i < Math.min(ours.length, c.greedy_tokens.length); i++) {
    const want = c.greedy_tokens[i];
    if (ours[i] === want) continue;
    const top = c.top5_logprobs[i];
    if (top === null) return i;
    const lp = (t) => top.find(([id]) => id === t)?.[1];
    const chosen = lp(want);
    const mine = lp(ours[i]);
    if (mine !== undefined && chosen - mine <= nearTie) return i;
    throw new Error(`${id}: step ${i}: we chose ${ours[i]} (llama.cpp logprob ${mine}), llama.cpp chose ${want} (${chosen}): not a near tie within ${nearTie}`);
  }
  return null;
}
