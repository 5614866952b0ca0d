// The demo's static server: no path escapes its folders ('..' with either
// separator), and only pages on this machine may read it across origins.
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { allowedOrigin, resolve, startServer } from '../demo/server.mjs';
import { HOST_JS, tempDir } from './helpers.js';

test('demo server: paths stay inside the served folders', () => {
  const models = tempDir();
  assert.equal(resolve('/models/a.gguf', models), path.join(models, 'a.gguf'));
  assert.equal(resolve('/src/kernel.js', models), path.join(HOST_JS, 'src', 'kernel.js'));
  for (const bad of [
    '/models/../secret', '/models/..%2Fsecret', '/models/..\\secret', '/models/..%5C..%5Csecret',
    '/src/..\\..\\etc\\passwd', '/demo/%2e%2e/%2e%2e/x', '/models/C:\\x', '/models/a%00.gguf', '/etc/passwd',
  ]) {
    assert.equal(resolve(bad, models), null, bad);
  }
});

test('demo server: cross-origin reads only for loopback origins', async () => {
  assert.equal(allowedOrigin('http://127.0.0.1:9000'), 'http://127.0.0.1:9000');
  assert.equal(allowedOrigin('http://localhost:8080'), 'http://localhost:8080');
  assert.equal(allowedOrigin('https://evil.example'), null);
  assert.equal(allowedOrigin('http://127.0.0.1.evil.example'), null);
  assert.equal(allowedOrigin('null'), null);
  const server = await startServer({ port: 0, models: tempDir() });
  try {
    const url = `http://127.0.0.1:${server.address().port}/src/kernel.js`;
    const evil = await fetch(url, { headers: { Origin: 'https://evil.example' } });
    assert.equal(evil.headers.get('access-control-allow-origin'), null);
    const local = await fetch(url, { headers: { Origin: 'http://localhost:1234' } });
    assert.equal(local.status, 200);
    assert.equal(local.headers.get('access-control-allow-origin'), 'http://localhost:1234');
  } finally {
    server.close();
  }
});

test('demo server: cross-origin isolation headers only when asked for', async () => {
  const isolated = await startServer({ port: 0, models: tempDir(), isolated: true });
  const plain = await startServer({ port: 0, models: tempDir() });
  try {
    for (const p of ['/demo/', '/demo/worker.js', '/src/shards.js', '/models/missing.gguf']) {
      const a = await fetch(`http://127.0.0.1:${isolated.address().port}${p}`);
      assert.equal(a.headers.get('cross-origin-opener-policy'), 'same-origin', p);
      assert.equal(a.headers.get('cross-origin-embedder-policy'), 'require-corp', p);
      const b = await fetch(`http://127.0.0.1:${plain.address().port}${p}`);
      assert.equal(b.headers.get('cross-origin-opener-policy'), null, p);
      assert.equal(b.headers.get('cross-origin-embedder-policy'), null, p);
    }
  } finally {
    isolated.close();
    plain.close();
  }
});
