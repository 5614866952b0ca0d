// The relaxed-SIMD kernel build: kernel() takes it when the engine validates
// relaxed SIMD (Node 20 only with --experimental-wasm-relaxed-simd), and its
// log-probabilities are bit-identical to the simd128 build's.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { HOST_JS, MODEL, requireFile } from './helpers.js';

const SCRIPT = path.join(HOST_JS, 'test', 'scripts', 'score-full.mjs');
const TEXT = 'The capital of France is Paris, and the capital of Germany is';

function scoreFull(nodeFlags, mode) {
  const r = spawnSync(process.execPath, [...nodeFlags, SCRIPT, mode, MODEL, TEXT], {
    encoding: 'utf8', maxBuffer: 1 << 30,
  });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

test('kernel() takes the relaxed-SIMD build where it validates and computes exactly, with the simd128 build\'s bits', () => {
  requireFile(MODEL, 'run `cargo xtask fetch` or set WASM_CHORD_SMOLLM2');
  if (!fs.existsSync(path.join(HOST_JS, 'gen', 'relaxed', 'kernel.js'))) {
    assert.fail('gen/relaxed/ is missing: `cargo xtask build` makes wasm-chord-kernel-relaxed.wasm, `npm run build` transpiles it');
  }
  const plain = scoreFull([], 'simd128');
  assert.ok(plain.tokens > 5 && plain.values === (plain.tokens - 1) * 49152, `${plain.values} values`);
  // Node 20 has relaxed SIMD behind a flag only, and there its dot is wrong
  // (the probe sees it): both runs take simd128 there. A Node whose relaxed
  // SIMD works takes the relaxed build in at least one of them.
  for (const flags of [[], ['--experimental-wasm-relaxed-simd']]) {
    const auto = scoreFull(flags, 'auto');
    assert.equal(auto.build, auto.features.relaxedSimd ? 'relaxed-simd' : 'simd128', `node ${flags}`);
    assert.equal(auto.hex.length, plain.hex.length);
    assert.ok(auto.hex === plain.hex, `node ${flags}: the ${auto.build} build's log-probabilities differ from simd128's in their bits`);
  }
});
