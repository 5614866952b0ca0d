// Child of relaxed.test.js: loads the kernel in this engine, scores a prompt
// teacher-forced and prints which build ran and the full log-probabilities
// (hex of the f32 bytes) as JSON. Mode `auto` takes the build kernel()
// chooses, `simd128` imports the simd128 build directly.
import {
  kernel, kernelBuild, loadOptions, NodeFileStore, setModelStore, wasmFeatures,
} from '../../src/node.js';

const [mode, model, text] = process.argv.slice(2);
let inference;
if (mode === 'simd128') {
  setModelStore(new NodeFileStore());
  inference = (await import('../../gen/kernel.js')).inference;
} else {
  inference = await kernel(new NodeFileStore());
}
const m = inference.Model.load(loadOptions(model));
const tokens = m.tokenize(text, true, false);
const session = m.newSession(0);
const lp = session.scoreFull(tokens, 1);
const bytes = Buffer.from(lp.buffer, lp.byteOffset, lp.byteLength);
console.log(JSON.stringify({
  build: mode === 'simd128' ? 'simd128' : kernelBuild(), features: wasmFeatures(), tokens: tokens.length, values: lp.length, hex: bytes.toString('hex'),
}));
