// A kernel in a Node worker thread, so that a call can have a deadline. JS
// engines have no epoch interruption: a kernel call runs to its end on its
// thread. Here it runs on another one; a call still running at its deadline
// terminates that worker (V8 stops the wasm code where it is, freeing the
// instance and its memory) and rejects with `DeadlineExceeded`, and the next
// call starts a fresh worker and loads the models again.
import { Worker } from 'node:worker_threads';

/** A kernel call ran past its deadline; its worker was terminated. */
export class DeadlineExceeded extends Error {
  constructor(ms) {
    super(`the kernel call ran past its deadline of ${ms} ms; its worker was terminated`);
    this.name = 'DeadlineExceeded';
  }
}

const THREAD = new URL('./worker-kernel-thread.js', import.meta.url);

/**
 * The kernel behind a worker thread, models read with `NodeFileStore`.
 * Every call takes `{ timeoutMs }` (none: no deadline).
 */
export class KernelWorker {
  #worker = null;
  #next = 1;
  #pending = new Map();
  #models = new Map(); // handle -> [name, options], loaded again in a fresh worker
  #instances = 0;

  /** Workers started so far (more than one after a deadline or a crash). */
  get instances() {
    return this.#instances;
  }

  #start() {
    const worker = new Worker(THREAD);
    this.#instances++;
    const fail = (e) => {
      if (this.#worker === worker) this.#worker = null;
      for (const [, p] of this.#pending) {
        if (p.worker === worker && !p.timedOut) p.reject(e);
      }
    };
    worker.on('message', ({ id, ok, value, error }) => {
      const p = this.#pending.get(id);
      if (!p) return;
      this.#pending.delete(id);
      if (ok) p.resolve(value);
      else p.reject(new Error(error));
    });
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`the kernel worker exited (code ${code})`)));
    this.#worker = worker;
    return worker;
  }

  #send(worker, op, args, timeoutMs) {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      let timer = null;
      const done = (f) => (v) => {
        if (timer) clearTimeout(timer);
        this.#pending.delete(id);
        f(v);
      };
      this.#pending.set(id, { worker, resolve: done(resolve), reject: done(reject) });
      if (timeoutMs != null) {
        timer = setTimeout(() => {
          const p = this.#pending.get(id);
          if (!p) return;
          // Rejected once the thread is gone: the wasm code has stopped.
          p.timedOut = true;
          if (this.#worker === worker) this.#worker = null;
          worker.terminate().then(() => p.reject(new DeadlineExceeded(timeoutMs)), p.reject);
        }, timeoutMs);
      }
      worker.postMessage({ id, op, args });
    });
  }

  async #call(op, args, timeoutMs) {
    let worker = this.#worker;
    if (!worker) {
      worker = this.#start();
      for (const [handle, [name, options]] of this.#models) {
        await this.#send(worker, 'load', [handle, name, options]);
      }
    }
    return this.#send(worker, op, args, timeoutMs);
  }

  /** Load the model `name` (a path); returns its handle. */
  async load(name, options = {}, { timeoutMs } = {}) {
    const handle = this.#next++;
    await this.#call('load', [handle, name, options], timeoutMs);
    this.#models.set(handle, [name, options]);
    return handle;
  }

  /** Token ids of `text` (special tokens added and parsed). */
  tokenize(model, text, { timeoutMs } = {}) {
    return this.#call('tokenize', [model, text], timeoutMs);
  }

  /**
   * Generate from `prompt` (text) in a new session with `generateOptions(options)`;
   * resolves to `{ text, stats }`.
   */
  generate(model, prompt, options = {}, { timeoutMs } = {}) {
    return this.#call('generate', [model, prompt, options], timeoutMs);
  }

  /** Stop the worker (a later call starts a new one). */
  async terminate() {
    const worker = this.#worker;
    this.#worker = null;
    if (worker) await worker.terminate();
  }
}
