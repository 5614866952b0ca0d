// Layer stores: the WIT `source` resource over JS backends, its errors, and
// a model served from memory (ArrayBuffer) giving the file store's results.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { Source, StoreError, open, isEnabled, setModelStore } from '../src/layer-store.js';
import { MemoryStore, NodeFileStore, kernel, loadOptions, errorMessage } from '../src/node.js';
import { MODEL, REPO, execFileSync, tempDir } from './helpers.js';

test('source: reads, gathers layers, counts, and refuses bad ranges with WIT store-errors', () => {
  setModelStore(new MemoryStore().insert('m', Uint8Array.from({ length: 10 }, (_, i) => i)));
  const src = open('m');
  assert.ok(src instanceof Source);
  assert.equal(src.size(), 10n);
  assert.deepEqual(Array.from(src.read(2n, 3n)), [2, 3, 4]);
  const ranges = [{ offset: 8n, len: 2n }, { offset: 0n, len: 1n }];
  assert.deepEqual(Array.from(src.loadLayer(0, ranges)), [8, 9, 0]);
  src.prefetch(0, ranges);
  const s = src.stats();
  assert.deepEqual(
    { ...s },
    { totalBytes: 10n, bytesServed: 6n, reads: 1n, layerLoads: 1n, readNanos: s.readNanos, maxOffsetServed: 10n, memory64: false },
  );
  const tag = (f) => {
    try {
      f();
    } catch (e) {
      assert.ok(e instanceof StoreError);
      return e.payload;
    }
    return null;
  };
  assert.equal(tag(() => src.read(8n, 3n)).tag, 'out-of-range');
  assert.deepEqual(tag(() => src.read(0n, 2n ** 40n)), { tag: 'too-large', val: 2n ** 40n });
  assert.equal(tag(() => open('nope')).tag, 'not-found');
  assert.equal(isEnabled(), false);
});

test('is-enabled: a NodeFileStore serves 64-bit offsets, a memory store does not', () => {
  setModelStore(new MemoryStore());
  assert.equal(isEnabled(), false);
  setModelStore(new NodeFileStore());
  assert.equal(isEnabled(), true);
});

test('a model above 3.5 GiB from a 32-bit store is refused clearly', async () => {
  // A 4 GiB model whose first MiB is SmolLM2's header: served by a store
  // without `memory64`, so the kernel cannot stream it and says why.
  const head = Buffer.alloc(1 << 20);
  const fd = fs.openSync(MODEL, 'r');
  fs.readSync(fd, head, 0, head.length, 0);
  fs.closeSync(fd);
  const big = {
    open: () => ({
      size: 4 * 2 ** 30,
      readInto(offset, dest) {
        dest.fill(0);
        if (offset < head.length) dest.set(head.subarray(offset, Math.min(head.length, offset + dest.length)));
      },
    }),
  };
  const { Model } = await kernel(big);
  assert.equal(isEnabled(), false);
  assert.throws(() => Model.load(loadOptions('big')), (e) => /^unsupported: the model is 4\.00 GiB; .*at most 3\.5 GiB/.test(errorMessage(e)));
  setModelStore(new NodeFileStore());
});

test('node file store: not-found for missing files and directories', () => {
  const dir = tempDir();
  assert.throws(() => new NodeFileStore().open(path.join(dir, 'x.gguf')), (e) => e.payload.tag === 'not-found'
    && /No such file or directory/.test(e.payload.val));
  assert.throws(() => new NodeFileStore().open(dir), (e) => /is a directory/.test(e.payload.val));
});

test('memory store: SmolLM2 from an ArrayBuffer behaves like the file', async () => {
  const bytes = fs.readFileSync(MODEL);
  const { Model } = await kernel(new MemoryStore().insert('smol', bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)));
  const model = Model.load(loadOptions('smol'));
  assert.equal(model.info().architecture, 'llama');
  assert.deepEqual(Array.from(model.tokenize('The capital of France is', true, true)), [504, 3575, 282, 4649, 314]);
  model[Symbol.dispose]();
  try {
    Model.load(loadOptions('other'));
    assert.fail('expected an error');
  } catch (e) {
    assert.equal(errorMessage(e), "no model named 'other' in the memory store");
  }
  setModelStore(new NodeFileStore());
});

test('examples/embed-js runs', () => {
  const out = execFileSync(process.execPath, [path.join(REPO, 'examples', 'embed-js', 'embed.mjs'), MODEL, 'Hi'], {
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'],
  });
  assert.ok(out.trim().length > 0);
});
