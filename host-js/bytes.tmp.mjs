import { ShardedKernel } from './src/node.js';
const M = process.env.HOME + '/.cache/wasm-chord/models/SmolLM2-135M-Instruct.Q4_1.gguf';
for (const n of [1, 2, 3]) {
  const k = await ShardedKernel.load(M, { shards: n });
  console.log(n, k.shards.map((s) => `${s.index}: ${(s.bytesRead / 2 ** 20).toFixed(1)} MiB of ${(s.fileSize / 2 ** 20).toFixed(1)}`).join(', '));
  await k.terminate();
}
