/**
 * Checks the demo model's tokenizer files (weights/default_model/) against the Python BPE that
 * trained them (tools/train/bpe.py): @huggingface/tokenizers must load tokenizer.json, encode
 * held-out and edge-case strings to exactly the ids the Python encoder produced (stored below,
 * from `tools/train/tokenizer_cases.py TEXT...`) and decode them back to the text.
 */
import assert from "node:assert/strict";
import { Tokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";

const MODEL_DIR = new URL("../weights/default_model/", import.meta.url);

/** Vocabulary size the tokenizer was trained to (tools/train/train_tokenizer.py VOCAB_SIZE). */
const VOCAB_SIZE = 4096;
/** Special tokens follow the BPE vocabulary, in Qwen's order. */
const SPECIAL_IDS = { "<|endoftext|>": 4093, "<|im_start|>": 4094, "<|im_end|>": 4095 };

/** Python encodings: a KJV verse and a Jargon File entry (both held out), plus edge cases. */
const CASES: { text: string; ids: number[] }[] = [
  {
    text: "And God said, Let there be light: and there was light.",
    ids: [312, 416, 412, 44, 1818, 406, 297, 1194, 58, 269, 406, 377, 1194, 46],
  },
  {
    text: "hacker n. [originally, someone who makes furniture with an axe]\n\n" +
      "1. A person who enjoys exploring the details of programmable systems",
    ids: [
      104,
      1762,
      293,
      46,
      1381,
      282,
      526,
      263,
      562,
      44,
      2511,
      550,
      1431,
      281,
      274,
      532,
      292,
      621,
      341,
      364,
      258,
      120,
      101,
      1779,
      10,
      49,
      46,
      367,
      1404,
      550,
      688,
      106,
      1349,
      115,
      2649,
      282,
      286,
      259,
      2534,
      742,
      115,
      268,
      1467,
      778,
      2126,
    ],
  },
  {
    text: "I'm sure they'll say it's 1234 times  better;   DON'T\n\n\tyou?  \n",
    ids: [
      73,
      3257,
      1475,
      348,
      3770,
      482,
      343,
      454,
      32,
      49,
      50,
      51,
      52,
      1645,
      32,
      1929,
      59,
      32,
      32,
      507,
      4046,
      39,
      84,
      10,
      10,
      9,
      121,
      277,
      63,
      32,
      32,
      10,
    ],
  },
  {
    text: "Café naïve — Système International ½ ² 日本語 😀 Ωmega",
    ids: [
      67,
      3524,
      195,
      169,
      293,
      97,
      195,
      175,
      316,
      1311,
      373,
      121,
      328,
      195,
      168,
      2032,
      942,
      1143,
      4050,
      32,
      194,
      189,
      32,
      194,
      178,
      32,
      230,
      151,
      165,
      230,
      156,
      172,
      232,
      170,
      158,
      32,
      240,
      159,
      152,
      128,
      32,
      206,
      169,
      2032,
      103,
      97,
    ],
  },
  {
    text: "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n",
    ids: [4094, 2795, 10, 72, 629, 111, 406, 4095, 10, 4094, 554, 534, 461, 10],
  },
];

async function readJson(name: string): Promise<Record<string, unknown>> {
  return JSON.parse(await Deno.readTextFile(new URL(name, MODEL_DIR)));
}

async function loadTokenizer(): Promise<Tokenizer> {
  return new Tokenizer(await readJson("tokenizer.json"), await readJson("tokenizer_config.json"));
}

Deno.test("tokenizer.json encodes to exactly the Python BPE ids and decodes back", async () => {
  const tok = await loadTokenizer();
  for (const { text, ids } of CASES) {
    assert.deepEqual(tok.encode(text, { add_special_tokens: false }).ids, ids, text);
    assert.equal(tok.decode(ids, { skip_special_tokens: false }), text);
  }
});

Deno.test("tokenizer.json has the trained vocab size and Qwen-ordered special tokens", async () => {
  const tok = await loadTokenizer();
  const json = await readJson("tokenizer.json") as {
    model: { type: string; vocab: Record<string, number> };
    added_tokens: { id: number; content: string; special: boolean }[];
  };
  assert.equal(json.model.type, "BPE");
  assert.equal(Object.keys(json.model.vocab).length + json.added_tokens.length, VOCAB_SIZE);
  for (const [content, id] of Object.entries(SPECIAL_IDS)) {
    assert.equal(tok.token_to_id(content), id);
    assert.ok(json.added_tokens.some((t) => t.id === id && t.content === content && t.special));
  }
});

Deno.test("chat_template renders Qwen's im_start/im_end format with a generation prompt", async () => {
  const config = await readJson("tokenizer_config.json");
  const template = new Template(config.chat_template as string);
  const messages = [
    { role: "system", content: "Be brief." },
    { role: "user", content: "Who was Moses?" },
  ];
  const expected = "<|im_start|>system\nBe brief.<|im_end|>\n" +
    "<|im_start|>user\nWho was Moses?<|im_end|>\n";
  assert.equal(template.render({ messages, add_generation_prompt: false }), expected);
  assert.equal(
    template.render({ messages, add_generation_prompt: true }),
    expected + "<|im_start|>assistant\n",
  );
});

Deno.test("tokenizer_config eos_token is one of config.json's eos_token_id list", async () => {
  const tok = await loadTokenizer();
  const tokConfig = await readJson("tokenizer_config.json");
  const config = await readJson("config.json");
  const eosIds = config.eos_token_id as number[];
  assert.ok(Array.isArray(eosIds));
  assert.ok(eosIds.includes(tok.token_to_id(tokConfig.eos_token as string) as number));
  assert.ok(eosIds.includes(SPECIAL_IDS["<|im_end|>"]));
  assert.equal(config.bos_token_id, SPECIAL_IDS["<|endoftext|>"]);
  assert.equal(config.vocab_size, VOCAB_SIZE);
});
