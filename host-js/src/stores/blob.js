// Model store over Blobs / Files (a model picked with <input type=file>).
// Reads are synchronous with FileReaderSync, which exists only in Web Workers:
// run the kernel in a worker.
import { StoreError } from '../layer-store.js';

export class BlobStore {
  #blobs = new Map();

  /** Serve `blob` under `name`. */
  insert(name, blob) {
    this.#blobs.set(name, blob);
    return this;
  }

  open(name) {
    const blob = this.#blobs.get(name);
    if (!blob) throw new StoreError('not-found', `no file named '${name}' was given`);
    if (typeof FileReaderSync === 'undefined') {
      throw new StoreError('io', 'reading a Blob synchronously needs FileReaderSync: run the kernel in a Web Worker');
    }
    const reader = new FileReaderSync();
    return {
      size: blob.size,
      readInto(offset, dest) {
        let buf;
        try {
          buf = reader.readAsArrayBuffer(blob.slice(offset, offset + dest.length));
        } catch (e) {
          throw new StoreError('io', `cannot read '${name}': ${e.message}`);
        }
        if (buf.byteLength !== dest.length) {
          throw new StoreError('io', `cannot read '${name}': short read at ${offset}`);
        }
        dest.set(new Uint8Array(buf));
      },
    };
  }
}
