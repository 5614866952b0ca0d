// `wasm-chord chat` through the Node launcher, scripted on stdin: each greedy
// reply equals `run --messages` (Node launcher too) on the conversation so
// far, each later turn evaluates only its new tokens, and the native launcher
// prints the same replies.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import { MODEL, NATIVE_BIN, parseJsonRun, requireFile, runCli, tempDir } from './helpers.js';

const USER = ['What is 2+2?', 'And what is the capital of Italy?', 'Name one famous dish from that city.'];
const FLAGS = ['--temp', '0', '-n', '24', '--json'];

/** `chat --json` stdout: replies ({ tokens, text, stats }) and /stats lines. */
function parseChat(stdout) {
  const replies = [];
  const sessions = [];
  let cur = { tokens: [], text: '' };
  for (const line of stdout.trim().split('\n')) {
    const v = JSON.parse(line);
    if (v.stats) {
      replies.push({ ...cur, stats: v.stats });
      cur = { tokens: [], text: '' };
    } else if (v.session) {
      sessions.push(v.session);
    } else {
      cur.tokens.push(v.token);
      cur.text += v.text;
    }
  }
  assert.equal(cur.tokens.length, 0, 'a reply without its stats line');
  return { replies, sessions };
}

describe('chat (Node launcher)', () => {
  const dir = tempDir();
  before(() => {
    requireFile(MODEL, 'run `cargo xtask fetch` or set WASM_CHORD_SMOLLM2');
    requireFile(NATIVE_BIN, 'run `cargo xtask build` or set WASM_CHORD_BIN');
  });

  test('three turns: replies equal run --messages, later turns evaluate only new tokens', () => {
    const script = `${USER[0]}\n${USER[1]}\n${USER[2]}\n/stats\n`;
    const args = ['chat', '-m', MODEL, ...FLAGS];
    const js = runCli('js', args, script);
    assert.equal(js.status, 0, js.stderr);
    const { replies, sessions } = parseChat(js.stdout);
    assert.equal(replies.length, 3, js.stdout);
    assert.equal(sessions.length, 1);

    const messages = [];
    USER.forEach((content, i) => {
      messages.push({ role: 'user', content });
      const file = path.join(dir, `turn${i}.json`);
      fs.writeFileSync(file, JSON.stringify(messages));
      const run = runCli('js', ['run', '-m', MODEL, ...FLAGS, '--messages', file]);
      assert.equal(run.status, 0, run.stderr);
      const { tokens, stats } = parseJsonRun(run.stdout);
      const r = replies[i];
      assert.deepEqual(r.tokens, tokens.map((t) => t.token), `turn ${i + 1}: reply tokens`);
      assert.equal(r.text, tokens.map((t) => t.text).join(''), `turn ${i + 1}: reply text`);
      assert.equal(r.stats.stop_reason, stats.stats.stop_reason);
      const rendered = stats.stats.prompt_tokens;
      assert.equal(r.stats.prompt_tokens, rendered);
      assert.equal(r.stats.reused_tokens + r.stats.prompt_evaluated, rendered);
      if (i === 0) {
        assert.equal(r.stats.prompt_evaluated, rendered);
      } else {
        assert.ok(r.stats.reused_tokens >= replies[i - 1].stats.prompt_tokens,
          `turn ${i + 1}: the previous prompt stays in the cache`);
        assert.ok(r.stats.prompt_evaluated * 3 < rendered,
          `turn ${i + 1}: evaluated ${r.stats.prompt_evaluated} of ${rendered} prompt tokens`);
      }
      messages.push({ role: 'assistant', content: r.text });
    });
    assert.equal(sessions[0].turns, 3);
    assert.equal(sessions[0].evaluated_total, replies.reduce((n, r) => n + r.stats.evaluated, 0));
    assert.equal(sessions[0].tokens_in_cache, replies[2].stats.tokens_in_cache);

    // The native launcher runs the same program: the same replies.
    const native = runCli('native', args, script);
    assert.equal(native.status, 0, native.stderr);
    assert.deepEqual(parseChat(native.stdout).replies.map((r) => r.tokens), replies.map((r) => r.tokens));
  });

  test('end of input ends the chat with exit 0; unknown commands are reported, not fatal', () => {
    const r = runCli('js', ['chat', '-m', MODEL, '--temp', '0', '-n', '4'], '/nope\n\nHi\n');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /unknown command '\/nope'/);
    assert.ok(r.stdout.trim().length > 0, 'a reply to "Hi"');
    assert.doesNotMatch(r.stderr, /error|panicked|trap/);
  });
});
