// Tensor-parallel shards in Node: one worker thread per shard, the exchange
// through a SharedArrayBuffer (shards.js). The main thread never blocks.
import { Worker } from 'node:worker_threads';
import { exchangeBytes } from './shards.js';

const THREAD = new URL('./shard-thread.js', import.meta.url);

class Thread {
  constructor() {
    this.worker = new Worker(THREAD);
    this.pending = null;
    this.onPiece = null;
    this.worker.on('message', (m) => {
      if (m.piece) return this.onPiece?.(m.piece);
      const p = this.pending;
      this.pending = null;
      if (m.ok) p?.resolve(m.value);
      else p?.reject(new Error(m.error));
    });
    const fail = (e) => {
      const p = this.pending;
      this.pending = null;
      p?.reject(e);
    };
    this.worker.on('error', fail);
    this.worker.on('exit', (code) => fail(new Error(`a shard thread exited (code ${code})`)));
  }

  call(op, args = {}) {
    if (this.pending) return Promise.reject(new Error('busy: one request at a time'));
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      this.worker.postMessage({ op, ...args });
    });
  }
}

/** A model split into shards, each in its own worker thread. */
export class ShardedKernel {
  #threads = [];
  #sab = null;

  /** Shards the model runs in (it may split into fewer than asked for). */
  get count() {
    return this.#threads.length;
  }

  /** What each shard holds ({ index, count, vocabStart, vocabLen, nEmbd, nVocab }). */
  shards = [];

  /**
   * Load `name` (a path) split into `shards` (at most; fewer if the model does not split so).
   * @param {{ shards?: number, options?: object }} [o] `options` as for `loadOptions`
   */
  static async load(name, { shards = 2, options = {} } = {}) {
    const k = new ShardedKernel();
    try {
      const first = new Thread();
      k.#threads.push(first);
      const info0 = await first.call('load', { name, options, index: 0, count: shards });
      const rest = [];
      for (let i = 1; i < info0.count; i++) rest.push(new Thread());
      k.#threads.push(...rest);
      const infos = await Promise.all(rest.map((t, i) => t.call('load', {
        name, options, index: i + 1, count: shards,
      })));
      k.shards = [info0, ...infos];
      k.#sab = new SharedArrayBuffer(exchangeBytes(info0.count, info0.nEmbd, info0.nVocab));
      await Promise.all(k.#threads.map((t) => t.call('attach', { sab: k.#sab })));
      // The followers answer 'follow', then block in their exchange; they
      // post again only if they fail.
      for (const t of rest) {
        await new Promise((resolve, reject) => {
          t.pending = { resolve, reject };
          t.worker.postMessage({ op: 'follow' });
        });
        // A follower answers again only when it fails: keep why.
        t.pending = { resolve: () => {}, reject: (e) => { t.failure = e; } };
      }
    } catch (e) {
      await k.terminate();
      throw e;
    }
    return k;
  }

  /**
   * Generate from `prompt` (text) with `generateOptions(options)`;
   * resolves to `{ tokens, text, promptTokens, promptMs, generationMs, stopReason, exchange }`
   * (`exchange`: barriers passed and ms the leader waited in them, since the load).
   */
  async generate(prompt, options = {}, onPiece = undefined) {
    const leader = this.#threads[0];
    let text = '';
    leader.onPiece = (p) => {
      text += p.text;
      onPiece?.(p);
    };
    const r = await this.#leader('generate', { prompt, options });
    return { ...r, text };
  }

  /** The whole vocabulary's logits after `prompt` (text), from an empty context (a Float32Array). */
  logits(prompt) {
    return this.#leader('logits', { prompt });
  }

  /** A request to shard 0; a failure elsewhere is reported as that shard's error. */
  async #leader(op, args) {
    try {
      return await this.#threads[0].call(op, args);
    } catch (e) {
      const other = this.#threads.slice(1).find((t) => t.failure && !/another shard failed/.test(t.failure.message));
      if (/another shard failed/.test(e.message) && other) {
        throw new Error(`shard ${this.#threads.indexOf(other)}: ${other.failure.message}`);
      }
      throw e;
    }
  }

  /** Stop every thread (needed: the followers' threads block in the exchange and keep Node running). */
  async terminate() {
    await Promise.all(this.#threads.map((t) => t.worker.terminate()));
    this.#threads = [];
  }
}
