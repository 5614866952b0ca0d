// A kernel call with a deadline (Node): run in a worker thread, a call past
// its deadline terminates the worker and rejects; the next call gets a fresh
// worker with the models loaded again.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KernelWorker, DeadlineExceeded } from '../src/node.js';
import { MODEL } from './helpers.js';

test('a call past its deadline stops, and the next call is served by a fresh worker', async () => {
  const k = new KernelWorker();
  try {
    const m = await k.load(MODEL);
    const ids = await k.tokenize(m, 'The capital of France is', { timeoutMs: 10_000 });
    assert.ok(ids.length > 3, `${ids}`);
    // 100,000 tokens take many minutes: the deadline stops them within 1 s.
    const started = performance.now();
    await assert.rejects(
      k.generate(m, 'Once upon a time', { maxTokens: 100_000, ignoreEos: true }, { timeoutMs: 1000 }),
      DeadlineExceeded,
    );
    const took = performance.now() - started;
    assert.ok(took < 3000, `rejected after ${took} ms`);
    assert.equal(k.instances, 1);
    // A fresh worker, the model loaded again: same answers.
    assert.deepEqual(await k.tokenize(m, 'The capital of France is'), ids);
    assert.equal(k.instances, 2);
    const r = await k.generate(m, 'The capital of France is', { maxTokens: 4, sampling: { temperature: 0 } }, { timeoutMs: 60_000 });
    assert.equal(r.stats.generatedTokens, 4);
    assert.ok(r.text.length > 0);
    assert.equal(k.instances, 2);
  } finally {
    await k.terminate();
  }
});
