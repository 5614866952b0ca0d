// wasm-chord for JavaScript: the kernel component transpiled by jco, and the
// layer stores that feed it model bytes.
export {
  kernel, kernelBuild, kernelInstances, wasmFeatures, loadOptions, generateOptions, generate, timings, errorMessage, DEFAULT_SAMPLING,
} from './kernel.js';
export {
  StoreError, setModelStore, modelStore, sourceStats, MAX_REQUEST,
} from './layer-store.js';
export { MemoryStore } from './stores/memory.js';
export { BlobStore } from './stores/blob.js';
export { HttpRangeStore } from './stores/http.js';
export {
  Exchange, ShardHost, Sampler, Pcg64, exchangeBytes, canShare, generateSharded, MAX_STEP_TOKENS,
} from './shards.js';
