// Tensor-parallel shards in JS (worker threads + SharedArrayBuffer, src/shards.js):
// the same tokens as the native shard driver (`wasm-chord run --shards 2`), greedy and
// sampled, on SmolLM2; the fixture rule against llama.cpp; clear errors.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ShardedKernel } from '../src/node.js';
import {
  GEMMA3, GOLDEN, MODEL, NATIVE_BIN, checkGreedy, parseJsonRun, requireFile, runCli, tempDir,
} from './helpers.js';

const N = GOLDEN.n_predict ?? 32;

function native(args, model = MODEL) {
  const r = runCli('native', ['run', '-m', model, '--shards', '2', '--ignore-eos', '--json', ...args]);
  assert.equal(r.status, 0, r.stderr);
  return parseJsonRun(r.stdout).tokens.map((t) => t.token);
}

describe('JS shards (2 worker threads) = native --shards 2', () => {
  let k;

  before(async () => {
    requireFile(MODEL, 'run `cargo xtask fetch` or set WASM_CHORD_SMOLLM2');
    requireFile(NATIVE_BIN, 'run `cargo xtask build` or set WASM_CHORD_BIN');
    k = await ShardedKernel.load(MODEL, { shards: 2 });
  });

  after(() => k?.terminate());

  test('SmolLM2 splits into 2 shards, the vocabulary in two halves', () => {
    assert.equal(k.count, 2);
    assert.deepEqual(k.shards.map((s) => [s.vocabStart, s.vocabLen]), [[0, 24576], [24576, 24576]]);
  });

  for (const id of ['capital', 'python']) {
    test(`greedy '${id}': native tokens, fixture rule, same on a second run`, async () => {
      const c = GOLDEN.cases.find((x) => x.id === id);
      const options = { maxTokens: N, ignoreEos: true, sampling: { temperature: 0 } };
      const ours = await k.generate(c.prompt, options);
      assert.equal(ours.promptTokens, c.prompt_tokens.length);
      assert.deepEqual(ours.tokens, native(['-p', c.prompt, '-n', String(N), '--temp', '0']));
      checkGreedy(c.id, ours.tokens, c, GOLDEN.near_tie ?? 0.75);
      assert.deepEqual((await k.generate(c.prompt, options)).tokens, ours.tokens, 'run to run');
    });
  }

  test("sampled (temperature 0.8, seed 7): the kernel's sampler and Pcg64 draw the native tokens", async () => {
    const prompt = 'Once upon a time';
    const ours = await k.generate(prompt, { maxTokens: 24, ignoreEos: true, sampling: { temperature: 0.8, seed: 7 } });
    assert.deepEqual(ours.tokens, native(['-p', prompt, '-n', '24', '--temp', '0.8', '--seed', '7']));
    assert.equal(ours.stopReason, 'length');
  });

  test('logits: bit-identical run to run and in a second set of shard threads; same argmax as greedy', async () => {
    const prompt = 'The capital of France is';
    const a = await k.logits(prompt);
    assert.equal(a.length, 49152);
    assert.ok(a.every(Number.isFinite));
    assert.deepEqual(await k.logits(prompt), a);
    const other = await ShardedKernel.load(MODEL, { shards: 2 });
    try {
      assert.deepEqual(await other.logits(prompt), a);
    } finally {
      await other.terminate();
    }
    const first = (await k.generate(prompt, { maxTokens: 1, ignoreEos: true, sampling: { temperature: 0 } })).tokens[0];
    assert.equal(first, a.indexOf(Math.max(...a)));
  });

  test('bad sampling options: a clear error, and the shards still work', async () => {
    await assert.rejects(k.generate('Hi', { sampling: { topP: 0 } }), /invalid input: top-p must be in \(0, 1\]/);
    const r = await k.generate('Hi', { maxTokens: 2, ignoreEos: true, sampling: { temperature: 0 } });
    assert.equal(r.tokens.length, 2);
  });
});

test('JS shards: a file that is not a model fails clearly', async () => {
  const bad = path.join(tempDir(), 'bad.gguf');
  fs.writeFileSync(bad, 'not a gguf file'.repeat(10));
  await assert.rejects(ShardedKernel.load(bad, { shards: 2 }), /invalid model: bad magic/);
});

test('JS shards: Gemma-3 (one key/value head) falls back to one shard, the native tokens', async () => {
  requireFile(GEMMA3, 'run `cargo xtask fetch` or set WASM_CHORD_GEMMA3');
  const k = await ShardedKernel.load(GEMMA3, { shards: 2 });
  try {
    assert.equal(k.count, 1);
    const prompt = 'The capital of France is';
    const ours = await k.generate(prompt, { maxTokens: 8, ignoreEos: true, sampling: { temperature: 0 } });
    assert.deepEqual(ours.tokens, native(['-p', prompt, '-n', '8', '--temp', '0'], GEMMA3));
  } finally {
    await k.terminate();
  }
});
