// llama.cpp's KL-divergence base file (`llama-perplexity --kl-divergence-base`)
// and the statistics of `--kl-divergence`: a port of host/src/cli/kld.rs,
// f32 arithmetic kept where the native host does it in f32 (Math.fround).
//
// Layout (little-endian): the 8 bytes `_logits_`; `n_ctx`, `n_vocab` and
// `n_chunk` as i32; the `n_chunk * n_ctx` evaluated tokens as i32 (as
// tokenized: the first token of a chunk is not replaced by BOS); then per
// chunk, `n_ctx - 1 - n_ctx/2` rows (the positions `n_ctx/2 .. n_ctx-2`) of
// `nv = 2*((n_vocab+1)/2) + 4` u16 each: the row's `scale` and `min_log_prob`
// as two f32, then every token's log-probability quantized as
// `min_log_prob + scale * q` (q = 0 below `max - 16`), padded to an even count.
import fs from 'node:fs';

const f = Math.fround;
const MAGIC = Buffer.from('_logits_', 'latin1');

/** An error whose message is printed as is (one line). */
export class KldError extends Error {}

/** u16 words per stored row for a vocabulary of `nVocab`. */
export function rowWords(nVocab) {
  return 2 * Math.ceil(nVocab / 2) + 4;
}

/** Rows stored per chunk of `nCtx` tokens. */
export function rowsPerChunk(nCtx) {
  return nCtx - 1 - Math.floor(nCtx / 2);
}

function roundTiesEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Quantize one log-probability row into `out` (a DataView of `rowWords(row.length)*2` bytes at `at`). */
export function quantizeRow(row, view, at) {
  let max = -Infinity;
  let min = Infinity;
  for (const v of row) {
    if (v > max) max = v;
    if (v < min) min = v;
  }
  min = Math.max(min, f(max - 16));
  let sumExp = 0;
  for (const v of row) sumExp += f(Math.exp(f(v - max)));
  const logSumExp = f(Math.log(sumExp));
  const minLogProb = f(f(min - max) - logSumExp);
  const scale = f(f(max - min) / 65535);
  view.setFloat32(at, scale, true);
  view.setFloat32(at + 4, minLogProb, true);
  const q = at + 8;
  const n = rowWords(row.length) - 4;
  for (let i = 0; i < n; i++) view.setUint16(q + 2 * i, 0, true);
  if (scale !== 0) {
    const inv = f(1 / scale);
    for (let i = 0; i < row.length; i++) {
      const v = row[i];
      if (v > min) view.setUint16(q + 2 * i, Math.min(65535, roundTiesEven(f(inv * f(v - min)))), true);
    }
  }
}

function i32le(values) {
  const b = Buffer.alloc(4 * values.length);
  values.forEach((v, i) => b.writeInt32LE(v, 4 * i));
  return b;
}

/** Writes a base file chunk by chunk. */
export class Writer {
  /** Create `path` and write the header `{ nCtx, nVocab, nChunk, tokens }`. */
  constructor(path, h) {
    this.path = path;
    this.nVocab = h.nVocab;
    try {
      this.fd = fs.openSync(path, 'w');
    } catch (e) {
      throw new KldError(`cannot create '${path}': ${reason(e)}`);
    }
    this.write(Buffer.concat([MAGIC, i32le([h.nCtx, h.nVocab, h.nChunk]), i32le(Array.from(h.tokens))]));
  }

  /** Append the log-probability rows of one chunk (row-major, nVocab each). */
  writeRows(rows) {
    const n = rows.length / this.nVocab;
    const words = rowWords(this.nVocab);
    const buf = Buffer.alloc(n * words * 2);
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    for (let r = 0; r < n; r++) {
      quantizeRow(rows.subarray(r * this.nVocab, (r + 1) * this.nVocab), view, r * words * 2);
    }
    this.write(buf);
  }

  finish() {
    fs.closeSync(this.fd);
  }

  write(b) {
    try {
      fs.writeSync(this.fd, b);
    } catch (e) {
      throw new KldError(`cannot write '${this.path}': ${reason(e)}`);
    }
  }
}

function reason(e) {
  const m = String(e?.message ?? e);
  // "ENOENT: no such file or directory, open 'x'" → "No such file or directory"
  const r = /^E[A-Z]+: ([^,]*)/.exec(m);
  return r ? r[1][0].toUpperCase() + r[1].slice(1) : m;
}

/** Reads a base file: header first (checked against the file's size), then rows chunk by chunk. */
export class Reader {
  constructor(path) {
    this.path = path;
    let size;
    try {
      this.fd = fs.openSync(path, 'r');
      size = fs.fstatSync(this.fd).size;
    } catch (e) {
      throw new KldError(`cannot open '${path}': ${reason(e)}`);
    }
    const head = Buffer.alloc(20);
    const got = fs.readSync(this.fd, head, 0, 20, 0);
    if (got < 8 || !head.subarray(0, 8).equals(MAGIC)) {
      throw new KldError(`'${path}' is not a KL-divergence base file (no '_logits_' magic)`);
    }
    if (got < 20) throw new KldError(`'${path}' is truncated: its header is ${got} bytes, expected 20`);
    const [nCtx, nVocab, nChunk] = [head.readInt32LE(8), head.readInt32LE(12), head.readInt32LE(16)];
    if (nCtx < 4 || nVocab < 1 || nChunk < 1) {
      throw new KldError(`'${path}' has an invalid header: n_ctx ${nCtx}, n_vocab ${nVocab}, n_chunk ${nChunk}`);
    }
    const nTokens = nCtx * nChunk;
    const expected = 20 + 4 * nTokens + nChunk * rowsPerChunk(nCtx) * rowWords(nVocab) * 2;
    if (size < expected) {
      throw new KldError(`'${path}' is truncated: ${size} bytes, expected ${expected} for ${nChunk} chunks of ${nCtx} tokens and a vocabulary of ${nVocab}`);
    }
    if (size > expected) {
      throw new KldError(`'${path}' has ${size - expected} bytes of trailing data after ${nChunk} chunks of ${nCtx} tokens and a vocabulary of ${nVocab}`);
    }
    const raw = Buffer.alloc(4 * nTokens);
    fs.readSync(this.fd, raw, 0, raw.length, 20);
    const tokens = new Uint32Array(nTokens);
    for (let i = 0; i < nTokens; i++) {
      const t = raw.readInt32LE(4 * i);
      if (t < 0 || t >= nVocab) throw new KldError(`'${path}': token ${i} is ${t}, outside the vocabulary of ${nVocab}`);
      tokens[i] = t;
    }
    this.header = { nCtx, nVocab, nChunk, tokens };
    this.offset = 20 + raw.length;
    this.chunkBytes = rowsPerChunk(nCtx) * rowWords(nVocab) * 2;
  }

  /** The stored rows of the next chunk, as a DataView (`rowsPerChunk` rows of `rowWords` u16). */
  nextChunk() {
    const buf = Buffer.alloc(this.chunkBytes);
    const got = fs.readSync(this.fd, buf, 0, buf.length, this.offset);
    if (got < buf.length) throw new KldError('the KL-divergence base file ended early');
    this.offset += got;
    return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  close() {
    fs.closeSync(this.fd);
  }
}

/** Mean and its standard error, as llama.cpp computes them (0 below 11 samples). */
export function meanAndUncertainty(sum, sum2, count) {
  if (count < 1) return [0, 0];
  const m = sum / count;
  const d = sum2 / count - m * m;
  return [m, d > 0 && count > 10 ? Math.sqrt(d / (count - 1)) : 0];
}

/** Running sums of `--kl-divergence`, as llama.cpp keeps them. */
export class KldStats {
  constructor() {
    Object.assign(this, {
      sumNll: 0, sumNll2: 0, sumNllBase: 0, sumNllBase2: 0, sumNllNllBase: 0,
      sumKld: 0, sumKld2: 0, sumPDiff: 0, sumPDiff2: 0, sumPDiff4: 0,
      maxPDiff: 0, nSameTop: 0, count: 0, klds: [], pDiffs: [],
    });
  }

  /**
   * Add one position: our log-probability row `lp` (Float32Array), the stored
   * base row (DataView `base` at byte `at`) and the token that came next.
   */
  add(lp, base, at, tok) {
    let max = lp[0];
    let imax = 0;
    for (let i = 1; i < lp.length; i++) {
      if (lp[i] > max) {
        max = lp[i];
        imax = i;
      }
    }
    let sumExp = 0;
    for (let i = 0; i < lp.length; i++) sumExp += f(Math.exp(f(lp[i] - max)));
    const logSumExp = f(Math.log(sumExp));
    const scale = base.getFloat32(at, true);
    const minLogProb = base.getFloat32(at + 4, true);
    const q = at + 8;

    const norm = f(max + logSumExp);
    const nll = f(norm - lp[tok]);
    this.sumNll += nll;
    this.sumNll2 += f(nll * nll);
    const nllBase = -f(f(scale * base.getUint16(q + 2 * tok, true)) + minLogProb);
    this.sumNllBase += nllBase;
    this.sumNllBase2 += f(nllBase * nllBase);
    this.sumNllNllBase += f(nll * nllBase);

    let kld = 0;
    let imaxBase = 0;
    let baseMax = 0;
    for (let i = 0; i < lp.length; i++) {
      const pLogBase = f(f(scale * base.getUint16(q + 2 * i, true)) + minLogProb);
      if (i === 0 || pLogBase > baseMax) {
        baseMax = pLogBase;
        imaxBase = i;
      }
      if (pLogBase > -16) kld += f(Math.exp(pLogBase)) * f(f(pLogBase - lp[i]) + norm);
    }
    this.sumKld += kld;
    this.sumKld2 += kld * kld;
    this.count++;
    if (imax === imaxBase) this.nSameTop++;
    const pDiff = f(f(Math.exp(-nll)) - f(Math.exp(-nllBase)));
    this.sumPDiff += pDiff;
    const d2 = pDiff * pDiff;
    this.sumPDiff2 += d2;
    this.sumPDiff4 += d2 * d2;
    this.maxPDiff = Math.max(this.maxPDiff, Math.abs(pDiff));
    this.klds.push(f(kld));
    this.pDiffs.push(pDiff);
  }

  /** Our perplexity and its uncertainty. */
  ppl() {
    const [m, u] = meanAndUncertainty(this.sumNll, this.sumNll2, this.count);
    return [Math.exp(m), Math.exp(m) * u];
  }

  /** The base's perplexity and its uncertainty. */
  pplBase() {
    const [m, u] = meanAndUncertainty(this.sumNllBase, this.sumNllBase2, this.count);
    return [Math.exp(m), Math.exp(m) * u];
  }

  /** Covariance of ln(PPL(Q)) and ln(PPL(base)) (0 below 10 samples). */
  logPplCov() {
    if (this.count < 10) return 0;
    const n = this.count;
    return (this.sumNllNllBase / n - (this.sumNll / n) * (this.sumNllBase / n)) / (n - 1);
  }

  /** Mean ln(PPL(Q)/PPL(base)) and its uncertainty. */
  logPplRatio() {
    const a = meanAndUncertainty(this.sumNll, this.sumNll2, this.count);
    const b = meanAndUncertainty(this.sumNllBase, this.sumNllBase2, this.count);
    const v = a[1] * a[1] + b[1] * b[1] - 2 * this.logPplCov();
    return [a[0] - b[0], Math.sqrt(Math.max(v, 0))];
  }

  /** Mean KL divergence and its uncertainty. */
  kld() {
    return meanAndUncertainty(this.sumKld, this.sumKld2, this.count);
  }

  /** RMS of the probability difference of the right token, and its uncertainty. */
  rmsPDiff() {
    const [mse, unc] = meanAndUncertainty(this.sumPDiff2, this.sumPDiff4, this.count);
    const rms = Math.sqrt(mse);
    return [rms, rms > 0 ? (0.5 / rms) * unc : 0];
  }

  /** Fraction of positions where both pick the same most likely token, and its uncertainty. */
  sameTop() {
    if (this.count === 0) return [0, 0];
    const p = this.nSameTop / this.count;
    return [p, this.count > 1 ? Math.sqrt((p * (1 - p)) / (this.count - 1)) : 0];
  }
}

/** Median of sorted values (llama.cpp's way). */
export function median(sorted) {
  const n = sorted.length;
  if (n === 0) return 0;
  return n % 2 === 0 ? f(0.5 * f(sorted[n / 2] + sorted[n / 2 - 1])) : sorted[(n - 1) / 2];
}

/** Linear-interpolated percentile of sorted values (llama.cpp's way). */
export function percentile(sorted, fraction) {
  const n = sorted.length;
  if (n === 0) return 0;
  const fr = f(fraction);
  if (fr <= 0) return sorted[0];
  if (fr >= 1) return sorted[n - 1];
  let p = f(fr * (n - 1));
  const ip = Math.floor(p);
  p = f(p - ip);
  return f(f(f(1 - p) * sorted[ip]) + f(p * sorted[Math.min(ip + 1, n - 1)]));
}
