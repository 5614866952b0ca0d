"""The official `openai` Python package against `wasm-chord serve` on loopback.

Run by `cargo xtask test` (step "openai Python client") in a venv with a
pinned `openai`; needs WASM_CHORD_BIN (the `wasm-chord` launcher),
WASM_CHORD_KERNEL and WASM_CHORD_SMOLLM2 (SmolLM2-135M-Instruct Q4_1).
Fails, never skips, when one is missing.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

import openai

KEY = "sesame"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three colours of the rainbow."},
]


def env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"set {name} (cargo xtask test does)")
    return value


def run_greedy(args, n):
    """`wasm-chord run ... --temp 0 -n N --json`: the concatenated token texts."""
    out = subprocess.run(
        [env("WASM_CHORD_BIN"), "run", "-m", env("WASM_CHORD_SMOLLM2"), *args,
         "--temp", "0", "-n", str(n), "--json"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "WASM_CHORD_KERNEL": env("WASM_CHORD_KERNEL")},
    )
    text = ""
    for line in out.stdout.splitlines():
        v = json.loads(line)
        text += v.get("text", "")
    return text


class OpenAIClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = subprocess.Popen(
            [env("WASM_CHORD_BIN"), "serve", "-m", env("WASM_CHORD_SMOLLM2"),
             "--port", "0", "--api-key", KEY, "--ctx-size", "1024"],
            stdout=subprocess.PIPE, text=True,
            env={**os.environ, "WASM_CHORD_KERNEL": env("WASM_CHORD_KERNEL")},
        )
        line = cls.server.stdout.readline().strip()
        if not line.startswith("listening on "):
            cls.server.kill()
            raise RuntimeError(f"unexpected first line of the server: {line!r}")
        cls.base = line.removeprefix("listening on ") + "/v1"
        cls.client = openai.OpenAI(base_url=cls.base, api_key=KEY, max_retries=0, timeout=120)
        cls.model = cls.client.models.list().data[0].id

    @classmethod
    def tearDownClass(cls):
        cls.server.kill()
        cls.server.wait()

    def test_models(self):
        models = self.client.models.list()
        self.assertEqual([m.id for m in models.data], ["SmolLM2-135M-Instruct.Q4_1"])
        self.assertEqual(models.data[0].object, "model")

    def test_chat_completion_equals_run_messages(self):
        n = 32
        r = self.client.chat.completions.create(
            model=self.model, messages=MESSAGES, temperature=0, max_tokens=n)
        self.assertEqual(r.object, "chat.completion")
        choice = r.choices[0]
        self.assertEqual(choice.message.role, "assistant")
        self.assertTrue(choice.message.content)
        self.assertIn(choice.finish_reason, ("stop", "length"))
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        self.assertLessEqual(r.usage.completion_tokens, n)
        # Greedy through the server == `wasm-chord run --messages`.
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(MESSAGES, f)
        try:
            expected = run_greedy(["--messages", f.name], n)
        finally:
            os.unlink(f.name)
        self.assertEqual(choice.message.content, expected)

    def test_streamed_chat_equals_non_streamed(self):
        kw = dict(model=self.model, messages=MESSAGES, temperature=0, max_tokens=24)
        whole = self.client.chat.completions.create(**kw)
        chunks = list(self.client.chat.completions.create(
            **kw, stream=True, stream_options={"include_usage": True}))
        self.assertTrue(all(c.object == "chat.completion.chunk" for c in chunks))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].message.content)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finish, [whole.choices[0].finish_reason])
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)

    def test_completions(self):
        prompt = "The capital of France is"
        r = self.client.completions.create(
            model=self.model, prompt=prompt, temperature=0, max_tokens=12)
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(r.choices[0].text, run_greedy(["-p", prompt], 12))
        streamed = "".join(c.choices[0].text for c in self.client.completions.create(
            model=self.model, prompt=prompt, temperature=0, max_tokens=12, stream=True)
            if c.choices)
        self.assertEqual(streamed, r.choices[0].text)

    def test_chat_logprobs(self):
        r = self.client.chat.completions.create(
            model=self.model, messages=MESSAGES, temperature=0, max_tokens=8,
            logprobs=True, top_logprobs=3)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        self.assertEqual("".join(t.token for t in content), r.choices[0].message.content)
        for t in content:
            self.assertLessEqual(t.logprob, 0.0)
            self.assertEqual(bytes(t.bytes).decode("utf-8", "replace"), t.token)
            self.assertEqual(len(t.top_logprobs), 3)
            # Greedy: the chosen token is the most likely one.
            self.assertEqual(t.top_logprobs[0].token, t.token)
            self.assertAlmostEqual(t.top_logprobs[0].logprob, t.logprob, places=5)
            lps = [x.logprob for x in t.top_logprobs]
            self.assertEqual(lps, sorted(lps, reverse=True))
        # Streamed: the same entries, spread over the chunks.
        streamed = []
        for c in self.client.chat.completions.create(
                model=self.model, messages=MESSAGES, temperature=0, max_tokens=8,
                logprobs=True, top_logprobs=3, stream=True):
            if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content:
                streamed.extend(c.choices[0].logprobs.content)
        self.assertEqual([(t.token, t.logprob) for t in streamed],
                         [(t.token, t.logprob) for t in content])

    def test_completion_logprobs(self):
        r = self.client.completions.create(
            model=self.model, prompt="The capital of France is", temperature=0,
            max_tokens=4, logprobs=2)
        lp = r.choices[0].logprobs
        self.assertEqual("".join(lp.tokens), r.choices[0].text)
        self.assertEqual(len(lp.token_logprobs), len(lp.tokens))
        self.assertEqual(lp.text_offset[0], 0)
        for tok, chosen, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
            self.assertLessEqual(len(top), 2)
            self.assertAlmostEqual(top[tok], chosen, places=5)

    def test_bad_request_is_a_400_in_openai_shape(self):
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.chat.completions.create(
                model=self.model, messages=MESSAGES, temperature=5)
        self.assertEqual(e.exception.status_code, 400)
        err = e.exception.response.json()["error"]
        self.assertEqual(err["type"], "invalid_request_error")
        self.assertEqual(err["param"], "temperature")
        self.assertIn("temperature", err["message"])
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.chat.completions.create(model="gpt-4", messages=MESSAGES)
        self.assertEqual(e.exception.code, "model_not_found")
        with self.assertRaises(openai.BadRequestError):
            self.client.chat.completions.create(
                model=self.model, messages=MESSAGES, logprobs=True, top_logprobs=99)

    def test_missing_or_wrong_key_is_a_401(self):
        # No Authorization header at all (the client insists on a key: omit it).
        with self.assertRaises(openai.AuthenticationError) as e:
            self.client.models.list(extra_headers={"Authorization": openai.omit})
        self.assertEqual(e.exception.status_code, 401)
        self.assertEqual(e.exception.code, "invalid_api_key")
        self.assertNotIn("authorization", {k.lower() for k in e.exception.request.headers})
        client = openai.OpenAI(base_url=self.base, api_key="wrong", max_retries=0)
        with self.assertRaises(openai.AuthenticationError) as e:
            client.chat.completions.create(model=self.model, messages=MESSAGES)
        self.assertEqual(e.exception.status_code, 401)

if __name__ == "__main__":
    print(f"openai {openai.__version__}, Python {sys.version.split()[0]}")
    result = unittest.main(verbosity=2, exit=False).result
    # A skipped case is a failure here: nothing is optional.
    sys.exit(0 if result.wasSuccessful() and not result.skipped else 1)
