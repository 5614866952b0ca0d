// The relaxed-SIMD kernel build: kernel() takes it when the engine validates
// relaxed SIMD and computes its dots exactly (Node 22+; Node 20's flagged
// engine does not), and its log-probabilities are bit-identical to the
// simd128 build's.
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
  // (the probe sees it): both runs take simd128 there. Node 22+ (V8 12) runs
  // relaxed SIMD unflagged and has dropped the flag: there the relaxed build
  // must be taken, so V8's relaxed arithmetic is what the bits below compare
  // (`cargo xtask test` runs this suite under Node 24 too).
  const major = Number(process.versions.node.split('.')[0]);
  const runs = major >= 22 ? [[]] : [[], ['--experimental-wasm-relaxed-simd']];
  for (const flags of runs) {
    const auto = scoreFull(flags, 'auto');
    if (major >= 22) {
      assert.equal(auto.build, 'relaxed-simd', `node ${process.version} should run the relaxed build`);
    }
    assert.equal(auto.build, auto.features.relaxedSimd ? 'relaxed-simd' : 'simd128', `node ${flags}`);
    assert.equal(auto.hex.length, plain.hex.length);
    assert.ok(auto.hex === plain.hex, `node ${flags}: the ${auto.build} build's log-probabilities differ from simd128's in their bits`);
  }
});
