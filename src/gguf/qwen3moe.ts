/**
 * A llama.cpp `qwen3moe` GGUF model opened as a Hugging Face checkpoint: its hyper-parameters
 * become a qwen3_moe config.json object checked by src/config.ts's parseConfig (one validation for
 * both formats), and its tensors get the HF names of src/weights.ts's table, so loadWeights and the
 * packer read a GGUF file exactly as they read safetensors.
 *
 * What llama.cpp does with a qwen3moe file (src/models/qwen3moe.cpp, src/llama-model.cpp):
 * - routing: softmax over the experts, top-k, and the k weights always renormalised to sum 1
 *   (`build_moe_ffn(..., LLM_FFN_SILU, true, ..., LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX, ...)`, the
 *   `true` being norm_w), whatever the file says: norm_topk_prob is true;
 * - RoPE: llama_model_rope_type() lists LLM_ARCH_QWEN3MOE with the NEOX types ("the pairs of head
 *   values are offset by n_rot/2"), i.e. HF's rotate-half, so convert_hf_to_gguf.py's Qwen2MoeModel
 *   (which Qwen3MoeModel extends) writes q_proj/k_proj unpermuted (only LlamaModel permutes): the
 *   bytes are the checkpoint's;
 * - output.weight is optional: without it the embedding is the LM head (tie_word_embeddings).
 *
 * Shapes: ggml's ne lists sizes innermost first, so a tensor's row-major (HF) shape is ne reversed:
 * token_embd ne [D, V] is [V, D]. The stacked experts ffn_gate_exps / ffn_up_exps ne [D, I, E] and
 * ffn_down_exps ne [I, D, E] are torch.stack of the per-expert [I, D] / [D, I] matrices, so expert
 * e is one contiguous byte range and becomes a zero-copy view named as in a per-expert checkpoint.
 */

import { dirname } from "node:path";
import type { Checkpoint, CheckpointEntry } from "../checkpoint.ts";
import { ConfigError, parseConfig } from "../config.ts";
import type { SafetensorsFile } from "../safetensors.ts";
import type { FloatDType, ModelConfig, TensorView } from "../types.ts";
import {
  EXPERT_TENSORS,
  GLOBAL_TENSORS,
  LAYER_TENSORS,
  tensorName,
  type TensorSpec,
} from "../weights.ts";
import {
  getFloat,
  getInt,
  getString,
  getStringArray,
  type GgufMetadata,
  required,
} from "./metadata.ts";
import { type GgufModel, type GgufTensorRef, openGgufModel } from "./split.ts";

/** general.architecture of the files this module reads. */
export const GGUF_ARCH = "qwen3moe";
export const ARCH_KEY = "general.architecture";

/** The file is another architecture than qwen3moe. */
export class GgufArchitectureError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GgufArchitectureError";
  }
}

/** A stacked expert tensor does not hold expert_count experts of the expected rank. */
export class GgufShapeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GgufShapeError";
  }
}

/**
 * Hyper-parameters: `qwen3moe.KEY` (llama-arch.cpp LLM_KV_NAMES) -> config.json field, as
 * convert_hf_to_gguf.py's TextModel.set_gguf_parameters and Qwen2MoeModel write them.
 */
const HPARAMS: { key: string; field: string; need: string | null }[] = [
  { key: "block_count", field: "num_hidden_layers", need: "the layer count" },
  { key: "context_length", field: "max_position_embeddings", need: "the trained context" },
  { key: "embedding_length", field: "hidden_size", need: "the hidden size" },
  { key: "feed_forward_length", field: "intermediate_size", need: null },
  { key: "attention.head_count", field: "num_attention_heads", need: "the query head count" },
  // llama.cpp: n_head_kv defaults to n_head, key_length to n_embd / n_head.
  { key: "attention.head_count_kv", field: "num_key_value_heads", need: null },
  { key: "attention.key_length", field: "head_dim", need: null },
  { key: "expert_count", field: "num_experts", need: "the expert count" },
  { key: "expert_used_count", field: "num_experts_per_tok", need: "top-k" },
  { key: "expert_feed_forward_length", field: "moe_intermediate_size", need: null },
  {
    key: "expert_shared_feed_forward_length",
    field: "shared_expert_intermediate_size",
    need: null,
  },
];
const FLOAT_HPARAMS: { key: string; field: string; fallback?: number }[] = [
  { key: "attention.layer_norm_rms_epsilon", field: "rms_norm_eps" },
  // llama-model.cpp: rope_freq_base_train defaults to 10000 when the key is absent.
  { key: "rope.freq_base", field: "rope_theta", fallback: 10000 },
];

/** Tokenizer keys that carry the special ids (gguf-py Keys.Tokenizer). */
export const TOKEN_ID_KEYS = {
  bos: "tokenizer.ggml.bos_token_id",
  eos: "tokenizer.ggml.eos_token_id",
  eot: "tokenizer.ggml.eot_token_id",
} as const;
export const TOKENS_KEY = "tokenizer.ggml.tokens";

/** Whole-model tensors: GGUF name -> the loader's spec (llama-arch.cpp LLM_TENSOR_NAMES). */
const GLOBAL_NAMES: Record<string, TensorSpec> = {
  "token_embd.weight": GLOBAL_TENSORS.embed,
  "output_norm.weight": GLOBAL_TENSORS.finalNorm,
  "output.weight": GLOBAL_TENSORS.lmHead,
};

/** Per-layer tensors: blk.{l}.NAME -> the loader's spec for layer l. */
const LAYER_NAMES: Record<string, TensorSpec> = {
  "attn_norm.weight": LAYER_TENSORS.inputNorm,
  "attn_q.weight": LAYER_TENSORS.q,
  "attn_k.weight": LAYER_TENSORS.k,
  "attn_v.weight": LAYER_TENSORS.v,
  "attn_output.weight": LAYER_TENSORS.o,
  "attn_q_norm.weight": LAYER_TENSORS.qNorm,
  "attn_k_norm.weight": LAYER_TENSORS.kNorm,
  "ffn_norm.weight": LAYER_TENSORS.postAttentionNorm,
  "ffn_gate_inp.weight": LAYER_TENSORS.router,
};

/** Stacked experts: blk.{l}.NAME, ne [.., .., E] -> the loader's per-expert spec. */
const EXPERT_NAMES: Record<string, TensorSpec> = {
  "ffn_gate_exps.weight": EXPERT_TENSORS.gate,
  "ffn_up_exps.weight": EXPERT_TENSORS.up,
  "ffn_down_exps.weight": EXPERT_TENSORS.down,
};

/** Tensors of features the runtime lacks: their presence goes into the config, which refuses. */
const FEATURE_TENSORS: { pattern: RegExp; field: string; value: unknown }[] = [
  { pattern: /^blk\.\d+\.attn_[qkv]\.bias$/, field: "attention_bias", value: true },
  {
    pattern: /^blk\.\d+\.ffn_(gate|up|down)_shexp\.weight$/,
    field: "shared_expert_intermediate_size",
    value: true,
  },
];

const LAYER_NAME = /^blk\.(\d+)\.(.+)$/;

const FLOAT_DTYPES: readonly string[] = ["F32", "F16", "BF16"];
function isFloat(t: TensorView): t is TensorView & { dtype: FloatDType } {
  return FLOAT_DTYPES.includes(t.dtype);
}

function arch(meta: GgufMetadata, source: string): void {
  const a = getString(meta, ARCH_KEY, source);
  if (a !== GGUF_ARCH) {
    throw new GgufArchitectureError(
      `${source}: ${ARCH_KEY} is ${JSON.stringify(a ?? null)}; this runtime reads ` +
        `${JSON.stringify(GGUF_ARCH)} GGUF files (Qwen3-MoE, e.g. Qwen3-30B-A3B) only`,
    );
  }
}

/** rope_scaling for the file's rope.scaling.* keys; null when it scales nothing. */
function ropeScaling(meta: GgufMetadata, source: string): Record<string, unknown> | null {
  const k = (key: string) => `${GGUF_ARCH}.rope.scaling.${key}`;
  const type = getString(meta, k("type"), source);
  const factor = getFloat(meta, k("factor"), source);
  if (type === undefined || type === "none") return null;
  if (type === "linear" && (factor === undefined || factor === 0 || factor === 1)) return null;
  return {
    rope_type: type,
    factor,
    original_max_position_embeddings: getInt(meta, k("original_context_length"), source),
  };
}

/**
 * The config.json object a qwen3moe GGUF model stands for. `tensors` are the model's tensor names
 * (the LM head's absence means tied embeddings) with their ne.
 */
export function ggufConfigJson(
  meta: GgufMetadata,
  tensors: ReadonlyMap<string, { ne: number[] }>,
  source: string,
): Record<string, unknown> {
  arch(meta, source);
  const key = (k: string) => `${GGUF_ARCH}.${k}`;
  const json: Record<string, unknown> = { model_type: "qwen3_moe" };
  for (const h of HPARAMS) {
    const v = getInt(meta, key(h.key), source);
    json[h.field] = h.need === null ? v : required(v, key(h.key), source, h.need);
  }
  for (const h of FLOAT_HPARAMS) {
    const v = getFloat(meta, key(h.key), source) ?? h.fallback;
    json[h.field] = required(v, key(h.key), source, h.field);
  }
  // qwen3moe.cpp: n_ff_exp falls back to n_ff / n_expert_used.
  if (json.moe_intermediate_size === undefined && typeof json.intermediate_size === "number") {
    json.moe_intermediate_size = json.intermediate_size / (json.num_experts_per_tok as number);
  }
  required(json.moe_intermediate_size, key("expert_feed_forward_length"), source, "I");
  checkAttentionDims(meta, json, source);
  json.rope_scaling = ropeScaling(meta, source);
  json.norm_topk_prob = true; // qwen3moe.cpp passes norm_w = true to build_moe_ffn
  json.tie_word_embeddings = !tensors.has("output.weight");
  json.vocab_size = vocabSize(meta, tensors, source);
  for (const f of FEATURE_TENSORS) {
    if ([...tensors.keys()].some((n) => f.pattern.test(n))) json[f.field] = f.value;
  }
  const bos = getInt(meta, TOKEN_ID_KEYS.bos, source);
  if (bos !== undefined) json.bos_token_id = bos;
  const eos = [TOKEN_ID_KEYS.eos, TOKEN_ID_KEYS.eot]
    .map((k) => getInt(meta, k, source))
    .filter((id): id is number => id !== undefined);
  if (eos.length > 0) json.eos_token_id = [...new Set(eos)];
  return json;
}

/** Head sizes llama.cpp allows but the runtime does not: separate V head size, partial RoPE. */
function checkAttentionDims(meta: GgufMetadata, json: Record<string, unknown>, source: string) {
  const headDim = (json.head_dim as number | undefined) ??
    (json.hidden_size as number) / (json.num_attention_heads as number);
  for (const k of ["attention.value_length", "rope.dimension_count"]) {
    const v = getInt(meta, `${GGUF_ARCH}.${k}`, source);
    if (v !== undefined && v !== headDim) {
      throw new ConfigError(
        `${source}: ${GGUF_ARCH}.${k} is ${v} but the head size is ${headDim}; this runtime ` +
          `needs value heads and rotary dims of the full head size`,
      );
    }
  }
}

/** V: the token list's length (as llama.cpp takes n_vocab), else token_embd's row count. */
function vocabSize(
  meta: GgufMetadata,
  tensors: ReadonlyMap<string, { ne: number[] }>,
  source: string,
): number | undefined {
  const tokens = getStringArray(meta, TOKENS_KEY, source);
  if (tokens !== undefined) return tokens.length;
  return tensors.get("token_embd.weight")?.ne[1];
}

/** The ModelConfig of a qwen3moe GGUF model (parseConfig's checks included). */
export function ggufConfig(model: GgufModel): ModelConfig {
  const infos = new Map([...model.tensors].map(([name, ref]) => [name, ref.info]));
  const source = `${model.path} (GGUF metadata)`;
  return parseConfig(ggufConfigJson(model.metadata, infos, source), source);
}

/** A Checkpoint read from a GGUF model; `gguf` gives its metadata (e.g. for the tokenizer). */
export interface GgufCheckpoint extends Checkpoint {
  gguf: GgufModel;
}

/** Collects views and entries under HF names, per file. */
class Views {
  readonly tensors = new Map<string, TensorView>();
  readonly entries = new Map<string, CheckpointEntry>();
  readonly byFile = new Map<string, CheckpointEntry[]>();

  add(model: GgufModel, ref: GgufTensorRef, name: string, shape: number[], begin = 0, bytes = -1) {
    const { info, file } = ref;
    const len = bytes < 0 ? info.bytes : bytes;
    const offset = file.dataStart + info.offset + begin;
    const entry: CheckpointEntry = {
      name,
      dtype: info.dtype,
      shape,
      begin: info.offset + begin,
      end: info.offset + begin + len,
      file: file.path,
    };
    const data = model.data(ref);
    this.tensors.set(name, {
      name,
      dtype: info.dtype,
      shape,
      bytes: data.subarray(begin, begin + len),
      file: file.path,
      offset,
    });
    this.entries.set(name, entry);
    const list = this.byFile.get(file.path) ?? [];
    list.push(entry);
    this.byFile.set(file.path, list);
  }
}

/** Adds ref under its HF name(s): one view, E expert views, or its own name when unknown. */
function mapTensor(v: Views, model: GgufModel, ref: GgufTensorRef, c: ModelConfig): void {
  const { info } = ref;
  const shape = [...info.ne].reverse();
  const global = GLOBAL_NAMES[info.name];
  if (global !== undefined) return v.add(model, ref, tensorName(global.template, ""), shape);
  const m = LAYER_NAME.exec(info.name);
  const layer = m === null ? -1 : Number(m[1]);
  if (m === null || layer >= c.numLayers) return v.add(model, ref, info.name, shape);
  const spec = LAYER_NAMES[m[2]];
  if (spec !== undefined) return v.add(model, ref, tensorName(spec.template, "", layer), shape);
  const expert = EXPERT_NAMES[m[2]];
  if (expert === undefined) return v.add(model, ref, info.name, shape);
  const E = c.numExperts;
  if (info.ne.length !== 3 || info.ne[2] !== E) {
    throw new GgufShapeError(
      `${ref.file.path}: tensor ${info.name} has ne [${info.ne}] but ${GGUF_ARCH}.expert_count ` +
        `is ${E}: stacked experts must have ne [cols, rows, ${E}]; convert the model again`,
    );
  }
  const per = info.bytes / E;
  for (let e = 0; e < E; e++) {
    const name = tensorName(expert.template, "", layer, e);
    v.add(model, ref, name, [info.ne[1], info.ne[0]], e * per, per);
  }
}

/**
 * Opens a qwen3moe GGUF file (any file of a split model opens all) as a Checkpoint: `dir` is the
 * file's directory, `tensors`/`entries` hold every tensor under its HF name (stacked experts as
 * per-expert views), tensors the table does not know (rope_freqs, ...) under their GGUF name so
 * the loader's audit reports them as skipped.
 */
export function openGguf(path: string): GgufCheckpoint {
  const model = openGgufModel(path);
  try {
    const config = ggufConfig(model);
    const v = new Views();
    for (const ref of model.tensors.values()) mapTensor(v, model, ref, config);
    const files: SafetensorsFile[] = model.files.map((f) => ({
      path: f.path,
      file: f.file,
      metadata: null,
      entries: v.byFile.get(f.path) ?? [],
      dataStart: f.dataStart,
      // SafetensorsFile.view gives float tensors only; quantized ones are in ckpt.tensors.
      view(name: string): TensorView & { dtype: FloatDType } {
        const t = v.tensors.get(name);
        if (t === undefined || t.file !== f.path) throw new RangeError(`${f.path} has no ${name}`);
        if (!isFloat(t)) {
          throw new RangeError(`${f.path}: ${name} is ${t.dtype}; read it from Checkpoint.tensors`);
        }
        return t;
      },
      close: () => f.close(),
    }));
    return {
      dir: dirname(model.path),
      config,
      tensors: v.tensors,
      entries: v.entries,
      files,
      gguf: model,
      close: () => model.close(),
    };
  } catch (e) {
    model.close();
    throw e;
  }
}
