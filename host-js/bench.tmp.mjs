import { ShardedKernel, kernel, NodeFileStore, loadOptions, generateOptions, generate } from './src/node.js';
const M = process.env.HOME + '/.cache/wasm-chord/models/SmolLM2-135M-Instruct.Q4_1.gguf';
const opts = { maxTokens: 64, ignoreEos: true, sampling: { temperature: 0 } };
const inf = await kernel(new NodeFileStore());
const m = inf.Model.load(loadOptions(M));
for (let rep = 0; rep < 2; rep++) {
  const s = m.newSession(0);
  const st = generate(s, m.tokenize('The capital of France is', true, true), generateOptions(opts), () => {});
  console.log('plain', st.generatedTokensPerSecond.toFixed(1));
  s[Symbol.dispose]();
}
for (const n of [1, 2]) {
  const k = await ShardedKernel.load(M, { shards: n });
  for (let rep = 0; rep < 2; rep++) {
    const r = await k.generate('The capital of France is', opts);
    console.log('shards', n, ((r.tokens.length - 1) / (r.generationMs / 1e3)).toFixed(1), r.exchange, r.promptMs + r.generationMs);
  }
  await k.terminate();
}
