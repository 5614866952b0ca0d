// Embedding wasm-chord in a JavaScript program (Node): load a GGUF model,
// render a chat with the model's own template, stream the reply.
//
//   (cd host-js && npm ci && npm run build)
//   node examples/embed-js/embed.mjs MODEL.gguf "What is WebAssembly?"
//
// The same calls work in a browser Web Worker with a BlobStore or an
// HttpRangeStore instead of the NodeFileStore (see host-js/demo/worker.js).
import {
  kernel, loadOptions, generateOptions, generate, errorMessage, NodeFileStore,
} from '../../host-js/src/node.js';

const [modelPath, question = 'What is the capital of France?'] = process.argv.slice(2);
if (!modelPath) {
  console.error('usage: node embed.mjs MODEL.gguf [QUESTION]');
  process.exit(2);
}

try {
  // The store decides where the kernel's bytes come from: here, files by path.
  const { Model } = await kernel(new NodeFileStore());
  const model = Model.load(loadOptions(modelPath));
  const info = model.info();
  console.error(`${info.name} (${info.architecture}, ${info.nLayers} layers)`);

  const text = info.chatTemplate !== undefined
    ? model.applyChatTemplate([{ role: 'user', content: question }], true)
    : question;
  const session = model.newSession(0);
  const stats = generate(
    session,
    model.tokenize(text, true, true),
    generateOptions({ maxTokens: 64, sampling: { temperature: 0.7, seed: 42 } }),
    (piece) => process.stdout.write(piece.text),
  );
  console.log();
  console.error(`${stats.generatedTokens} tokens, ${stats.generatedTokensPerSecond.toFixed(1)} tokens/s (${stats.stopReason})`);
} catch (e) {
  // Kernel errors carry the WIT `error` variant; errorMessage words it in one line.
  console.error(`error: ${errorMessage(e)}`);
  process.exit(1);
}
