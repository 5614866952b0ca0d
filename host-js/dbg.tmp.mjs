import { chromium } from 'playwright-core';
import { startServer } from './demo/server.mjs';
const models = process.env.HOME + '/.cache/wasm-chord/models';
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] });
for (const isolated of [true, false]) {
  const s = await startServer({ port: 0, models, isolated });
  let bytes = 0; let reqs = 0;
  s.on('request', (req, res) => res.on('finish', () => { if (req.url.startsWith('/models/')) { bytes += Number(res.getHeader('content-length') || 0); reqs++; } }));
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.log('pageerror:', e.message));
  await page.goto(`http://127.0.0.1:${s.address().port}/demo/`);
  await page.fill('#url', '/models/SmolLM2-135M-Instruct.Q4_1.gguf');
  await page.click('#load');
  await page.waitForFunction(() => ['loaded', 'error'].includes(document.body.dataset.state), null, { timeout: 120000 });
  const loadBytes = bytes;
  const status = await page.textContent('#status');
  await page.fill('#prompt', 'Once upon a time');
  await page.fill('#n', '64'); await page.fill('#temp', '0'); await page.check('#ignore-eos');
  await page.click('#run');
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), null, { timeout: 120000 });
  console.log(await page.textContent('#mode'), '|', (loadBytes / 2 ** 20).toFixed(1), 'MiB fetched in', reqs, 'requests |', status.replace(/.* in /, 'load '), '|', await page.textContent('#speed'));
  await page.close(); s.close();
}
await browser.close();
