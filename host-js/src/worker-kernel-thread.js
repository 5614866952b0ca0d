// The worker thread of `KernelWorker` (worker-kernel.js): runs kernel calls
// posted as `{ id, op, args }` and answers `{ id, ok, value | error }`.
import { parentPort } from 'node:worker_threads';
import {
  NodeFileStore, kernel, loadOptions, generateOptions, generate, errorMessage,
} from './node.js';

const models = new Map();

function model(handle) {
  const m = models.get(handle);
  if (!m) throw new Error(`no model with handle ${handle}`);
  return m;
}

const OPS = {
  load(Model, handle, name, options) {
    models.set(handle, Model.load(loadOptions(name, options)));
    return null;
  },
  tokenize(Model, handle, text) {
    return Array.from(model(handle).tokenize(text, true, true));
  },
  generate(Model, handle, prompt, options) {
    const m = model(handle);
    const session = m.newSession(0);
    let text = '';
    try {
      const stats = generate(session, m.tokenize(prompt, true, true), generateOptions(options), (p) => {
        text += p.text;
      });
      return { text, stats };
    } finally {
      session[Symbol.dispose]?.();
    }
  },
};

parentPort.on('message', async ({ id, op, args }) => {
  try {
    const { Model } = await kernel(new NodeFileStore());
    if (!Object.hasOwn(OPS, op)) throw new Error(`unknown operation ${op}`);
    parentPort.postMessage({ id, ok: true, value: OPS[op](Model, ...args) });
  } catch (e) {
    parentPort.postMessage({ id, ok: false, error: errorMessage(e) });
  }
});
