// A Node worker thread holding one shard (see ShardedKernel in shards-node.js).
// Messages in: {op:'load', name, options, index, count} {op:'attach', sab}
//              {op:'follow'} {op:'generate', prompt, options} {op:'logits', prompt}
// Messages out: {ok, value | error} per request, {piece} during generate.
import { parentPort } from 'node:worker_threads';
import { NodeFileStore, kernel, loadOptions, generateOptions, errorMessage } from './node.js';
import { ShardHost } from './shards.js';

let host = null;

parentPort.on('message', async ({ op, ...a }) => {
  try {
    let value = null;
    if (op === 'load') {
      host = new ShardHost(await kernel(new NodeFileStore()));
      value = host.load(loadOptions(a.name, a.options), a.index, a.count);
    } else if (op === 'attach') {
      host.attach(a.sab);
    } else if (op === 'follow') {
      parentPort.postMessage({ ok: true, value: null });
      host.follow();
      return;
    } else if (op === 'generate') {
      const prompt = Array.from(host.model.tokenize(a.prompt, true, true));
      const r = host.generate(prompt, generateOptions(a.options), (p) => parentPort.postMessage({ piece: p }));
      value = { ...r, promptTokens: prompt.length };
    } else if (op === 'logits') {
      value = host.logits(Array.from(host.model.tokenize(a.prompt, true, true)));
    } else {
      throw new Error(`unknown operation ${op}`);
    }
    parentPort.postMessage({ ok: true, value });
  } catch (e) {
    parentPort.postMessage({ ok: false, error: errorMessage(e) });
  }
});
