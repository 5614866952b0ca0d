// The browser demo's two modes in Chromium (playwright-core): served cross-origin
// isolated (COOP/COEP) it runs one Web Worker per tensor-parallel shard (2 on a
// 2-core machine), exchanging through a SharedArrayBuffer, and its greedy tokens
// equal the native host's `run --shards 2`; served without the headers it runs
// one worker and gives the native single-instance tokens. Both pass the fixture rule.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';
import { startServer } from '../../demo/server.mjs';
import {
  GOLDEN, HOST_JS, MODEL, NATIVE_BIN, checkGreedy, parseJsonRun, requireFile, runCli, tempDir,
} from '../helpers.js';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.WASM_CHORD_ARTIFACTS || path.join(HOST_JS, 'test-artifacts');
const MODEL_NAME = path.basename(MODEL);
const CASE = GOLDEN.cases.find((c) => c.id === 'capital');
const N = GOLDEN.n_predict;

function nativeTokens(shards, input = ['-p', CASE.prompt]) {
  const r = runCli('native', ['run', '-m', MODEL, '--shards', String(shards), ...input, '-n', String(N),
    '--temp', '0', '--ignore-eos', '--json']);
  assert.equal(r.status, 0, r.stderr);
  return parseJsonRun(r.stdout).tokens.map((t) => t.token);
}

describe('browser demo: shards when cross-origin isolated, one worker otherwise (chromium)', () => {
  let isolated;
  let plain;
  let browser;
  const results = {};

  before(async () => {
    requireFile(MODEL, 'run `cargo xtask fetch` or set WASM_CHORD_SMOLLM2');
    requireFile(NATIVE_BIN, 'run `cargo xtask build` or set WASM_CHORD_BIN');
    requireFile(CHROMIUM, 'install chromium (apt-get install -y chromium) or set CHROMIUM');
    const models = tempDir();
    fs.symlinkSync(path.resolve(MODEL), path.join(models, MODEL_NAME));
    fs.writeFileSync(path.join(models, 'not-a-model.gguf'), 'hello, this is not a GGUF file\n'.repeat(100));
    isolated = await startServer({ port: 0, models, isolated: true });
    plain = await startServer({ port: 0, models, isolated: false });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
        '--disable-sync', '--no-first-run'],
    });
    fs.mkdirSync(ARTIFACTS, { recursive: true });
  });

  after(async () => {
    await browser?.close();
    isolated?.close();
    plain?.close();
  });

  async function load(page, url) {
    await page.fill('#url', url);
    await page.click('#load');
    await page.waitForFunction(() => ['loaded', 'error'].includes(document.body.dataset.state), null, { timeout: 180_000 });
    return page.evaluate(() => document.body.dataset.state);
  }

  async function open(server, query = '') {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`http://127.0.0.1:${server.address().port}/demo/${query}`);
    assert.equal(await load(page, `/models/${MODEL_NAME}`), 'loaded', await page.textContent('#error'));
    return { page, errors };
  }

  async function greedy(page, shot) {
    await page.fill('#prompt', CASE.prompt);
    await page.fill('#n', String(N));
    await page.fill('#temp', '0');
    await page.check('#ignore-eos');
    await page.click('#run');
    await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), null, { timeout: 180_000 });
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'done', await page.textContent('#error'));
    await page.screenshot({ path: path.join(ARTIFACTS, shot), fullPage: true });
    return {
      tokens: (await page.getAttribute('#output', 'data-tokens')).split(',').map(Number),
      text: await page.textContent('#output'),
      speed: await page.textContent('#speed'),
    };
  }

  test('isolated: 2 shard workers, tokens = native --shards 2, the stop button works', async () => {
    const { page, errors } = await open(isolated);
    assert.equal(await page.evaluate(() => crossOriginIsolated), true);
    const cores = await page.evaluate(() => navigator.hardwareConcurrency);
    const workers = Number(await page.getAttribute('#mode', 'data-workers'));
    // SmolLM2 (3 key/value heads) splits into at most 3 shards.
    assert.equal(workers, Math.min(Math.max(cores, 1), 4, 3));
    assert.ok(workers >= 2, `a machine with ${cores} core(s) runs ${workers} shard(s): the test needs 2 cores`);
    assert.equal(page.workers().length, workers, 'one Web Worker per shard');
    assert.equal(await page.textContent('#mode'), `${workers} shards, cross-origin isolated`);

    const r = await greedy(page, 'browser-shards.png');
    console.log(`browser, ${workers} shards: ${r.speed}`);
    assert.equal(r.tokens.length, N);
    assert.deepEqual(r.tokens, nativeTokens(workers), `tokens = native run --shards ${workers}`);
    checkGreedy(CASE.id, r.tokens, CASE, GOLDEN.near_tie ?? 0.75);
    results.isolated = r;

    // Stop: shard 0 is busy in the exchange and reads the flag from the shared buffer.
    await page.fill('#prompt', 'Once upon a time');
    await page.fill('#n', '1000');
    await page.click('#run');
    await page.waitForFunction(() => (document.getElementById('output').dataset.tokens ?? '').split(',').length >= 4);
    await page.click('#stop');
    await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: 60_000 });
    const n = (await page.getAttribute('#output', 'data-tokens')).split(',').length;
    assert.ok(n < 1000, `stopped after ${n} tokens`);
    assert.match(await page.textContent('#speed'), /stop: stopped/);

    // And it generates again afterwards, the same tokens.
    assert.deepEqual((await greedy(page, 'browser-shards-again.png')).tokens, r.tokens);

    // Chat mode: the model's template on the leader, the native --shards N reply.
    const c = GOLDEN.cases.find((x) => x.messages);
    await page.check('#chat');
    await page.fill('#prompt', c.messages[0].content);
    await page.fill('#n', String(N));
    await page.click('#run');
    await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), null, { timeout: 180_000 });
    const chat = (await page.getAttribute('#output', 'data-tokens')).split(',').map(Number);
    const file = path.join(tempDir(), 'messages.json');
    fs.writeFileSync(file, JSON.stringify(c.messages));
    assert.deepEqual(chat, nativeTokens(workers, ['--messages', file]), 'chat tokens = native');
    checkGreedy(c.id, chat, c, GOLDEN.near_tie ?? 0.75);
    assert.ok((await page.textContent('#conversation')).includes(`user: ${c.messages[0].content}`));
    await page.click('#clear');
    await page.uncheck('#chat');

    // Bad models: the shard's message, then the page loads SmolLM2 again.
    assert.equal(await load(page, '/models/missing.gguf'), 'error');
    assert.match(await page.textContent('#error'), /HTTP 404/);
    assert.equal(await load(page, '/models/not-a-model.gguf'), 'error');
    assert.match(await page.textContent('#error'), /invalid model: bad magic/);
    assert.equal(await load(page, `/models/${MODEL_NAME}`), 'loaded', await page.textContent('#error'));
    assert.equal(page.workers().length, workers);
    assert.deepEqual((await greedy(page, 'browser-shards-reloaded.png')).tokens, r.tokens);
    assert.deepEqual(errors, []);
    await page.close();
  });

  test('isolated, ?shards=4: SmolLM2 (3 key/value heads) splits into 3, the page says so, tokens = native --shards 3', async () => {
    const { page, errors } = await open(isolated, '?shards=4');
    assert.equal(await page.getAttribute('#mode', 'data-workers'), '3');
    assert.equal(page.workers().length, 3, 'the fourth worker was dropped');
    assert.equal(await page.textContent('#mode'), '3 shards, cross-origin isolated (the model splits into 3)');
    const r = await greedy(page, 'browser-3-shards.png');
    assert.deepEqual(r.tokens, nativeTokens(3));
    checkGreedy(CASE.id, r.tokens, CASE, GOLDEN.near_tie ?? 0.75);
    assert.deepEqual(errors, []);
    await page.close();
  });

  test('not isolated: 1 worker, tokens = native single instance', async () => {
    const { page, errors } = await open(plain);
    assert.equal(await page.evaluate(() => crossOriginIsolated), false);
    assert.equal(await page.getAttribute('#mode', 'data-workers'), '1');
    assert.equal(page.workers().length, 1);
    assert.equal(await page.textContent('#mode'), '1 worker: not cross-origin isolated');

    const r = await greedy(page, 'browser-one-worker.png');
    console.log(`browser, 1 worker: ${r.speed}`);
    assert.deepEqual(r.tokens, nativeTokens(1), 'tokens = native run');
    checkGreedy(CASE.id, r.tokens, CASE, GOLDEN.near_tie ?? 0.75);
    if (results.isolated) {
      const same = JSON.stringify(results.isolated.tokens) === JSON.stringify(r.tokens);
      console.log(`1 worker and shards: ${same ? 'the same tokens' : 'they part at a near tie (both pass the fixture rule)'}`);
    }
    assert.deepEqual(errors, []);
    await page.close();
  });
});
