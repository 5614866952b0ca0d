// `perplexity` of the Node CLI = the native CLI's: same scored tokens and
// log-probabilities, same running and final estimates, --tokens, and
// llama.cpp KL-divergence base files read and written across the two hosts.
// Kept fast: the start of tests/fixtures/ppl-text.md with -c 64.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { CLI, MODEL, NATIVE_BIN, REPO, requireFile, runCli, tempDir } from './helpers.js';

/** Run a CLI without blocking, so the two hosts run side by side: { status, stdout, stderr }. */
function runAsync(cmd, args) {
  const [exe, pre] = cmd === 'js' ? [process.execPath, [CLI]] : [NATIVE_BIN, []];
  return new Promise((resolve) => {
    execFile(exe, [...pre, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      resolve({ status: err ? (err.code ?? 1) : 0, stdout, stderr });
    });
  });
}

async function both(args) {
  const [js, native] = await Promise.all([runAsync('js', args), runAsync('native', args)]);
  assert.equal(native.status, 0, native.stderr);
  assert.equal(js.status, 0, js.stderr);
  return { js, native };
}

const lines = (stdout) => stdout.trim().split('\n').map((l) => JSON.parse(l));

function sameScores(js, native) {
  const a = lines(js);
  const b = lines(native);
  const [sa, sb] = [a.pop(), b.pop()];
  assert.equal(a.length, b.length, 'scored positions');
  for (let i = 0; i < a.length; i++) {
    assert.equal(a[i].pos, b[i].pos);
    assert.equal(a[i].token, b[i].token, `token at ${a[i].pos}`);
    assert.ok(Math.abs(a[i].logprob - b[i].logprob) <= 1e-5, `logprob at ${a[i].pos}: ${a[i].logprob} vs ${b[i].logprob}`);
    assert.deepEqual(a[i].top.map(([id]) => id), b[i].top.map(([id]) => id), `top ids at ${a[i].pos}`);
    a[i].top.forEach(([, lp], k) => assert.ok(Math.abs(lp - b[i].top[k][1]) <= 1e-5));
  }
  assert.equal(sa.n_tokens, sb.n_tokens);
  assert.ok(Math.abs(sa.perplexity - sb.perplexity) <= 1e-6 * sb.perplexity, `${sa.perplexity} vs ${sb.perplexity}`);
  return { scored: a, summary: sa };
}

describe('perplexity: Node CLI = native CLI', () => {
  const dir = tempDir();
  const text = path.join(dir, 'ppl-1500.txt');
  const short = path.join(dir, 'ppl-700.txt');
  before(() => {
    requireFile(MODEL, 'run `cargo xtask fetch` or set WASM_CHORD_SMOLLM2');
    requireFile(NATIVE_BIN, 'run `cargo xtask build` or set WASM_CHORD_BIN');
    const all = fs.readFileSync(path.join(REPO, 'tests', 'fixtures', 'ppl-text.md'), 'utf8');
    fs.writeFileSync(text, all.slice(0, 1500));
    fs.writeFileSync(short, all.slice(0, 700));
  });

  test('text, -c 64: same --json lines and the same Final estimate line', async () => {
    const base = ['perplexity', '-m', MODEL, '-f', text, '-c', '64'];
    const json = await both([...base, '--json']);
    const { scored, summary } = sameScores(json.js.stdout, json.native.stdout);
    assert.equal(scored.length, summary.n_tokens);
    assert.ok(summary.n_tokens >= 2 * 31, 'at least two chunks scored');
    assert.equal(scored[0].pos, 33, 'the second half of chunk 1: positions n_ctx/2+1..');
    assert.equal(json.js.stdout, json.native.stdout, 'byte-identical --json output');

    const plain = await both(base);
    const final = (s) => s.split('\n').find((l) => l.startsWith('Final estimate: PPL = '));
    assert.ok(final(plain.native.stdout), plain.native.stdout);
    assert.equal(final(plain.js.stdout), final(plain.native.stdout));
    assert.equal(plain.js.stdout, plain.native.stdout, 'running estimates and final line');
    assert.match(plain.js.stderr, /^scored \d+ tokens \(\d+ evaluated\) in [\d.]+ s: [\d.]+ tokens\/s\n$/);
  });

  test('--tokens: a short id list scored in one pass from index 1', async () => {
    const ids = JSON.parse(runCli('native', ['tokenize', '-m', MODEL, fs.readFileSync(short, 'utf8').slice(0, 200)]).stdout);
    const file = path.join(dir, 'tokens.json');
    fs.writeFileSync(file, JSON.stringify(ids.slice(0, 40)));
    const json = await both(['perplexity', '-m', MODEL, '--tokens', file, '--json', '--top-k', '3']);
    const { scored } = sameScores(json.js.stdout, json.native.stdout);
    assert.equal(scored.length, 39);
    assert.equal(scored[0].pos, 1);
    assert.equal(scored[0].top.length, 3);
    const plain = await both(['perplexity', '-m', MODEL, '--tokens', file]);
    assert.equal(plain.js.stdout, plain.native.stdout);
  });

  test('KL-divergence base files: a native base file reads the same under both hosts (KLD ~0, same top token)', async () => {
    const nFile = path.join(dir, 'native.kld');
    const write = ['perplexity', '-m', MODEL, '-f', short, '-c', '64', '--kl-divergence-base'];
    const nw = await runAsync('native', [...write, nFile]);
    assert.equal(nw.status, 0, nw.stderr);

    const read = (file) => ['perplexity', '-m', MODEL, '--kl-divergence-base', file, '--kl-divergence', '--json'];
    const [jr, nr] = await Promise.all([runAsync('js', read(nFile)), runAsync('native', read(nFile))]);
    for (const r of [jr, nr]) {
      assert.equal(r.status, 0, r.stderr);
      const k = lines(r.stdout).pop().kl_divergence;
      assert.ok(Math.abs(k.mean) < 1e-4, `mean KLD ${k.mean}`);
      assert.equal(k.same_top_percent, 100);
      assert.ok(Math.abs(k.ln_ppl_ratio) < 1e-4);
    }
    // Text mode: the same statistics table as the native host, for the same file.
    const [jt, nt] = await Promise.all([
      runAsync('js', read(nFile).slice(0, -1)), runAsync('native', read(nFile).slice(0, -1)),
    ]);
    assert.equal(nt.status, 0, nt.stderr);
    assert.equal(jt.stdout, nt.stdout);
    assert.match(jt.stdout, /Same top p: 100\.000 ± 0\.000 %\n$/);
  });

  // Known gap (issue 15): under Node, the guest cannot create the base file —
  // preview2-shim's filesystem answers "Not supported" to the create.
  test('KL-divergence base files: the Node launcher writes one', { todo: 'preview2-shim: creating a file is "Not supported"' }, async () => {
    const [nFile, jFile] = [path.join(dir, 'native2.kld'), path.join(dir, 'js.kld')];
    const write = ['perplexity', '-m', MODEL, '-f', short, '-c', '64', '--kl-divergence-base'];
    const [jw, nw] = await Promise.all([runAsync('js', [...write, jFile]), runAsync('native', [...write, nFile])]);
    assert.equal(nw.status, 0, nw.stderr);
    assert.equal(jw.status, 0, jw.stderr);
    assert.equal(jw.stdout, nw.stdout, 'same estimates while writing');
    assert.deepEqual(fs.readFileSync(jFile), fs.readFileSync(nFile));
  });

  test('a truncated or foreign base file: one clean error line, exit 1', () => {
    const good = path.join(dir, 'native.kld');
    const cut = path.join(dir, 'cut.kld');
    fs.writeFileSync(cut, fs.readFileSync(good).subarray(0, 100_000));
    const junk = path.join(dir, 'junk.kld');
    fs.writeFileSync(junk, 'not a base file');
    for (const [file, re] of [[cut, /is truncated: 100000 bytes, expected \d+ for 2 chunks of 64 tokens/], [junk, /no '_logits_' magic/]]) {
      const args = ['perplexity', '-m', MODEL, '--kl-divergence-base', file, '--kl-divergence'];
      const js = runCli('js', args);
      assert.equal(js.status, 1);
      assert.equal(js.stdout, '');
      assert.match(js.stderr, /^error: [^\n]+\n$/);
      assert.match(js.stderr, re);
      assert.equal(js.stderr, runCli('native', args).stderr);
    }
  });

  test('bad arguments: the native errors', () => {
    const cases = [
      ['perplexity', '-m', MODEL],
      ['perplexity', '-m', MODEL, '-p', 'x', '-c', '1'],
      ['perplexity', '-m', MODEL, '-p', '   '],
      ['perplexity', '-m', MODEL, '-p', 'short text', '-c', '64'],
    ];
    for (const args of cases) {
      const js = runCli('js', args);
      assert.equal(js.status, 1, js.stderr);
      assert.match(js.stderr, /^error: [^\n]+\n$/);
      assert.equal(js.stderr, runCli('native', args).stderr);
    }
  });
});
