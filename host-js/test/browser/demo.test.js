// The browser demo in a real browser (Debian's chromium, driven by
// playwright-core): load SmolLM2 by URL from the demo server through the HTTP
// Range store, generate greedily, compare with the golden continuation; bad
// URLs and files give clear messages and the page can load another model.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';
import { startServer } from '../../demo/server.mjs';
import { GOLDEN, HOST_JS, MODEL, checkGreedy, requireFile, tempDir } from '../helpers.js';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.WASM_CHORD_ARTIFACTS || path.join(HOST_JS, 'test-artifacts');
const MODEL_NAME = path.basename(MODEL);
const CASE = GOLDEN.cases.find((c) => c.id === 'capital');

describe('browser demo (chromium)', () => {
  let server;
  let noRange;
  let browser;
  let page;
  let base;
  const errors = [];

  before(async () => {
    requireFile(MODEL, 'run `cargo xtask fetch` or set WASM_CHORD_SMOLLM2');
    requireFile(CHROMIUM, 'install chromium (apt-get install -y chromium) or set CHROMIUM');
    const models = tempDir();
    fs.symlinkSync(path.resolve(MODEL), path.join(models, MODEL_NAME));
    fs.writeFileSync(path.join(models, 'not-a-model.gguf'), 'hello, this is not a GGUF file\n'.repeat(100));
    server = await startServer({ port: 0, models });
    noRange = await startServer({ port: 0, models, range: false });
    base = `http://127.0.0.1:${server.address().port}`;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
        '--disable-sync', '--no-first-run'],
    });
    page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${base}/demo/`);
    fs.mkdirSync(ARTIFACTS, { recursive: true });
  });

  after(async () => {
    await browser?.close();
    server?.close();
    noRange?.close();
  });

  async function load(url) {
    await page.fill('#url', url);
    await page.click('#load');
    await page.waitForFunction(() => ['loaded', 'error'].includes(document.body.dataset.state), null, { timeout: 120_000 });
    return {
      state: await page.evaluate(() => document.body.dataset.state),
      error: await page.textContent('#error'),
      status: await page.textContent('#status'),
    };
  }

  async function expectError(url, pattern) {
    const r = await load(url);
    assert.equal(r.state, 'error', `expected an error for ${url}, got: ${r.status}`);
    assert.match(r.error, pattern);
    assert.equal(await page.isVisible('#error'), true);
  }

  test('a URL that 404s: clear message', async () => {
    await expectError(`${base}/models/missing.gguf`, /HTTP 404/);
  });

  test('a server without Range support: clear message', async () => {
    await expectError(`http://127.0.0.1:${noRange.address().port}/models/${MODEL_NAME}`, /does not support HTTP Range/);
  });

  test('a non-GGUF file: clear message', async () => {
    await expectError(`${base}/models/not-a-model.gguf`, /invalid model: bad magic/);
  });

  test('local files (Blob store): a truncated one fails clearly, then SmolLM2 loads', async () => {
    const dir = tempDir();
    const head = path.join(dir, 'head.gguf');
    fs.writeFileSync(head, fs.readFileSync(MODEL).subarray(0, 1000));
    await page.setInputFiles('#file', head);
    await page.click('#load');
    await page.waitForFunction(() => document.body.dataset.state === 'error', null, { timeout: 60_000 });
    assert.match(await page.textContent('#error'), /invalid model: truncated file/);

    await page.setInputFiles('#file', MODEL);
    assert.equal(await page.inputValue('#url'), '', 'picking a file clears the URL');
    await page.click('#load');
    await page.waitForFunction(() => ['loaded', 'error'].includes(document.body.dataset.state), null, { timeout: 120_000 });
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'loaded', await page.textContent('#error'));
    assert.match(await page.textContent('#status'), new RegExp(`Loaded .*${MODEL_NAME.split('-')[0]}`, 'i'));
  });

  test('SmolLM2 by URL: greedy text equals the golden continuation', async () => {
    const r = await load(`/models/${MODEL_NAME}`);
    assert.equal(r.state, 'loaded', r.error);
    assert.equal(await page.isVisible('#error'), false, 'the old error is gone');
    assert.match(r.status, /Loaded .*llama/);
    // Chromium validates relaxed SIMD and computes its dot exactly: the
    // relaxed-SIMD kernel build runs (its logits are the simd128 build's bits).
    assert.equal(await page.evaluate(() => document.body.dataset.kernel), 'relaxed-simd');

    await page.fill('#prompt', CASE.prompt);
    await page.fill('#n', String(GOLDEN.n_predict));
    await page.fill('#temp', '0');
    await page.check('#ignore-eos');
    await page.click('#run');
    await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: 180_000 });

    const text = await page.textContent('#output');
    const tokens = (await page.getAttribute('#output', 'data-tokens')).split(',').map(Number);
    const speed = await page.textContent('#speed');
    await page.screenshot({ path: path.join(ARTIFACTS, 'browser-demo.png'), fullPage: true });
    console.log(`browser: ${speed}`);

    assert.equal(tokens.length, GOLDEN.n_predict);
    const parted = checkGreedy(CASE.id, tokens, CASE, GOLDEN.near_tie ?? 0.75);
    if (parted === null) assert.equal(text, CASE.greedy_text);
    assert.match(speed, /tokens\/s/);
    assert.deepEqual(errors, []);
  });

  async function generate(options) {
    await page.fill('#n', String(options.n));
    await page.fill('#temp', '0');
    await page.setChecked('#ignore-eos', true);
    await page.click('#run');
  }

  test("chat mode: the model's template, greedy reply passes the golden rule", async () => {
    const c = GOLDEN.cases.find((x) => x.messages);
    assert.deepEqual(c.messages.map((m) => m.role), ['user'], 'the demo sends user messages');
    await page.check('#chat');
    await page.fill('#prompt', c.messages[0].content);
    await generate({ n: GOLDEN.n_predict });
    await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: 180_000 });
    const tokens = (await page.getAttribute('#output', 'data-tokens')).split(',').map(Number);
    const parted = checkGreedy(c.id, tokens, c, GOLDEN.near_tie ?? 0.75);
    const conversation = await page.textContent('#conversation');
    assert.ok(conversation.includes(`user: ${c.messages[0].content}`));
    if (parted === null) assert.ok(conversation.includes(`assistant: ${c.greedy_text}`), conversation);
    await page.screenshot({ path: path.join(ARTIFACTS, 'browser-chat.png'), fullPage: true });
    await page.click('#clear');
    await page.uncheck('#chat');
  });

  test('the stop button stops a long generation', async () => {
    await page.fill('#prompt', 'Once upon a time');
    await generate({ n: 1000 });
    await page.waitForFunction(() => (document.getElementById('output').dataset.tokens ?? '').split(',').length >= 4);
    await page.click('#stop');
    await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: 30_000 });
    const n = (await page.getAttribute('#output', 'data-tokens')).split(',').length;
    assert.ok(n < 1000, `stopped after ${n} tokens`);
    assert.match(await page.textContent('#speed'), /stop: stopped/);
    assert.equal(await page.isEnabled('#run'), true);
    assert.deepEqual(errors, []);
  });
});
