// The Node launcher's own concerns: clean one-line errors (worded as the native
// launcher words them), relative paths through its preopens. That its stdout
// and exit codes equal the native launcher's and stock wasmtime's for every
// subcommand is tests/tests/cli_parity.rs, the one suite of all three.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { MODEL, NATIVE_BIN, requireFile, runCli, tempDir } from './helpers.js';

describe('Node CLI', () => {
  const dir = tempDir();
  before(() => {
    requireFile(MODEL, 'run `cargo xtask fetch` or set WASM_CHORD_SMOLLM2');
    requireFile(NATIVE_BIN, 'run `cargo xtask build` or set WASM_CHORD_BIN');
  });

  const bad = {
    'missing file': () => path.join(dir, 'missing.gguf'),
    directory: () => dir,
    'not a GGUF file': () => {
      const p = path.join(dir, 'text.gguf');
      fs.writeFileSync(p, 'this is not a model\n'.repeat(10));
      return p;
    },
    'truncated header': () => {
      const p = path.join(dir, 'head.gguf');
      fs.writeFileSync(p, fs.readFileSync(MODEL).subarray(0, 1000));
      return p;
    },
    'truncated tensor data': () => {
      const p = path.join(dir, 'half.gguf');
      const fd = fs.openSync(MODEL, 'r');
      const buf = Buffer.alloc(50_000_000);
      fs.readSync(fd, buf, 0, buf.length, 0);
      fs.closeSync(fd);
      fs.writeFileSync(p, buf);
      return p;
    },
    empty: () => {
      const p = path.join(dir, 'empty.gguf');
      fs.writeFileSync(p, '');
      return p;
    },
  };
  for (const [name, make] of Object.entries(bad)) {
    test(`bad model (${name}): one-line error, exit 1, same message as native`, () => {
      const args = ['run', '-m', make(), '-p', 'x', '-n', '2'];
      const js = runCli('js', args);
      assert.equal(js.status, 1);
      assert.equal(js.stdout, '');
      assert.match(js.stderr, /^error: .+\n$/);
      assert.equal(js.stderr, runCli('native', args).stderr);
    });
  }

  test('bad arguments: clear errors', () => {
    const cases = [
      [['run', '-m', MODEL, '-p', 'x', '-n', '0'], /^error: -n must be at least 1 \(got 0\)\n$/],
      [['run', '-m', MODEL, '-p', 'x', '--temp', '-1'], /^error: --temp must be a finite number >= 0/],
      [['run', '-m', MODEL, '-p', 'x', '--bogus'], /^error: unexpected argument '--bogus'/],
      [['run', '-m', MODEL, '--messages', path.join(dir, 'none.json')], /^error: cannot read messages/],
    ];
    for (const [args, re] of cases) {
      const js = runCli('js', args);
      assert.notEqual(js.status, 0);
      assert.match(js.stderr, re);
    }
  });
});

describe('Node launcher: paths', () => {
  const dir = tempDir();
  test('a relative --messages path resolves against the current directory, as natively', () => {
    fs.mkdirSync(path.join(dir, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'sub', 'm.json'), '[{"role":"user","content":"Hi"}]');
    const args = ['run', '-m', MODEL, '--messages', path.relative(process.cwd(), path.join(dir, 'sub', 'm.json')),
      '-n', '4', '--temp', '0'];
    const js = runCli('js', args);
    assert.equal(js.status, 0, js.stderr);
    assert.ok(js.stdout.length > 0);
    assert.equal(js.stdout, runCli('native', args).stdout);
  });
  test('a missing required argument: a clear error, no JS or wasm stack trace', () => {
    const js = runCli('js', ['info']);
    assert.equal(js.status, 1);
    assert.match(js.stderr, /^error: /);
    assert.doesNotMatch(js.stderr, /RuntimeError|at .*wasm-function/);
  });
});

describe('launcher preopens', () => {
  test('cwd, directories of existing paths and of new files in existing directories', async () => {
    const { preopensFor } = await import('../bin/wasm-chord.mjs');
    const dir = tempDir();
    fs.mkdirSync(path.join(dir, 'a'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'a', 'f.txt'), 'x');
    const got = preopensFor(['run', '-m', 'model.gguf', '--messages', 'a/f.txt', '--out=a/new.bin',
      '-p', 'no/such/dir/x', path.join(dir, 'a')], dir);
    assert.deepEqual(got, { '.': dir, [dir]: dir, [path.join(dir, 'a')]: path.join(dir, 'a'), a: path.join(dir, 'a') });
  });
});
