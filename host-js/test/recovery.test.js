// A kernel call that fails stays one call: a store throwing anything becomes
// a `store-error`, and a trap drops the instance (as the native host does) so
// the next kernel() serves again.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  NodeFileStore, kernel, kernelInstances, loadOptions, errorMessage, setModelStore,
} from '../src/node.js';
import { MODEL } from './helpers.js';

const PROMPT_IDS = [504, 3575, 282, 4649, 314]; // "The capital of France is"

/** The file store, with `fail` deciding when reads and opens throw plain errors. */
function flakyStore(fail) {
  const inner = new NodeFileStore();
  return {
    open(name) {
      if (fail.open) throw new TypeError('cannot open: the disk is on fire');
      const b = inner.open(name);
      return {
        size: b.size,
        readInto(offset, dest) {
          if (fail.read) throw new Error('read failed: the disk is on fire');
          if (fail.read === null) throw 'a bare string';
          b.readInto(offset, dest);
        },
      };
    },
  };
}

test('a store throwing plain errors gives store-errors, and the same kernel keeps working', async () => {
  const fail = { read: true, open: false };
  const { Model } = await kernel(flakyStore(fail));
  const before = kernelInstances();
  const message = (f) => {
    try {
      f();
    } catch (e) {
      assert.equal(e.payload?.tag, 'store', `not a store error: ${e}`);
      return errorMessage(e);
    }
    return assert.fail('expected an error');
  };
  assert.equal(message(() => Model.load(loadOptions(MODEL))), 'layer store: I/O error: read failed: the disk is on fire');
  fail.read = null;
  assert.match(message(() => Model.load(loadOptions(MODEL))), /^layer store: I\/O error: a bare string$/);
  fail.read = false;
  fail.open = true;
  assert.equal(message(() => Model.load(loadOptions(MODEL))), 'cannot open: the disk is on fire');
  fail.open = false;
  const model = Model.load(loadOptions(MODEL));
  assert.deepEqual(Array.from(model.tokenize('The capital of France is', true, true)), PROMPT_IDS);
  const session = model.newSession(64);
  const scores = session.score(Uint32Array.from(PROMPT_IDS), 1, 0);
  assert.equal(scores.length, PROMPT_IDS.length - 1);
  assert.equal(kernelInstances(), before, 'no trap, no new instance');
  session[Symbol.dispose]();
  model[Symbol.dispose]();
  setModelStore(new NodeFileStore());
});

test('after a trap the next kernel() is a fresh instance that serves', async () => {
  // The trigger, a genuine guest trap: a store that re-enters the kernel while
  // `score` holds the session (streamed weights are read during `score`) makes
  // the guest's RefCell borrow fail, and the guest aborts.
  const inner = new NodeFileStore();
  let hook = null;
  const store = {
    open(name) {
      const b = inner.open(name);
      return {
        size: b.size,
        readInto(offset, dest) {
          const h = hook;
          hook = null;
          h?.();
          b.readInto(offset, dest);
        },
      };
    },
  };
  const { Model } = await kernel(store);
  const before = kernelInstances();
  const model = Model.load(loadOptions(MODEL, { residency: 'streaming', cacheLayers: 1 }));
  const session = model.newSession(64);
  hook = () => session.nPast();
  let trapped;
  try {
    session.score(Uint32Array.from(PROMPT_IDS), 1, 0);
  } catch (e) {
    trapped = e;
  }
  assert.ok(trapped instanceof WebAssembly.RuntimeError, `expected a trap, got ${trapped}`);
  assert.match(errorMessage(trapped), /^the kernel trapped: /);
  // Objects of the dropped instance say so in one line.
  assert.throws(() => model.tokenize('x', false, false), /kernel trapped earlier.*reload the model/);
  assert.throws(() => session.score(Uint32Array.from(PROMPT_IDS), 1, 0), /kernel trapped earlier/);
  session[Symbol.dispose]();
  model[Symbol.dispose]();
  // A fresh instance serves the same requests, with the same store.
  const k = await kernel();
  assert.equal(kernelInstances(), before + 1);
  const again = k.Model.load(loadOptions(MODEL, { residency: 'streaming', cacheLayers: 1 }));
  assert.deepEqual(Array.from(again.tokenize('The capital of France is', true, true)), PROMPT_IDS);
  const s = again.newSession(64);
  const scores = s.score(Uint32Array.from(PROMPT_IDS), 1, 2);
  assert.equal(scores.length, PROMPT_IDS.length - 1);
  assert.ok(scores.every((x) => x.logprob < 0 && x.top.length === 2));
  s[Symbol.dispose]();
  again[Symbol.dispose]();
  // And no further instance is made while it is healthy.
  await kernel();
  assert.equal(kernelInstances(), before + 1);
  setModelStore(new NodeFileStore());
});
