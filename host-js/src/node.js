// Node entry point: everything in index.js plus the file store.
export * from './index.js';
export { NodeFileStore, ioReason } from './stores/node-file.js';
export { KernelWorker, DeadlineExceeded } from './worker-kernel.js';
export { ShardedKernel } from './shards-node.js';
