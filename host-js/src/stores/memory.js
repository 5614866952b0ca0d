// Model store over bytes already in memory (ArrayBuffer / Uint8Array), by name.
import { StoreError } from '../layer-store.js';

export class MemoryStore {
  #models = new Map();

  /** Serve `bytes` (ArrayBuffer or any typed array) under `name`. */
  insert(name, bytes) {
    const view = bytes instanceof ArrayBuffer
      ? new Uint8Array(bytes)
      : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#models.set(name, view);
    return this;
  }

  open(name) {
    const bytes = this.#models.get(name);
    if (!bytes) throw new StoreError('not-found', `no model named '${name}' in the memory store`);
    return {
      size: bytes.length,
      readInto(offset, dest) {
        dest.set(bytes.subarray(offset, offset + dest.length));
      },
    };
  }
}
