// Model store for Node: model names are file paths, bytes are read with
// positional `fs.readSync` on an open descriptor (no whole-file buffer).
import fs from 'node:fs';
import { StoreError } from '../layer-store.js';

/** Node's error codes as the native host words them (Rust's io::Error text). */
const REASONS = {
  ENOENT: 'No such file or directory',
  EACCES: 'Permission denied',
  EPERM: 'Operation not permitted',
  EISDIR: 'Is a directory',
  ENOTDIR: 'Not a directory',
  ELOOP: 'Too many levels of symbolic links',
  EMFILE: 'Too many open files',
};

/** One line describing a Node fs error. */
export function ioReason(err) {
  return REASONS[err.code] ?? err.message;
}

class FileBackend {
  constructor(fd, size, path) {
    this.fd = fd;
    this.size = size;
    this.path = path;
  }

  readInto(offset, dest) {
    let done = 0;
    while (done < dest.length) {
      let n;
      try {
        n = fs.readSync(this.fd, dest, done, dest.length - done, offset + done);
      } catch (e) {
        throw new StoreError('io', `cannot read '${this.path}': ${ioReason(e)}`);
      }
      if (n === 0) {
        throw new StoreError('io', `cannot read '${this.path}': unexpected end of file at ${offset + done}`);
      }
      done += n;
    }
  }

  close() {
    fs.closeSync(this.fd);
  }
}

/** Opens model files by path. */
export class NodeFileStore {
  /** Positions are JS numbers (exact to 2^53): files beyond 4 GiB are served. */
  get memory64() {
    return true;
  }

  open(path) {
    let fd;
    try {
      fd = fs.openSync(path, 'r');
    } catch (e) {
      throw new StoreError('not-found', `cannot open '${path}': ${ioReason(e)}`);
    }
    const st = fs.fstatSync(fd);
    if (!st.isFile()) {
      fs.closeSync(fd);
      const what = st.isDirectory() ? 'is a directory, not a regular file' : 'not a regular file';
      throw new StoreError('not-found', `cannot open '${path}': ${what}`);
    }
    return new FileBackend(fd, st.size, path);
  }
}
