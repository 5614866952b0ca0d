// `perplexity` of the Node CLI: teacher-forced scoring with llama.cpp's
// `llama-perplexity` semantics, a port of host/src/cli/perplexity.rs (same
// flags, same output, same KL-divergence base files).
//
// Text (`-f`/`-p`) is tokenized once, BOS added as the vocabulary says, and
// cut into `n_tokens / n_ctx` chunks of `n_ctx` tokens. Each chunk is
// evaluated from an empty context, its first token replaced by BOS when the
// vocabulary adds one; only its second half is scored: the positions
// `n_ctx/2 .. n_ctx-2` predict the tokens `n_ctx/2+1 .. n_ctx-1`.
// `--tokens` scores a given token sequence in one pass instead.
import fs from 'node:fs';
import * as kld from './kld.js';

/** Default chunk length, as llama-perplexity's. */
export const DEFAULT_N_CTX = 512;

/** An error printed as one `error:` line. */
export class PerplexityError extends Error {}

function fail(msg) {
  throw new PerplexityError(msg);
}

/** Running negative log-likelihood sums. */
export class Nll {
  sum = 0;

  sum2 = 0;

  count = 0;

  add(logprob) {
    const v = -logprob;
    this.sum += v;
    this.sum2 += v * v;
    this.count++;
  }

  ppl() {
    return Math.exp(this.sum / Math.max(this.count, 1));
  }

  /** llama.cpp's uncertainty of the perplexity (undefined when it cannot be estimated). */
  uncertainty() {
    if (this.count < 2) return undefined;
    const n = this.count;
    const mean = this.sum / n;
    const v = this.sum2 / n - mean * mean;
    return v > 0 ? Math.sqrt(v / (n - 1)) * Math.exp(mean) : undefined;
  }
}

/**
 * A JSON line as the native CLI prints it (serde_json's `json!`: keys in
 * sorted order, f32 values widened to f64, which is what JSON.stringify prints).
 */
export function jsonLine(value) {
  const sorted = (v) => (Array.isArray(v) || v === null || typeof v !== 'object'
    ? v
    : Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted(v[k])])));
  return `${JSON.stringify(sorted(value))}\n`;
}

/** The `k` best entries of a log-probability row, best first. */
export function topOf(row, k) {
  const top = [];
  if (k === 0) return top;
  for (let i = 0; i < row.length; i++) {
    const v = row[i];
    if (top.length < k || v > top[top.length - 1][1]) {
      let at = 0;
      while (at < top.length && top[at][1] >= v) at++;
      top.splice(at, 0, [i, v]);
      if (top.length > k) top.length = k;
    }
  }
  return top;
}

/** Rust's `{:W.P}` for a float. */
function fixed(x, prec, width = 0) {
  let s;
  if (Number.isNaN(x)) s = 'NaN';
  else if (!Number.isFinite(x)) s = x > 0 ? 'inf' : '-inf';
  else s = x.toFixed(prec);
  return s.padStart(width);
}

/** What is printed for the scored tokens. */
class Output {
  constructor(json, topK, write) {
    this.json = json;
    this.topK = topK;
    this.write = write;
  }

  token(pos, token, logprob, top) {
    if (this.json) {
      this.write(jsonLine({
        pos, token, logprob, top: top.slice(0, this.topK).map(([id, lp]) => [id, lp]),
      }));
    }
  }

  text(s) {
    if (!this.json) this.write(s);
  }
}

function readText(v) {
  if (v.file !== undefined) {
    try {
      return fs.readFileSync(v.file, 'utf8');
    } catch (e) {
      return fail(`cannot read '${v.file}': ${reason(e)}`);
    }
  }
  return v.prompt;
}

function reason(e) {
  const m = String(e?.message ?? e);
  const r = /^E[A-Z]+: ([^,]*)/.exec(m);
  return r ? r[1][0].toUpperCase() + r[1].slice(1) : m;
}

/** Read a JSON array of token ids. */
function readTokens(path) {
  let text;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (e) {
    fail(`cannot read '${path}': ${reason(e)}`);
  }
  let tokens;
  try {
    tokens = JSON.parse(text);
  } catch {
    tokens = null;
  }
  const ok = Array.isArray(tokens) && tokens.every((t) => Number.isInteger(t) && t >= 0 && t <= 0xffffffff);
  if (!ok) fail(`'${path}' is not a JSON array of token ids`);
  if (tokens.length < 2) fail(`'${path}' holds ${tokens.length} token(s); scoring needs at least 2`);
  return tokens;
}

function checkVocab(tokens, nVocab) {
  const i = tokens.findIndex((t) => t >= nVocab);
  if (i >= 0) fail(`token ${i} is ${tokens[i]}, outside the model's vocabulary of ${nVocab}`);
}

function checkRows(rows, n, nVocab) {
  if (rows.length !== n * nVocab) {
    fail(`the kernel returned ${rows.length} log-probabilities, expected ${n} rows of ${nVocab}`);
  }
}

/** Chunk `c` of `tokens`, its first token replaced by BOS if the vocabulary adds one. */
function chunkTokens(tokens, c, nCtx, info) {
  const chunk = Uint32Array.from(tokens.slice(c * nCtx, (c + 1) * nCtx));
  if (info.addBos && info.bosToken !== undefined && info.bosToken !== null) chunk[0] = info.bosToken;
  return chunk;
}

/** The final estimate (stdout) and the speed (stderr). */
function finish(out, nll, evaluated, ms, log) {
  if (out.json) {
    out.write(jsonLine({ perplexity: nll.ppl(), n_tokens: nll.count }));
  } else {
    const u = nll.uncertainty();
    out.write(u === undefined
      ? `Final estimate: PPL = ${fixed(nll.ppl(), 4)}\n`
      : `Final estimate: PPL = ${fixed(nll.ppl(), 4)} +/- ${fixed(u, 5)}\n`);
  }
  const secs = Math.max(ms / 1e3, 1e-9);
  log(`scored ${nll.count} tokens (${evaluated} evaluated) in ${secs.toFixed(2)} s: ${(evaluated / secs).toFixed(2)} tokens/s`);
}

/**
 * Run `perplexity` with parsed options `v` (keys as the CLI flags).
 * `start()` compiles the kernel and loads the model (returns the model);
 * called only after the inputs were read and checked.
 */
export async function perplexity(v, start, { write = (s) => process.stdout.write(s), log = console.error } = {}) {
  if (v['n-ctx'] !== undefined && v['n-ctx'] < 2) fail(`--n-ctx must be at least 2 (got ${v['n-ctx']})`);
  if (v.file === undefined && v.prompt === undefined && v.tokens === undefined && !v['kl-divergence']) {
    fail('nothing to score: give -f FILE, -p TEXT or --tokens FILE.json');
  }
  if (v.tokens !== undefined && v['kl-divergence-base'] !== undefined) {
    fail('--kl-divergence-base works on chunked text (-f or -p), not with --tokens');
  }
  const text = readText(v);
  if (text !== undefined && text.trim() === '') fail('the text to score is empty');
  const givenTokens = v.tokens !== undefined ? readTokens(v.tokens) : undefined;
  const base = v['kl-divergence'] ? new kld.Reader(v['kl-divergence-base']) : undefined;
  const model = await start();
  const info = model.info();
  const nVocab = info.nVocab;
  const out = new Output(!!v.json, v['top-k'], write);

  if (givenTokens) {
    checkVocab(givenTokens, nVocab);
    return scoreSequence(model, givenTokens, v['n-ctx'] ?? 0, out, log);
  }

  if (base) {
    const h = base.header;
    if (h.nVocab !== nVocab) fail(`the KL-divergence base file has a vocabulary of ${h.nVocab}, the model ${nVocab}`);
    if (v['n-ctx'] !== undefined && v['n-ctx'] !== h.nCtx) {
      fail(`the KL-divergence base file was computed with --n-ctx ${h.nCtx}, not ${v['n-ctx']}`);
    }
    if (text !== undefined) {
      const ours = model.tokenize(text, true, false);
      const theirs = h.tokens;
      if (ours.length < theirs.length) {
        fail(`the text differs from the KL-divergence base file: it tokenizes to ${ours.length} tokens, the file holds ${theirs.length}`);
      }
      for (let i = 0; i < theirs.length; i++) {
        if (ours[i] !== theirs[i]) fail(`the text differs from the KL-divergence base file's tokens at token ${i} (${ours[i]} vs ${theirs[i]})`);
      }
    }
    try {
      return compare(model, info, h.tokens, h.nCtx, h.nChunk, base, out, log);
    } finally {
      base.close();
    }
  }

  if (text === undefined) fail('nothing to score: give -f FILE or -p TEXT');
  const nCtx = v['n-ctx'] ?? DEFAULT_N_CTX;
  if (nCtx < 4) fail(`--n-ctx must be at least 4 to score the second half of each chunk (got ${nCtx})`);
  const tokens = model.tokenize(text, true, false);
  const nChunk = Math.floor(tokens.length / nCtx);
  if (nChunk === 0) fail(`the text tokenizes to ${tokens.length} tokens, fewer than one chunk of --n-ctx ${nCtx}`);
  const writer = v['kl-divergence-base'] !== undefined
    ? new kld.Writer(v['kl-divergence-base'], {
      nCtx, nVocab, nChunk, tokens: tokens.slice(0, nChunk * nCtx),
    })
    : undefined;
  const session = model.newSession(nCtx);
  const first = Math.floor(nCtx / 2) + 1;
  const nll = new Nll();
  const t0 = performance.now();
  try {
    for (let c = 0; c < nChunk; c++) {
      const chunk = chunkTokens(tokens, c, nCtx, info);
      if (writer) {
        const rows = session.scoreFull(chunk, first);
        checkRows(rows, nCtx - first, nVocab);
        for (let r = 0; r < nCtx - first; r++) {
          const row = rows.subarray(r * nVocab, (r + 1) * nVocab);
          const pos = first + r;
          const lp = row[chunk[pos]];
          nll.add(lp);
          out.token(c * nCtx + pos, chunk[pos], lp, out.json ? topOf(row, v['top-k']) : []);
        }
        writer.writeRows(rows);
      } else {
        for (const s of session.score(chunk, first, out.json ? v['top-k'] : 0)) {
          nll.add(s.logprob);
          out.token(c * nCtx + s.pos, s.token, s.logprob, s.top);
        }
      }
      out.text(`[${c + 1}]${fixed(nll.ppl(), 4)},`);
    }
  } finally {
    session[Symbol.dispose]?.();
    writer?.finish();
  }
  out.text('\n');
  finish(out, nll, nChunk * nCtx, performance.now() - t0, log);
  return undefined;
}

/** `--tokens`: score the whole sequence from its second token on, in one pass. */
function scoreSequence(model, tokens, nCtx, out, log) {
  const session = model.newSession(Math.max(nCtx, tokens.length));
  const t0 = performance.now();
  const nll = new Nll();
  try {
    for (const s of session.score(Uint32Array.from(tokens), 1, out.json ? out.topK : 0)) {
      nll.add(s.logprob);
      out.token(s.pos, s.token, s.logprob, s.top);
    }
  } finally {
    session[Symbol.dispose]?.();
  }
  out.text(`[1]${fixed(nll.ppl(), 4)},\n`);
  finish(out, nll, tokens.length, performance.now() - t0, log);
}

/** `--kl-divergence`: score the base file's chunks and compare. */
function compare(model, info, tokens, nCtx, nChunk, base, out, log) {
  const nVocab = info.nVocab;
  const wordBytes = kld.rowWords(nVocab) * 2;
  const session = model.newSession(nCtx);
  const first = Math.floor(nCtx / 2) + 1;
  const stats = new kld.KldStats();
  const t0 = performance.now();
  out.text('chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p\n');
  try {
    for (let c = 0; c < nChunk; c++) {
      const chunk = chunkTokens(tokens, c, nCtx, info);
      const rows = session.scoreFull(chunk, first);
      checkRows(rows, nCtx - first, nVocab);
      const stored = base.nextChunk();
      for (let r = 0; r < nCtx - first; r++) {
        const row = rows.subarray(r * nVocab, (r + 1) * nVocab);
        const pos = first + r;
        const tok = chunk[pos];
        stats.add(row, stored, r * wordBytes, tok);
        out.token(c * nCtx + pos, tok, row[tok], out.json ? topOf(row, out.topK) : []);
      }
      const [ppl, pplUnc] = stats.ppl();
      const ratio = stats.logPplRatio();
      const kl = stats.kld();
      const rms = stats.rmsPDiff();
      const top = stats.sameTop();
      out.text(`${String(c + 1).padStart(4)}    ${fixed(ppl, 4, 9)} ± ${fixed(pplUnc, 4, 9)}    `
        + `${fixed(ratio[0], 5, 10)} ± ${fixed(ratio[1], 5, 10)}    ${fixed(kl[0], 5, 10)} ± ${fixed(kl[1], 5, 10)}    `
        + `${fixed(100 * rms[0], 3, 6)} ± ${fixed(100 * rms[1], 3, 6)} %    ${fixed(100 * top[0], 3, 6)} ± ${fixed(100 * top[1], 3, 6)} %\n`);
    }
  } finally {
    session[Symbol.dispose]?.();
  }
  const ms = performance.now() - t0;
  reportKld(out, stats);
  const secs = Math.max(ms / 1e3, 1e-9);
  log(`scored ${stats.count} tokens (${nChunk * nCtx} evaluated) in ${secs.toFixed(2)} s: ${((nChunk * nCtx) / secs).toFixed(2)} tokens/s`);
}

/** The summary of `--kl-divergence`, as llama.cpp prints it (or one JSON line). */
function reportKld(out, s) {
  const klds = Float32Array.from(s.klds).sort();
  const pd = Float32Array.from(s.pDiffs).sort();
  const [ppl, pplUnc] = s.ppl();
  const [pplBase, pplBaseUnc] = s.pplBase();
  const ratio = s.logPplRatio();
  const kl = s.kld();
  const rms = s.rmsPDiff();
  const top = s.sameTop();
  const dp = kld.meanAndUncertainty(s.sumPDiff, s.sumPDiff2, s.count);
  const kmed = kld.median(klds);
  const kmax = klds.length ? klds[klds.length - 1] : 0;
  if (out.json) {
    out.write(jsonLine({
      perplexity: ppl,
      n_tokens: s.count,
      kl_divergence: {
        ppl,
        ppl_uncertainty: pplUnc,
        ppl_base: pplBase,
        ppl_base_uncertainty: pplBaseUnc,
        ln_ppl_ratio: ratio[0],
        ln_ppl_ratio_uncertainty: ratio[1],
        mean: kl[0],
        uncertainty: kl[1],
        median: kmed,
        max: kmax,
        mean_dp_percent: 100 * dp[0],
        mean_dp_uncertainty: 100 * dp[1],
        rms_dp_percent: 100 * rms[0],
        rms_dp_uncertainty: 100 * rms[1],
        same_top_percent: 100 * top[0],
        same_top_uncertainty: 100 * top[1],
      },
    }));
    return;
  }
  const cov = s.logPplCov();
  const lp = kld.meanAndUncertainty(s.sumNll, s.sumNll2, s.count);
  const lb = kld.meanAndUncertainty(s.sumNllBase, s.sumNllBase2, s.count);
  const F = fixed;
  let t = '\n====== Perplexity statistics ======\n';
  t += `Mean PPL(Q)                   : ${F(ppl, 6, 10)} ± ${F(pplUnc, 6, 10)}\n`;
  t += `Mean PPL(base)                : ${F(pplBase, 6, 10)} ± ${F(pplBaseUnc, 6, 10)}\n`;
  t += `Cor(ln(PPL(Q)), ln(PPL(base))): ${F((100 * cov) / (lp[1] * lb[1]), 2, 6)}%\n`;
  t += `Mean ln(PPL(Q)/PPL(base))     : ${F(ratio[0], 6, 10)} ± ${F(ratio[1], 6, 10)}\n`;
  const r = Math.exp(ratio[0]);
  t += `Mean PPL(Q)/PPL(base)         : ${F(r, 6, 10)} ± ${F(r * ratio[1], 6, 10)}\n`;
  const pplCov = ppl * pplBase * cov;
  const diffUnc = Math.sqrt(Math.max(pplUnc * pplUnc + pplBaseUnc * pplBaseUnc - 2 * pplCov, 0));
  t += `Mean PPL(Q)-PPL(base)         : ${F(ppl - pplBase, 6, 10)} ± ${F(diffUnc, 6, 10)}\n`;
  t += '\n====== KL divergence statistics ======\n';
  t += `Mean    KLD: ${F(kl[0], 6, 10)} ± ${F(kl[1], 6, 10)}\n`;
  t += `Maximum KLD: ${F(kmax, 6, 10)}\n`;
  for (const [label, fr] of [['99.9%', 0.999], ['99.0%', 0.99], ['95.0%', 0.95], ['90.0%', 0.9]]) {
    t += `${label}   KLD: ${F(kld.percentile(klds, fr), 6, 10)}\n`;
  }
  t += `Median  KLD: ${F(kmed, 6, 10)}\n`;
  for (const [label, fr] of [['10.0%', 0.1], [' 5.0%', 0.05], [' 1.0%', 0.01], [' 0.1%', 0.001]]) {
    t += `${label}   KLD: ${F(kld.percentile(klds, fr), 6, 10)}\n`;
  }
  t += `Minimum KLD: ${F(klds.length ? klds[0] : 0, 6, 10)}\n`;
  t += '\n====== Token probability statistics ======\n';
  t += `Mean    Δp: ${F(100 * dp[0], 3, 6)} ± ${F(100 * dp[1], 3, 5)} %\n`;
  // f32 * 100 in f32, as the native host computes it.
  const pct = (x) => Math.fround(100 * x);
  t += `Maximum Δp: ${F(pct(pd.length ? pd[pd.length - 1] : 0), 3, 6)}%\n`;
  for (const [label, fr] of [['99.9%', 0.999], ['99.0%', 0.99], ['95.0%', 0.95], ['90.0%', 0.9], ['75.0%', 0.75]]) {
    t += `${label}   Δp: ${F(pct(kld.percentile(pd, fr)), 3, 6)}%\n`;
  }
  t += `Median  Δp: ${F(pct(kld.median(pd)), 3, 6)}%\n`;
  for (const [label, fr] of [['25.0%', 0.25], ['10.0%', 0.1], [' 5.0%', 0.05], [' 1.0%', 0.01], [' 0.1%', 0.001]]) {
    t += `${label}   Δp: ${F(pct(kld.percentile(pd, fr)), 3, 6)}%\n`;
  }
  t += `Minimum Δp: ${F(pct(pd.length ? pd[0] : 0), 3, 6)}%\n`;
  t += `RMS Δp    : ${F(100 * rms[0], 3, 6)} ± ${F(100 * rms[1], 3, 5)} %\n`;
  t += `Same top p: ${F(100 * top[0], 3, 6)} ± ${F(100 * top[1], 3, 5)} %\n`;
  out.text(t);
}
