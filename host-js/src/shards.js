// Tensor-parallel shards in JavaScript (issue 19, docs/parallel.md): N
// workers, each with its own kernel instance holding one shard of the model
// (`Model.loadShard`), exchanging partial sums through a SharedArrayBuffer.
//
// The protocol is the native host's (host/src/shards.rs): per micro-batch of
// at most 32 tokens every shard calls `begin-step`, the partials are summed in
// shard order 0, 1, … N-1, the sum goes to every shard's `continue-step`, until
// every shard returns its slice of the vocabulary's logits. Here there is no
// coordinating thread: each worker writes its partial into its slot, meets the
// others at a barrier, and adds up all slots itself in shard order (the same
// f32 additions in the same order as the native host, so bit-identical sums).
// Workers block in `Atomics.wait`; the page's (or Node's) main thread never
// does: it only posts messages to shard 0 (the leader, which tokenizes,
// samples and reports pieces) and may set the stop flag.
//
// This module is environment-neutral (browser workers and Node worker threads).

/** Tokens per `begin-step` (the WIT's limit). */
export const MAX_STEP_TOKENS = 32;

// Control words (Int32Array at offset 0 of the buffer).
const ARRIVED = 0; // barrier: workers arrived in this round
const ROUND = 1; // barrier: completed rounds (waiters sleep on this word)
const ABORT = 2; // 1: a shard failed, everyone unwinds
const STOP = 3; // 1: the page asked the leader to stop generating
const CMD = 4; // leader -> followers: what to do after the command barrier
const N_TOKENS = 5; // tokens of the step
const LOGITS_FROM = 6; // logits-from of the step
const CONTROL_WORDS = 8;

/** Follower commands. */
const CMD_STEP = 1;
const CMD_RESET = 2;

/**
 * How long a waiting worker spins before it sleeps in `Atomics.wait` (ms), at
 * most and at least. The spin adapts: it doubles after a wait that ended while
 * spinning and halves after one that had to sleep, so on free cores the
 * exchange stays a spin (a half-layer takes ~0.1 ms, a sleep and wake-up tens
 * of µs) while on a busy machine the shards stop burning the time the other
 * shard needs (2 shards in Node, load average 6 on 2 cores: 28 ms of CPU per
 * token spinning 0.2 ms at every barrier, 16 ms not spinning, 13 ms for one shard).
 */
const SPIN_MAX_MS = 0.2;
const SPIN_MIN_MS = 0.005;

/** A shard failed elsewhere: this one unwinds (the set must be reloaded). */
export class ShardAborted extends Error {
  constructor() {
    super('another shard failed; the shards must be loaded again');
    this.name = 'ShardAborted';
  }
}

/**
 * Bytes of the shared buffer for `count` shards of a model with `nEmbd` and
 * `nVocab`: control words, the step's tokens, two partial buffers (one per
 * exchange parity) of a slot per shard, one row of logits.
 */
export function exchangeBytes(count, nEmbd, nVocab) {
  const slot = MAX_STEP_TOKENS * nEmbd;
  return 4 * (CONTROL_WORDS + MAX_STEP_TOKENS + 2 * count * slot + nVocab);
}

/** Whether this engine may share memory between workers (cross-origin isolation in a browser). */
export function canShare() {
  return typeof SharedArrayBuffer !== 'undefined' && typeof Atomics !== 'undefined'
    && (typeof crossOriginIsolated === 'undefined' || crossOriginIsolated === true);
}

/** One worker's view of the shared buffer. */
export class Exchange {
  /**
   * @param {SharedArrayBuffer} sab from `new SharedArrayBuffer(exchangeBytes(...))`
   * @param {{ count: number, index: number, nEmbd: number, nVocab: number, vocabStart: number, vocabLen: number }} o
   */
  constructor(sab, { count, index, nEmbd, nVocab, vocabStart = 0, vocabLen = 0 }) {
    if (sab.byteLength < exchangeBytes(count, nEmbd, nVocab)) throw new Error('the shared buffer is too small');
    this.count = count;
    this.index = index;
    this.nEmbd = nEmbd;
    this.nVocab = nVocab;
    this.vocabStart = vocabStart;
    this.vocabLen = vocabLen;
    this.ctl = new Int32Array(sab, 0, CONTROL_WORDS);
    let at = 4 * CONTROL_WORDS;
    this.tokens = new Uint32Array(sab, at, MAX_STEP_TOKENS);
    at += 4 * MAX_STEP_TOKENS;
    const slot = MAX_STEP_TOKENS * nEmbd;
    this.partials = [0, 1].map((p) => Array.from({ length: count }, (_, i) => new Float32Array(sab, at + 4 * slot * (p * count + i), slot)));
    at += 4 * 2 * count * slot;
    this.logits = new Float32Array(sab, at, nVocab);
    this.parity = 0;
    this.spinMs = SPIN_MAX_MS;
    /** Barriers passed and the time spent waiting in them (ms): the cost of the exchange. */
    this.stats = { barriers: 0, waitMs: 0 };
  }

  /** Wait until every shard has arrived (spin briefly, then `Atomics.wait`). */
  barrier() {
    const { ctl } = this;
    this.stats.barriers++;
    const round = Atomics.load(ctl, ROUND);
    if (Atomics.add(ctl, ARRIVED, 1) === this.count - 1) {
      Atomics.store(ctl, ARRIVED, 0);
      Atomics.add(ctl, ROUND, 1);
      Atomics.notify(ctl, ROUND);
      return;
    }
    const start = performance.now();
    const until = start + this.spinMs;
    let now = start;
    let slept = false;
    while (Atomics.load(ctl, ROUND) === round) {
      if (Atomics.load(ctl, ABORT)) throw new ShardAborted();
      if (now > until) {
        Atomics.wait(ctl, ROUND, round, 1000);
        slept = true;
      }
      now = performance.now();
    }
    this.spinMs = slept ? Math.max(this.spinMs / 2, SPIN_MIN_MS) : Math.min(this.spinMs * 2, SPIN_MAX_MS);
    this.stats.waitMs += now - start;
  }

  /** Whether a shard has failed (the set must be loaded again). */
  get aborted() {
    return Atomics.load(this.ctl, ABORT) === 1;
  }

  /** Tell every shard to give up (after a failure in this one). */
  abort() {
    Atomics.store(this.ctl, ABORT, 1);
    Atomics.notify(this.ctl, ROUND);
  }

  /** Sum of every shard's `partial`, added in shard order (all shards compute the same sum). */
  allReduce(partial) {
    const slots = this.partials[this.parity];
    this.parity ^= 1;
    const n = partial.length;
    if (n > slots[0].length) throw new Error(`partial of ${n} floats is larger than a slot`);
    slots[this.index].set(partial);
    this.barrier();
    const sum = new Float32Array(n);
    sum.set(slots[0].subarray(0, n));
    for (let s = 1; s < this.count; s++) {
      const p = slots[s];
      for (let i = 0; i < n; i++) sum[i] += p[i];
    }
    return sum;
  }

  /**
   * One step on every shard: `tokens` after those evaluated, logits for the
   * positions from `from` (at most the last one). After it the leader reads
   * the whole vocabulary's row from `logits` (if it asked for one).
   */
  step(session, tokens, from) {
    let partial = session.beginStep(tokens, from);
    for (;;) {
      const reduced = this.allReduce(partial);
      const s = session.continueStep(reduced);
      if (s.tag === 'partial') {
        partial = s.val;
        continue;
      }
      const rows = tokens.length - from;
      if (rows > 1) throw new Error('the shard driver asks for the logits of one position at most');
      if (s.val.length !== rows * this.vocabLen) throw new Error('the shards are out of step (a kernel bug)');
      if (rows === 1) this.logits.set(s.val, this.vocabStart);
      this.barrier();
      return;
    }
  }

  /** Leader: run one step on every shard (the followers wait in `follow`). */
  leaderStep(session, tokens, from) {
    this.tokens.set(tokens);
    Atomics.store(this.ctl, N_TOKENS, tokens.length);
    Atomics.store(this.ctl, LOGITS_FROM, from);
    Atomics.store(this.ctl, CMD, CMD_STEP);
    this.barrier();
    this.step(session, tokens, from);
  }

  /** Leader: forget the evaluated tokens on every shard. */
  leaderReset(session) {
    Atomics.store(this.ctl, CMD, CMD_RESET);
    this.barrier();
    session.reset();
    this.barrier();
  }

  /**
   * Leader: evaluate `tokens` in micro-batches; returns the whole
   * vocabulary's logits of the last token (a copy).
   */
  leaderEval(session, tokens) {
    for (let base = 0; base < tokens.length; base += MAX_STEP_TOKENS) {
      const chunk = tokens.subarray(base, base + MAX_STEP_TOKENS);
      const last = base + chunk.length === tokens.length;
      this.leaderStep(session, chunk, last ? chunk.length - 1 : chunk.length);
    }
    return this.logits.slice();
  }

  /** Follower: run the leader's steps until the set aborts (never returns otherwise). */
  follow(session) {
    for (;;) {
      this.barrier();
      const cmd = Atomics.load(this.ctl, CMD);
      if (cmd === CMD_STEP) {
        const n = Atomics.load(this.ctl, N_TOKENS);
        this.step(session, this.tokens.slice(0, n), Atomics.load(this.ctl, LOGITS_FROM));
      } else if (cmd === CMD_RESET) {
        session.reset();
        this.barrier();
      } else {
        throw new Error(`unknown shard command ${cmd}`);
      }
    }
  }

  /** Whether the page asked to stop (cleared when read). */
  takeStop() {
    return Atomics.exchange(this.ctl, STOP, 0) === 1;
  }

  /** The page's side: ask the leader to stop after the current token. */
  static requestStop(sab) {
    Atomics.store(new Int32Array(sab, 0, CONTROL_WORDS), STOP, 1);
  }
}

// ---------------------------------------------------------------------------
// Sampling on the leader, from the merged logits: the kernel's sampler
// (guest/kernel/src/sample.rs) in JavaScript, with its Pcg64 (rand_pcg's
// Lcg128Xsl64 seeded by rand_core's seed_from_u64), so a seed draws what the
// kernel would draw (f32 `exp` may differ in its last bit from the kernel's).

const M64 = (1n << 64n) - 1n;
const M128 = (1n << 128n) - 1n;
const PCG_MUL = 0x2360ED051FC65DA44385DF649FCCF645n;

function rotr64(x, r) {
  const k = BigInt(r & 63);
  return ((x >> k) | (x << ((64n - k) & 63n))) & M64;
}

/** rand_pcg's Lcg128Xsl64 (the kernel's `Pcg64`). */
export class Pcg64 {
  constructor(seed) {
    // rand_core 0.6 seed_from_u64: PCG32 outputs fill the 32-byte seed.
    let s = BigInt.asUintN(64, BigInt(seed));
    const words = [];
    for (let i = 0; i < 8; i++) {
      s = (s * 6364136223846793005n + 11634580027462260723n) & M64;
      const xorshifted = Number(((s >> 18n) ^ s) >> 27n & 0xffffffffn);
      const rot = Number(s >> 59n);
      words.push(BigInt(((xorshifted >>> rot) | (xorshifted << ((32 - rot) & 31))) >>> 0));
    }
    const u64 = (i) => words[2 * i] | (words[2 * i + 1] << 32n);
    const state = u64(0) | (u64(1) << 64n);
    this.inc = (u64(2) | (u64(3) << 64n)) | 1n;
    this.state = (state + this.inc) & M128;
    this.#step();
  }

  #step() {
    this.state = (this.state * PCG_MUL + this.inc) & M128;
  }

  nextU64() {
    this.#step();
    const rot = Number(this.state >> 122n);
    return rotr64(((this.state >> 64n) ^ this.state) & M64, rot);
  }
}

const f32 = Math.fround;

/** Index of the first maximum. */
export function argmax(v) {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

function softmaxInPlace(c, t) {
  let max = -Infinity;
  for (const x of c) if (x[1] > max) max = x[1];
  let sum = 0;
  for (const x of c) {
    x[1] = f32(Math.exp(f32(f32(x[1] - max) / t)));
    sum += x[1];
  }
  for (const x of c) x[1] = f32(x[1] / sum);
}

/** The kernel's `Sampler`, for `generate-options.sampling` (numbers; `seed` a number or bigint). */
export class Sampler {
  constructor(o) {
    this.temperature = f32(o.temperature);
    this.topK = o.topK >>> 0;
    this.topP = f32(o.topP);
    this.minP = f32(o.minP);
    this.repeatPenalty = f32(o.repeatPenalty);
    this.repeatLastN = o.repeatLastN >>> 0;
    if (!Number.isFinite(this.temperature) || this.temperature < 0) {
      throw new Error(`invalid input: temperature must be a finite number >= 0, got ${o.temperature}`);
    }
    if (!(this.topP > 0 && this.topP <= 1)) throw new Error(`invalid input: top-p must be in (0, 1], got ${o.topP}`);
    if (!(this.minP >= 0 && this.minP <= 1)) throw new Error(`invalid input: min-p must be in [0, 1], got ${o.minP}`);
    if (!(Number.isFinite(this.repeatPenalty) && this.repeatPenalty > 0)) {
      throw new Error(`invalid input: repeat-penalty must be a finite number > 0, got ${o.repeatPenalty}`);
    }
    this.rng = new Pcg64(o.seed ?? 0);
  }

  /** Pick the next token from `logits` (a Float32Array, modified in place). */
  sample(logits, history, banned) {
    const n = logits.length;
    if (this.repeatPenalty !== 1 && this.repeatLastN > 0) {
      const seen = new Set(history.slice(Math.max(0, history.length - this.repeatLastN)).filter((t) => t < n));
      for (const t of seen) {
        const l = logits[t];
        logits[t] = l > 0 ? l / this.repeatPenalty : l * this.repeatPenalty;
      }
    }
    for (const t of banned) if (t < n) logits[t] = -Infinity;
    if (this.temperature === 0) return argmax(logits);
    let cand = [];
    for (let i = 0; i < n; i++) if (Number.isFinite(logits[i])) cand.push([i, logits[i]]);
    if (cand.length === 0) return argmax(logits);
    cand.sort((a, b) => (b[1] - a[1]) || (a[0] - b[0]));
    if (this.topK !== 0 && this.topK < cand.length) cand.length = this.topK;
    softmaxInPlace(cand, 1);
    if (this.topP < 1) {
      let acc = 0;
      let keep = cand.length;
      for (let i = 0; i < cand.length; i++) {
        acc += cand[i][1];
        if (acc >= this.topP) {
          keep = i + 1;
          break;
        }
      }
      cand.length = Math.max(keep, 1);
    }
    if (this.minP > 0) {
      const floor = f32(cand[0][1] * this.minP);
      let keep = 0;
      while (keep < cand.length && cand[keep][1] >= floor) keep++;
      cand.length = Math.max(keep, 1);
    }
    cand = cand.map(([i]) => [i, logits[i]]);
    softmaxInPlace(cand, this.temperature);
    const r = Number(this.rng.nextU64() >> 11n) / 2 ** 53;
    let acc = 0;
    for (const c of cand) {
      acc += c[1];
      if (r < acc) return c[0];
    }
    return cand[cand.length - 1][0];
  }
}

/**
 * Leader: generate from `prompt` (token ids) on every shard, like the native
 * shard driver's `run` (host/src/shard_cli.rs): sampled on the leader from
 * the merged logits; stops at the model's EOS token (unless `ignoreEos`), at
 * `maxTokens`, at a full context, or when `shouldStop()` says so.
 * `onPiece({ token, text })` for every token. Returns timings like `generate`.
 * @param options `generateOptions(...)`
 */
export function generateSharded(model, session, exchange, prompt, options, onPiece, shouldStop = () => false) {
  const { eosToken } = model.info();
  const sampler = new Sampler(options.sampling);
  const banned = options.ignoreEos && eosToken !== undefined ? [eosToken] : [];
  const nCtx = session.nCtx();
  if (prompt.length === 0) throw new Error('invalid input: the prompt is empty');
  if (prompt.length >= nCtx) throw new Error(`context full: the prompt has ${prompt.length} tokens, n_ctx is ${nCtx}`);
  try {
    return generateOn(model, session, exchange, prompt, options, onPiece, shouldStop, sampler, banned, eosToken, nCtx);
  } catch (e) {
    // The followers may be waiting in a barrier this shard will not reach.
    exchange.abort();
    throw e;
  }
}

function generateOn(model, session, exchange, prompt, options, onPiece, shouldStop, sampler, banned, eosToken, nCtx) {
  exchange.leaderReset(session);
  let nPast = prompt.length;
  let t = performance.now();
  let logits = exchange.leaderEval(session, Uint32Array.from(prompt));
  const promptMs = performance.now() - t;
  t = performance.now();
  const history = Array.from(prompt);
  const generated = [];
  let shown = '';
  let stopReason;
  for (;;) {
    const token = sampler.sample(logits, history, banned);
    if (!options.ignoreEos && token === eosToken) {
      stopReason = 'eos';
      break;
    }
    generated.push(token);
    history.push(token);
    // The text that became complete (held back inside a UTF-8 sequence), as the native host.
    const all = model.detokenize(Uint32Array.from(generated));
    const text = all.endsWith('\ufffd') || !all.startsWith(shown) ? '' : all.slice(shown.length);
    shown += text;
    onPiece({ token, text });
    if (generated.length >= options.maxTokens) {
      stopReason = 'length';
      break;
    }
    if (shouldStop()) {
      stopReason = 'stopped';
      break;
    }
    if (nPast + 1 >= nCtx) {
      stopReason = 'context';
      break;
    }
    logits = exchange.leaderEval(session, Uint32Array.of(token));
    nPast++;
  }
  return {
    promptMs, generated, generationMs: performance.now() - t, stopReason,
  };
}

/**
 * One shard in one worker: its kernel instance, model shard and session.
 * The worker's message handler calls `load`, then (once the page has made
 * the shared buffer for all of them) `attach`; then shard 0 answers
 * `generate` requests while the others `follow` (blocking their worker).
 */
export class ShardHost {
  /** @param inference the kernel's `inference` exports (from `kernel(store)`) */
  constructor(inference) {
    this.inference = inference;
    this.model = null;
    this.session = null;
    this.exchange = null;
  }

  /** Load shard `index` of `count`; returns what the page needs to know. */
  load(loadOptions, index, count) {
    this.model = this.inference.Model.loadShard(loadOptions, { index, count });
    this.session = this.model.newSession(0);
    const s = this.model.shardInfo();
    const i = this.model.info();
    this.shard = s;
    return {
      index: s.index,
      count: s.count,
      vocabStart: s.vocabStart,
      vocabLen: s.vocabLen,
      nEmbd: i.nEmbd,
      nVocab: i.nVocab,
      // What the kernel read from the store for this shard (its slices, the replicated tensors, the metadata).
      bytesRead: Number(this.model.storeStats().bytesServed),
      fileSize: Number(i.fileSize),
    };
  }

  /** Use `sab` (from `exchangeBytes`) for the exchange. */
  attach(sab) {
    const i = this.model.info();
    this.exchange = new Exchange(sab, {
      count: this.shard.count, index: this.shard.index, nEmbd: i.nEmbd, nVocab: i.nVocab, vocabStart: this.shard.vocabStart, vocabLen: this.shard.vocabLen,
    });
  }

  /** Follower: block in the exchange until the set fails (throws then). */
  follow() {
    try {
      this.exchange.follow(this.session);
    } catch (e) {
      this.exchange.abort();
      throw e;
    }
  }

  /** Leader: the whole vocabulary's logits after `prompt` (token ids), from an empty context. */
  logits(prompt) {
    if (prompt.length === 0 || prompt.length >= this.session.nCtx()) {
      throw new Error(`invalid input: the prompt has ${prompt.length} tokens, n_ctx is ${this.session.nCtx()}`);
    }
    try {
      this.exchange.leaderReset(this.session);
      return this.exchange.leaderEval(this.session, Uint32Array.from(prompt));
    } catch (e) {
      this.exchange.abort();
      throw e;
    }
  }

  /**
   * Leader: generate from `prompt` (token ids) with `generateOptions(...)`;
   * returns `{ tokens, promptMs, generationMs, stopReason }`.
   */
  generate(prompt, options, onPiece, shouldStop) {
    const r = generateSharded(this.model, this.session, this.exchange, prompt, options, onPiece, shouldStop);
    return {
      tokens: r.generated, promptMs: r.promptMs, generationMs: r.generationMs, stopReason: r.stopReason, exchange: { ...this.exchange.stats },
    };
  }
}
