/**
 * generate(): stop strings held back and never emitted, EOS and max_tokens, exact usage, abort,
 * and UTF-8 characters split across tokens, on the bigram test model and a scripted model.
 */
import assert from "node:assert/strict";
import { generate, GenerationAbortedError, type Piece } from "../src/generate.ts";
import { GREEDY } from "../src/sampling.ts";
import { loadTokenizer, type Tokenizer } from "../src/tokenizer.ts";
import type { LanguageModel, Session } from "../src/types.ts";
import { BigramTestModel, IM_END, testModelDir } from "./_test_model.ts";

const dir = await testModelDir();
const tokenizer = await loadTokenizer(dir);
await Deno.remove(dir, { recursive: true });

async function run(
  model: LanguageModel,
  tok: Tokenizer,
  prompt: string,
  opts: { maxTokens: number; stop?: string[]; signal?: AbortSignal },
) {
  const session = model.newSession();
  try {
    const it = generate(session, {
      promptIds: tok.encode(prompt),
      sampling: GREEDY,
      eosIds: [IM_END],
      decoder: tok.streamDecoder(),
      ...opts,
    });
    const pieces: Piece[] = [];
    while (true) {
      const step = await it.next();
      if (step.done) return { pieces, result: step.value };
      pieces.push(step.value);
    }
  } finally {
    session.free();
  }
}

Deno.test("generate() holds back a possible stop-string prefix and releases it when ruled out", async () => {
  const { pieces, result } = await run(new BigramTestModel(), tokenizer, "\n", {
    maxTokens: 6,
    stop: ["cdx"],
  });
  assert.deepEqual(pieces.map((p) => p.text), ["a", "b", "", "", "cde", "f"]);
  const { stats, ...rest } = result;
  assert.deepEqual(rest, {
    finishReason: "length",
    text: "abcdef",
    promptTokens: 1,
    completionTokens: 6,
  });
  // decode steps: every token after the first, one forward (and readback) each on the CPU path
  assert.deepEqual([stats.tokens, stats.readbacks, stats.submits], [5, 5, 5]);
});

Deno.test("generate() stops at a stop string without emitting it, counting its tokens", async () => {
  const { pieces, result } = await run(new BigramTestModel(), tokenizer, "\n", {
    maxTokens: 20,
    stop: ["zz", "cd"],
  });
  assert.deepEqual(pieces.map((p) => p.text), ["a", "b", "", ""]);
  assert.equal(result.finishReason, "stop");
  assert.equal(result.text, "ab");
  assert.equal(result.completionTokens, 4);
});

Deno.test("generate() releases held text when max_tokens ends the sequence", async () => {
  const { pieces, result } = await run(new BigramTestModel(), tokenizer, "\n", {
    maxTokens: 3,
    stop: ["cd"],
  });
  assert.deepEqual(pieces.map((p) => p.text), ["a", "b", "c"]);
  assert.equal(result.finishReason, "length");
});

Deno.test("generate() stops at EOS, counts it and emits no text for it", async () => {
  const { pieces, result } = await run(new BigramTestModel({ eosAfter: "c" }), tokenizer, "\n", {
    maxTokens: 10,
  });
  assert.deepEqual(pieces.map((p) => [p.token, p.text]), [[97, "a"], [98, "b"], [99, "c"], [
    IM_END,
    "",
  ]]);
  assert.equal(result.finishReason, "stop");
  assert.equal(result.completionTokens, 4);
});

Deno.test("generate() throws GenerationAbortedError at the next token after abort", async () => {
  const model = new BigramTestModel();
  const session = model.newSession();
  const abort = new AbortController();
  const it = generate(session, {
    promptIds: [10],
    maxTokens: 100,
    sampling: GREEDY,
    eosIds: [IM_END],
    decoder: tokenizer.streamDecoder(),
    signal: abort.signal,
  });
  assert.equal((await it.next()).value.text, "a");
  abort.abort();
  await assert.rejects(it.next(), GenerationAbortedError);
  // the decode ran ahead of this caller (it never waits for pulls) and stopped at the abort; the
  // KV cache holds the prompt and the kept tokens but the last
  assert.ok(session.length >= 1 && session.length < 100, `length ${session.length}`);
  session.free();
});

/** A model that emits a fixed script of ids (one-hot logits by position), then EOS. */
class ScriptModel implements LanguageModel {
  readonly maxContext = 64;
  readonly config: LanguageModel["config"];
  constructor(readonly script: number[], base: LanguageModel) {
    this.config = base.config;
  }
  newSession(): Session {
    const script = this.script;
    const vocab = this.config.vocabSize;
    let length = 0;
    let promptLength = -1;
    return {
      get length() {
        return length;
      },
      forward(ids, opts) {
        if (promptLength < 0) promptLength = ids.length;
        length += ids.length;
        const next = script[length - promptLength] ?? IM_END;
        const row = new Float32Array(vocab);
        row[next] = 1;
        return Promise.resolve(opts?.lastOnly ? [row] : ids.map(() => row));
      },
      truncate(n) {
        length = Math.min(n, length);
      },
      free() {},
    };
  }
}

Deno.test("generate() emits a character split across byte tokens only once it is whole", async () => {
  const bytes = [...new TextEncoder().encode("é漢!")]; // 2 + 3 + 1 bytes
  const model = new ScriptModel(bytes, new BigramTestModel());
  const { pieces, result } = await run(model, tokenizer, "\n", { maxTokens: 10 });
  assert.deepEqual(pieces.map((p) => p.text), ["", "é", "", "", "漢", "!", ""]);
  assert.equal(result.text, "é漢!");
  assert.equal(result.completionTokens, 7);
  assert.equal(result.finishReason, "stop");
});

Deno.test("generate() ends an unfinished character as U+FFFD at max_tokens", async () => {
  const bytes = [...new TextEncoder().encode("漢")];
  const model = new ScriptModel(bytes, new BigramTestModel());
  const { result } = await run(model, tokenizer, "\n", { maxTokens: 2 });
  assert.equal(result.text, "\uFFFD");
  assert.equal(result.finishReason, "length");
});
