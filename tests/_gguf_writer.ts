/**
 * GGUF files for tests: `writeGguf()` writes GGUF v3 (or v2) files with typed metadata, aligned and
 * padded tensor data, optionally split as llama.cpp's gguf-split does; `hfToGguf()` converts a
 * Hugging Face fixture directory (weights/fixture.ts, plus a tokenizer.json when it has one) into a
 * qwen3moe GGUF model the way convert_hf_to_gguf.py's Qwen3MoeModel does: GGUF tensor names,
 * experts stacked into blk.N.ffn_{gate,up,down}_exps (ne [D, I, E] / [I, D, E]), the metadata keys
 * and value types gguf-py writes, and a gpt2 tokenizer (tokens, token types, merges, special ids).
 * Tensors keep the fixture's dtype, or are quantized with src/quant/quantize.ts's quantizeRows
 * when the `quant` option picks a type for them.
 */

import { join } from "node:path";
import { openCheckpoint } from "../src/checkpoint.ts";
import { toFloat32 } from "../src/dtype.ts";
import { ggmlTypeId } from "../src/gguf/ggml_type.ts";
import {
  GGUF_VALUE_BYTES,
  GGUF_VALUE_TYPES,
  type GgufArray,
  type GgufKv,
  type GgufValue,
  type GgufValueType,
} from "../src/gguf/metadata.ts";
import { SPLIT_KEYS, splitPath } from "../src/gguf/split.ts";
import type { QuantType } from "../src/quant/formats.ts";
import { quantizeRows } from "../src/quant/quantize.ts";
import type { DType, TensorView } from "../src/types.ts";
import { loadWeights } from "../src/weights.ts";

/** Typed metadata values, as gguf-py's GGUFWriter.add_* writes them. */
export const kv = {
  u8: (v: number): GgufKv => ({ type: "UINT8", value: v }),
  i8: (v: number): GgufKv => ({ type: "INT8", value: v }),
  u16: (v: number): GgufKv => ({ type: "UINT16", value: v }),
  i16: (v: number): GgufKv => ({ type: "INT16", value: v }),
  u32: (v: number): GgufKv => ({ type: "UINT32", value: v }),
  i32: (v: number): GgufKv => ({ type: "INT32", value: v }),
  u64: (v: number | bigint): GgufKv => ({ type: "UINT64", value: BigInt(v) }),
  i64: (v: number | bigint): GgufKv => ({ type: "INT64", value: BigInt(v) }),
  f32: (v: number): GgufKv => ({ type: "FLOAT32", value: Math.fround(v) }),
  f64: (v: number): GgufKv => ({ type: "FLOAT64", value: v }),
  bool: (v: boolean): GgufKv => ({ type: "BOOL", value: v }),
  str: (v: string): GgufKv => ({ type: "STRING", value: v }),
  arr: (itemType: GgufValueType, items: GgufValue[]): GgufKv => ({
    type: "ARRAY",
    value: { itemType, items },
  }),
};

/** One tensor to write: ggml ne (innermost first) and its bytes, written as given. */
export interface GgufTensorToWrite {
  name: string;
  /** A readable dtype, or any GGML type id (tests write unsupported ones). */
  type: DType | number;
  ne: number[];
  bytes: Uint8Array;
  /** Written into the tensor info instead of the real data offset (tests of damaged files). */
  offsetOverride?: number;
}

export interface GgufContent {
  metadata: Record<string, GgufKv>;
  tensors: GgufTensorToWrite[];
}

export interface WriteGgufOptions {
  /** Write NAME-00001-of-0000N.gguf files as gguf-split does (path must end in .gguf). */
  splits?: number;
  /** GGUF version in the header (default 3; 2 has the same layout). */
  version?: number;
}

const GGUF_MAGIC = 0x46554747;
const DEFAULT_ALIGNMENT = 32;

/** A growable little-endian byte buffer. */
class Bytes {
  #buf = new Uint8Array(1024);
  #dv = new DataView(this.#buf.buffer);
  length = 0;

  #room(n: number): number {
    if (this.length + n > this.#buf.length) {
      const next = new Uint8Array(Math.max(this.#buf.length * 2, this.length + n));
      next.set(this.#buf.subarray(0, this.length));
      this.#buf = next;
      this.#dv = new DataView(next.buffer);
    }
    const at = this.length;
    this.length += n;
    return at;
  }

  // #room() may replace #buf and #dv: take the offset before touching them.
  u32(v: number) {
    const at = this.#room(4);
    this.#dv.setUint32(at, v, true);
  }
  u64(v: number | bigint) {
    const at = this.#room(8);
    this.#dv.setBigUint64(at, BigInt(v), true);
  }
  bytes(b: Uint8Array) {
    const at = this.#room(b.length);
    this.#buf.set(b, at);
  }
  string(s: string) {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
  pad(alignment: number) {
    const n = (alignment - this.length % alignment) % alignment;
    this.#room(n); // zeros
  }

  value(type: GgufValueType, v: GgufValue) {
    const size = GGUF_VALUE_BYTES[type];
    if (type === "STRING") return this.string(v as string);
    if (type === "ARRAY") {
      const a = v as GgufArray;
      this.u32(GGUF_VALUE_TYPES[a.itemType]);
      this.u64(a.items.length);
      for (const item of a.items) this.value(a.itemType, item);
      return;
    }
    const at = this.#room(size!);
    const dv = this.#dv;
    switch (type) {
      case "UINT8":
        return dv.setUint8(at, v as number);
      case "INT8":
        return dv.setInt8(at, v as number);
      case "BOOL":
        return dv.setUint8(at, v ? 1 : 0);
      case "UINT16":
        return dv.setUint16(at, v as number, true);
      case "INT16":
        return dv.setInt16(at, v as number, true);
      case "UINT32":
        return dv.setUint32(at, v as number, true);
      case "INT32":
        return dv.setInt32(at, v as number, true);
      case "FLOAT32":
        return dv.setFloat32(at, v as number, true);
      case "FLOAT64":
        return dv.setFloat64(at, v as number, true);
      case "UINT64":
        return dv.setBigUint64(at, BigInt(v as number | bigint), true);
      case "INT64":
        return dv.setBigInt64(at, BigInt(v as number | bigint), true);
    }
  }

  done(): Uint8Array {
    return this.#buf.slice(0, this.length);
  }
}

/** The bytes of one GGUF file. */
export function encodeGguf(content: GgufContent, version = 3): Uint8Array {
  const { metadata, tensors } = content;
  const align = metadata["general.alignment"];
  const alignment = align === undefined ? DEFAULT_ALIGNMENT : align.value as number;
  const out = new Bytes();
  out.u32(GGUF_MAGIC);
  out.u32(version);
  out.u64(tensors.length);
  out.u64(Object.keys(metadata).length);
  for (const [key, { type, value }] of Object.entries(metadata)) {
    out.string(key);
    out.u32(GGUF_VALUE_TYPES[type]);
    out.value(type, value);
  }
  // Data offsets: each tensor starts aligned, as gguf-py pads after every tensor.
  let offset = 0;
  const offsets = tensors.map((t) => {
    const at = offset;
    offset += Math.ceil(t.bytes.length / alignment) * alignment;
    return at;
  });
  tensors.forEach((t, i) => {
    out.string(t.name);
    out.u32(t.ne.length);
    for (const d of t.ne) out.u64(d);
    out.u32(typeof t.type === "number" ? t.type : ggmlTypeId(t.type));
    out.u64(t.offsetOverride ?? offsets[i]);
  });
  out.pad(alignment);
  for (const t of tensors) {
    out.bytes(t.bytes);
    out.pad(alignment);
  }
  return out.done();
}

/**
 * Writes a GGUF file, or `splits` files as gguf-split does: the first holds all the metadata, each
 * gets split.no / split.count / split.tensors.count and a contiguous share of the tensors.
 * Returns the paths written.
 */
export async function writeGguf(
  path: string,
  content: GgufContent,
  opts: WriteGgufOptions = {},
): Promise<string[]> {
  const n = opts.splits ?? 1;
  if (n <= 1) {
    await Deno.writeFile(path, encodeGguf(content, opts.version));
    return [path];
  }
  if (!path.endsWith(".gguf")) throw new RangeError(`split output ${path} must end in .gguf`);
  const prefix = path.slice(0, -".gguf".length);
  const { tensors } = content;
  const paths: string[] = [];
  for (let i = 0; i < n; i++) {
    const share = tensors.slice(
      Math.floor(i * tensors.length / n),
      Math.floor((i + 1) * tensors.length / n),
    );
    const metadata = {
      ...(i === 0 ? content.metadata : {}),
      [SPLIT_KEYS.no]: kv.u16(i),
      [SPLIT_KEYS.count]: kv.u16(n),
      [SPLIT_KEYS.tensors]: kv.i32(tensors.length),
    };
    const p = splitPath(prefix, i + 1, n);
    await Deno.writeFile(p, encodeGguf({ metadata, tensors: share }, opts.version));
    paths.push(p);
  }
  return paths;
}

// ---------------------------------------------------------------------------------------------
// HF fixture -> qwen3moe GGUF

export interface HfToGgufOptions {
  /** A GGML quant type for a tensor (by GGUF name and HF shape), or undefined to keep its dtype. */
  quant?: (ggufName: string, shape: number[]) => QuantType | undefined;
  splits?: number;
  /** Extra tensors written as given (e.g. a rope_freqs.weight the runtime must skip). */
  extraTensors?: GgufTensorToWrite[];
  /** Metadata entries added or replaced after conversion. */
  metadata?: Record<string, GgufKv>;
}

/** gguf-py LlamaFileType of a float dtype (general.file_type). */
const FILE_TYPE: Record<string, number> = { F32: 0, F16: 1, BF16: 32 };

/** GGUF layer tensor names -> HF names (the inverse of src/gguf/qwen3moe.ts's table). */
const LAYER_TENSORS: [string, string][] = [
  ["attn_norm.weight", "input_layernorm.weight"],
  ["attn_q.weight", "self_attn.q_proj.weight"],
  ["attn_k.weight", "self_attn.k_proj.weight"],
  ["attn_v.weight", "self_attn.v_proj.weight"],
  ["attn_output.weight", "self_attn.o_proj.weight"],
  ["attn_q_norm.weight", "self_attn.q_norm.weight"],
  ["attn_k_norm.weight", "self_attn.k_norm.weight"],
  ["ffn_norm.weight", "post_attention_layernorm.weight"],
  ["ffn_gate_inp.weight", "mlp.gate.weight"],
];
const EXPERT_TENSORS: [string, "gate" | "up" | "down"][] = [
  ["ffn_gate_exps.weight", "gate"],
  ["ffn_up_exps.weight", "up"],
  ["ffn_down_exps.weight", "down"],
];

async function readJson(path: string): Promise<Record<string, unknown> | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** Tensors (HF views, same dtype, same row length) as one ggml tensor, quantized or not. */
function ggufTensor(
  name: string,
  parts: TensorView[],
  quant: HfToGgufOptions["quant"],
): GgufTensorToWrite {
  const shape = parts[0].shape;
  const ne = [...shape].reverse();
  if (parts.length > 1) ne.push(parts.length);
  const type = quant?.(name, shape);
  if (type === undefined) {
    const bytes = new Uint8Array(parts.reduce((a, p) => a + p.bytes.length, 0));
    let at = 0;
    for (const p of parts) {
      bytes.set(p.bytes, at);
      at += p.bytes.length;
    }
    return { name, type: parts[0].dtype, ne, bytes };
  }
  const cols = shape[shape.length - 1], rows = shape.length < 2 ? 1 : shape[0];
  const blocks = parts.map((p) => quantizeRows(type, toFloat32(p), rows, cols));
  const bytes = new Uint8Array(blocks.reduce((a, b) => a + b.length, 0));
  blocks.reduce((at, b) => (bytes.set(b, at), at + b.length), 0);
  return { name, type, ne, bytes };
}

/** A token written by convert_hf_to_gguf.py's does_token_look_special ("<|...|>"). */
function looksSpecial(token: string): boolean {
  return token.startsWith("<|") && token.endsWith("|>");
}

/**
 * Tokenizer metadata from an HF tokenizer.json / tokenizer_config.json as convert_hf_to_gguf.py
 * writes it (get_vocab_base, gguf.SpecialVocab): ids 0..vocabSize-1, "[PAD{i}]" UNUSED where the
 * tokenizer has no token, added tokens CONTROL when special or "<|...|>", else USER_DEFINED;
 * special ids from tokenizer_config.json's tokens, else config.json's ids.
 */
export function hfTokenizerMetadata(
  tokenizer: Record<string, unknown>,
  tokenizerConfig: Record<string, unknown>,
  vocabSize: number,
  config: Record<string, unknown> = {},
): Record<string, GgufKv> {
  const model = tokenizer.model as { vocab: Record<string, number>; merges: (string | string[])[] };
  const addedTokens = tokenizer.added_tokens as { id: number; content: string; special: boolean }[];
  const reverse = new Map<number, string>();
  for (const [tok, id] of Object.entries(model.vocab)) reverse.set(id, tok);
  const added = new Map(addedTokens.map((t) => [t.id, t]));
  const tokens: string[] = [], types: number[] = [];
  for (let i = 0; i < vocabSize; i++) {
    const a = added.get(i);
    if (a !== undefined) {
      tokens.push(a.content);
      types.push(a.special || looksSpecial(a.content) ? 3 : 4);
    } else if (reverse.has(i)) {
      tokens.push(reverse.get(i)!);
      types.push(1);
    } else {
      tokens.push(`[PAD${i}]`);
      types.push(5);
    }
  }
  const idOf = (key: string): number | undefined => {
    const t = tokenizerConfig[key];
    const text = typeof t === "string" ? t : (t as { content?: string } | null)?.content;
    const id = text === undefined ? -1 : tokens.indexOf(text);
    if (id >= 0) return id;
    const fromConfig = config[`${key}_id`];
    return typeof fromConfig === "number" ? fromConfig : undefined;
  };
  const meta: Record<string, GgufKv> = {
    "tokenizer.ggml.model": kv.str("gpt2"),
    "tokenizer.ggml.pre": kv.str("qwen2"),
    "tokenizer.ggml.tokens": kv.arr("STRING", tokens),
    "tokenizer.ggml.token_type": kv.arr("INT32", types),
    "tokenizer.ggml.merges": kv.arr(
      "STRING",
      model.merges.map((m) => Array.isArray(m) ? m.join(" ") : m),
    ),
  };
  for (
    const [key, gguf] of [
      ["eos_token", "tokenizer.ggml.eos_token_id"],
      ["pad_token", "tokenizer.ggml.padding_token_id"],
      ["bos_token", "tokenizer.ggml.bos_token_id"],
    ]
  ) {
    const id = idOf(key);
    if (id !== undefined) meta[gguf] = kv.u32(id);
  }
  if (typeof tokenizerConfig.add_bos_token === "boolean") {
    meta["tokenizer.ggml.add_bos_token"] = kv.bool(tokenizerConfig.add_bos_token);
  }
  if (typeof tokenizerConfig.chat_template === "string") {
    meta["tokenizer.chat_template"] = kv.str(tokenizerConfig.chat_template);
  }
  return meta;
}

/**
 * Converts the HF fixture checkpoint in hfDir to a qwen3moe GGUF at outPath (split when asked).
 * Returns the paths written.
 */
export async function hfToGguf(
  hfDir: string,
  outPath: string,
  opts: HfToGgufOptions = {},
): Promise<string[]> {
  const config = (await readJson(join(hfDir, "config.json")))!;
  const ckpt = openCheckpoint(hfDir);
  try {
    const { weights } = loadWeights(ckpt);
    const c = weights.config;
    const t = (name: string, parts: TensorView[]) => ggufTensor(name, parts, opts.quant);
    const tensors: GgufTensorToWrite[] = [t("token_embd.weight", [weights.embed])];
    weights.layers.forEach((layer, l) => {
      for (const [gguf, hf] of LAYER_TENSORS) {
        tensors.push(t(`blk.${l}.${gguf}`, [ckpt.tensors.get(`model.layers.${l}.${hf}`)!]));
      }
      for (const [gguf, which] of EXPERT_TENSORS) {
        const parts = Array.from({ length: c.numExperts }, (_, e) => layer.expert(e)[which]);
        tensors.push(t(`blk.${l}.${gguf}`, parts));
      }
    });
    tensors.push(t("output_norm.weight", [weights.finalNorm]));
    if (!c.tieWordEmbeddings) tensors.push(t("output.weight", [weights.lmHead]));
    tensors.push(...opts.extraTensors ?? []);

    const A = "qwen3moe";
    const metadata: Record<string, GgufKv> = {
      "general.architecture": kv.str(A),
      "general.type": kv.str("model"),
      "general.name": kv.str("fixture"),
      [`${A}.block_count`]: kv.u32(c.numLayers),
      [`${A}.context_length`]: kv.u32(c.maxPositionEmbeddings),
      [`${A}.embedding_length`]: kv.u32(c.hiddenSize),
      [`${A}.feed_forward_length`]: kv.u32(config.intermediate_size as number),
      [`${A}.attention.head_count`]: kv.u32(c.numHeads),
      [`${A}.attention.head_count_kv`]: kv.u32(c.numKvHeads),
      [`${A}.rope.freq_base`]: kv.f32(c.ropeTheta),
      [`${A}.attention.layer_norm_rms_epsilon`]: kv.f32(c.rmsNormEps),
      [`${A}.expert_used_count`]: kv.u32(c.topK),
      [`${A}.attention.key_length`]: kv.u32(c.headDim),
      [`${A}.attention.value_length`]: kv.u32(c.headDim),
      "general.file_type": kv.u32(FILE_TYPE[weights.embed.dtype] ?? 0),
      [`${A}.expert_count`]: kv.u32(c.numExperts),
      [`${A}.expert_feed_forward_length`]: kv.u32(c.moeIntermediateSize),
      "general.quantization_version": kv.u32(2),
    };
    const tokJson = await readJson(join(hfDir, "tokenizer.json"));
    if (tokJson !== null) {
      const tokConfig = (await readJson(join(hfDir, "tokenizer_config.json"))) ?? {};
      Object.assign(metadata, hfTokenizerMetadata(tokJson, tokConfig, c.vocabSize, config));
    } else {
      if (c.bosTokenId !== null) metadata["tokenizer.ggml.bos_token_id"] = kv.u32(c.bosTokenId);
      if (c.eosTokenIds.length > 0) {
        metadata["tokenizer.ggml.eos_token_id"] = kv.u32(c.eosTokenIds[0]);
      }
    }
    Object.assign(metadata, opts.metadata ?? {});
    return await writeGguf(outPath, { metadata, tensors }, { splits: opts.splits });
  } finally {
    ckpt.close();
  }
}
