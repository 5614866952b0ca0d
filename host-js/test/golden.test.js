// Golden parity: for every SmolLM2 case, the JS host's greedy tokens equal the
// native (wasmtime) host's exactly, and pass the fixtures rule against llama.cpp.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { kernel, loadOptions, generateOptions, generate, NodeFileStore } from '../src/node.js';
import {
  GOLDEN, MODEL, NATIVE_BIN, checkGreedy, parseJsonRun, requireFile, runCli, tempDir,
} from './helpers.js';

const N = GOLDEN.n_predict ?? 32;

describe('SmolLM2 golden cases: JS host = native host, and the fixture rule', () => {
  let model;
  const dir = tempDir();

  before(async () => {
    requireFile(MODEL, 'run `cargo xtask fetch` or set WASM_CHORD_SMOLLM2');
    requireFile(NATIVE_BIN, 'run `cargo xtask build` or set WASM_CHORD_BIN');
    const inference = await kernel(new NodeFileStore());
    model = inference.Model.load(loadOptions(MODEL));
  });

  for (const c of GOLDEN.cases) {
    test(c.id, () => {
      // Prompt: chat cases are rendered with the model's own template.
      const text = c.messages ? model.applyChatTemplate(c.messages, true) : c.prompt;
      assert.equal(text, c.prompt, 'rendered prompt');
      const prompt = model.tokenize(text, true, true);
      assert.deepEqual(Array.from(prompt), c.prompt_tokens, 'prompt tokens');

      const session = model.newSession(0);
      const ours = [];
      const options = generateOptions({ maxTokens: N, ignoreEos: true, sampling: { temperature: 0 } });
      generate(session, prompt, options, (p) => { ours.push(p.token); });
      session[Symbol.dispose]();

      const args = ['run', '-m', MODEL, '-n', String(N), '--temp', '0', '--ignore-eos', '--json'];
      if (c.messages) {
        const file = path.join(dir, `${c.id}.json`);
        fs.writeFileSync(file, JSON.stringify(c.messages));
        args.push('--messages', file);
      } else {
        args.push('-p', c.prompt);
      }
      const native = runCli('native', args);
      assert.equal(native.status, 0, native.stderr);
      const nativeTokens = parseJsonRun(native.stdout).tokens.map((t) => t.token);

      assert.deepEqual(ours, nativeTokens, 'JS tokens = native tokens');
      assert.equal(ours.length, N);
      checkGreedy(c.id, ours, c, GOLDEN.near_tie ?? 0.75);
    });
  }
});

describe('an f32 KV cache (kvCache: "f32"): JS host = native host with --kv-cache f32', () => {
  test('the first plain-prompt case', async () => {
    requireFile(MODEL, 'run `cargo xtask fetch` or set WASM_CHORD_SMOLLM2');
    requireFile(NATIVE_BIN, 'run `cargo xtask build` or set WASM_CHORD_BIN');
    const c = GOLDEN.cases.find((x) => !x.messages);
    const inference = await kernel(new NodeFileStore());
    const model = inference.Model.load(loadOptions(MODEL, { kvCache: 'f32' }));
    const session = model.newSession(0);
    const ours = [];
    const options = generateOptions({ maxTokens: N, ignoreEos: true, sampling: { temperature: 0 } });
    generate(session, model.tokenize(c.prompt, true, true), options, (p) => { ours.push(p.token); });
    session[Symbol.dispose]();
    model[Symbol.dispose]();
    const native = runCli('native', ['run', '-m', MODEL, '-n', String(N), '--temp', '0', '--ignore-eos', '--json', '--kv-cache', 'f32', '-p', c.prompt]);
    assert.equal(native.status, 0, native.stderr);
    assert.deepEqual(ours, parseJsonRun(native.stdout).tokens.map((t) => t.token), 'JS tokens = native tokens');
    assert.equal(ours.length, N);
  });
});
