/**
 * Deterministic fixture checkpoints: small random Qwen3-MoE models in the real Hugging Face layout
 * (config.json + safetensors, optionally sharded with model.safetensors.index.json), in F32, BF16
 * or F16, per-expert or transformers-5.x fused experts, plain qwen3_moe or the qwen3_omni_moe
 * nesting (thinker.-prefixed tensors plus audio/vision/talker tensors a text runtime skips).
 *
 * Every tensor's values come from a PRNG seeded by (seed, the tensor's name without prefix), so
 * the same seed gives the same model whatever the dtype (up to rounding), sharding, nesting or
 * expert layout. Scales keep the model numerically sane and the routing non-degenerate.
 *
 * CLI: ./bin/deno run -A weights/fixture.ts --out DIR [--preset TINY|SMALL] [--dtype F32|BF16|F16]
 *      [--shards N] [--seed N] [--omni] [--fused] [--tie]
 */

import { parseArgs } from "node:util";
import { encodeFloats } from "../src/dtype.ts";
import { type TensorToWrite, writeSafetensors } from "../src/safetensors.ts";
import type { FloatDType } from "../src/types.ts";

/** Sizes and layout of a fixture checkpoint. */
export interface FixtureOptions {
  seed: number;
  dtype: FloatDType;
  layers: number; // L
  hidden: number; // D
  heads: number; // Hq
  kvHeads: number; // Hkv
  headDim: number; // Dh (deliberately != D / Hq in the presets)
  experts: number; // E
  topK: number; // K
  inter: number; // I
  vocab: number; // V
  /** Number of safetensors files; 1 writes model.safetensors without an index. */
  shards: number;
  tieEmbeddings: boolean;
  /** qwen3_omni_moe nesting: thinker.-prefixed text model plus skipped audio/talker tensors. */
  omni: boolean;
  /** transformers 5.x fused experts (mlp.experts.gate_up_proj / down_proj). */
  fusedExperts: boolean;
}

/** A tiny model for unit tests (headDim 24 != hidden/heads = 16). */
export const TINY: FixtureOptions = {
  seed: 1,
  dtype: "F32",
  layers: 2,
  hidden: 64,
  heads: 4,
  kvHeads: 2,
  headDim: 24,
  experts: 8,
  topK: 2,
  inter: 32,
  vocab: 300,
  shards: 1,
  tieEmbeddings: false,
  omni: false,
  fusedExperts: false,
};

/** A larger fixture for end-to-end and cache tests (headDim 40 != hidden/heads = 32). */
export const SMALL: FixtureOptions = {
  ...TINY,
  layers: 3,
  hidden: 128,
  heads: 4,
  kvHeads: 2,
  headDim: 40,
  experts: 16,
  topK: 4,
  inter: 64,
  vocab: 512,
};

export const PRESETS: Record<string, FixtureOptions> = { TINY, SMALL };

/** RMSNorm weights are 1 + NORM_JITTER * N(0, 1): near 1 but not trivially 1. */
const NORM_JITTER = 0.1;
/** Router std ROUTER_GAIN / sqrt(D): logits of std ~2.5 on unit-RMS inputs, so tokens spread. */
const ROUTER_GAIN = 2.5;
/** lm_head std LM_HEAD_GAIN / sqrt(D): logits of std ~2, clear greedy winners. */
const LM_HEAD_GAIN = 2;
const RMS_NORM_EPS = 1e-6;
const ROPE_THETA = 1_000_000;
const MAX_POSITIONS = 4096;

/** mulberry32: a small, fast, well-mixed 32-bit PRNG; returns uniforms in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** FNV-1a hash of a string, to derive one PRNG seed per tensor. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** n samples of N(mean, std^2) by Box-Muller, from the tensor's own stream. */
function normal(seed: number, name: string, n: number, mean: number, std: number): Float32Array {
  const rand = mulberry32(fnv1a(`${seed}:${name}`));
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u1 = 1 - rand(); // (0, 1]: log is finite
    const r = Math.sqrt(-2 * Math.log(u1));
    const th = 2 * Math.PI * rand();
    out[i] = mean + std * r * Math.cos(th);
    if (i + 1 < n) out[i + 1] = mean + std * r * Math.sin(th);
  }
  return out;
}

interface FloatTensor {
  name: string;
  shape: number[];
  values: Float32Array;
}

/** The text model's tensors (names without prefix), values drawn per canonical name. */
function textTensors(o: FixtureOptions): FloatTensor[] {
  const { hidden: D, heads: Hq, kvHeads: Hkv, headDim: Dh, experts: E, inter: I, vocab: V } = o;
  const out: FloatTensor[] = [];
  const mat = (name: string, rows: number, cols: number, std: number) =>
    out.push({ name, shape: [rows, cols], values: normal(o.seed, name, rows * cols, 0, std) });
  const norm = (name: string, n: number) =>
    out.push({ name, shape: [n], values: normal(o.seed, name, n, 1, NORM_JITTER) });
  mat("model.embed_tokens.weight", V, D, 1);
  for (let l = 0; l < o.layers; l++) {
    const p = `model.layers.${l}.`;
    norm(p + "input_layernorm.weight", D);
    mat(p + "self_attn.q_proj.weight", Hq * Dh, D, 1 / Math.sqrt(D));
    mat(p + "self_attn.k_proj.weight", Hkv * Dh, D, 1 / Math.sqrt(D));
    mat(p + "self_attn.v_proj.weight", Hkv * Dh, D, 1 / Math.sqrt(D));
    mat(p + "self_attn.o_proj.weight", D, Hq * Dh, 1 / Math.sqrt(Hq * Dh));
    norm(p + "self_attn.q_norm.weight", Dh);
    norm(p + "self_attn.k_norm.weight", Dh);
    norm(p + "post_attention_layernorm.weight", D);
    mat(p + "mlp.gate.weight", E, D, ROUTER_GAIN / Math.sqrt(D));
    const experts: FloatTensor[][] = [];
    for (let e = 0; e < E; e++) {
      const q = `${p}mlp.experts.${e}.`;
      const one = (name: string, rows: number, cols: number, std: number): FloatTensor => ({
        name,
        shape: [rows, cols],
        values: normal(o.seed, name, rows * cols, 0, std),
      });
      experts.push([
        one(q + "gate_proj.weight", I, D, 1 / Math.sqrt(D)),
        one(q + "up_proj.weight", I, D, 1 / Math.sqrt(D)),
        one(q + "down_proj.weight", D, I, 1 / Math.sqrt(I)),
      ]);
    }
    if (o.fusedExperts) {
      // gate_up_proj [E, 2I, D]: expert e's gate rows then its up rows; down_proj [E, D, I].
      const gateUp = new Float32Array(E * 2 * I * D), down = new Float32Array(E * D * I);
      experts.forEach(([g, u, d], e) => {
        gateUp.set(g.values, e * 2 * I * D);
        gateUp.set(u.values, e * 2 * I * D + I * D);
        down.set(d.values, e * D * I);
      });
      out.push({ name: p + "mlp.experts.gate_up_proj", shape: [E, 2 * I, D], values: gateUp });
      out.push({ name: p + "mlp.experts.down_proj", shape: [E, D, I], values: down });
    } else {
      out.push(...experts.flat());
    }
  }
  norm("model.norm.weight", D);
  if (!o.tieEmbeddings) mat("lm_head.weight", V, D, LM_HEAD_GAIN / Math.sqrt(D));
  return out;
}

/** Non-text tensors of a Qwen3-Omni checkpoint, small stand-ins a text runtime must skip. */
function omniExtras(o: FixtureOptions): FloatTensor[] {
  const t = (name: string, shape: number[]): FloatTensor => ({
    name,
    shape,
    values: normal(o.seed, name, shape.reduce((a, b) => a * b, 1), 0, 0.02),
  });
  return [
    t("thinker.audio_tower.conv2d1.weight", [8, 1, 3, 3]),
    t("thinker.audio_tower.layers.0.self_attn.q_proj.weight", [8, 8]),
    t("thinker.visual.patch_embed.proj.weight", [8, 3, 2, 2, 2]),
    t("talker.model.embed_tokens.weight", [16, 8]),
    t("code2wav.pre_transformer.layers.0.mlp.up_proj.weight", [8, 8]),
  ];
}

/** Three mrope sections over Dh/2 in the real 24:20:20 proportion (text-only: plain RoPE). */
function mropeSection(headDim: number): number[] {
  const half = headDim / 2;
  const hw = Math.floor((half * 20) / 64);
  return [half - 2 * hw, hw, hw];
}

const TORCH_DTYPE: Record<FloatDType, string> = {
  F32: "float32",
  BF16: "bfloat16",
  F16: "float16",
};

/** The text model's config fields, as in a real qwen3_moe config.json. */
function textConfig(o: FixtureOptions, modelType: string): Record<string, unknown> {
  return {
    model_type: modelType,
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: o.vocab - 2,
    eos_token_id: o.vocab - 1,
    decoder_sparse_step: 1,
    head_dim: o.headDim,
    hidden_act: "silu",
    hidden_size: o.hidden,
    initializer_range: 0.02,
    intermediate_size: 4 * o.inter,
    max_position_embeddings: MAX_POSITIONS,
    max_window_layers: o.layers,
    mlp_only_layers: [],
    moe_intermediate_size: o.inter,
    norm_topk_prob: true,
    num_attention_heads: o.heads,
    num_experts: o.experts,
    num_experts_per_tok: o.topK,
    num_hidden_layers: o.layers,
    num_key_value_heads: o.kvHeads,
    output_router_logits: false,
    rms_norm_eps: RMS_NORM_EPS,
    rope_scaling: null,
    rope_theta: ROPE_THETA,
    router_aux_loss_coef: 0.001,
    sliding_window: null,
    tie_word_embeddings: o.tieEmbeddings,
    torch_dtype: TORCH_DTYPE[o.dtype],
    use_cache: true,
    use_sliding_window: false,
    vocab_size: o.vocab,
  };
}

function configJson(o: FixtureOptions): Record<string, unknown> {
  if (!o.omni) {
    return {
      architectures: ["Qwen3MoeForCausalLM"],
      ...textConfig(o, "qwen3_moe"),
      transformers_version: "4.51.0",
    };
  }
  const text = {
    ...textConfig(o, "qwen3_omni_moe_text"),
    shared_expert_intermediate_size: 0,
    rope_scaling: {
      rope_type: "default",
      mrope_section: mropeSection(o.headDim),
      interleaved: true,
      mrope_interleaved: true,
    },
  };
  delete (text as Record<string, unknown>).bos_token_id;
  delete (text as Record<string, unknown>).eos_token_id;
  return {
    architectures: ["Qwen3OmniMoeForConditionalGeneration"],
    model_type: "qwen3_omni_moe",
    enable_audio_output: true,
    // Real Omni configs keep the special ids outside text_config; the parser looks outward.
    thinker_config: {
      model_type: "qwen3_omni_moe_thinker",
      text_config: text,
      audio_config: { model_type: "qwen3_omni_moe_audio_encoder", d_model: 8 },
      bos_token_id: o.vocab - 2,
      eos_token_id: [o.vocab - 1],
    },
    talker_config: { model_type: "qwen3_omni_moe_talker" },
    torch_dtype: TORCH_DTYPE[o.dtype],
    transformers_version: "4.57.0",
  };
}

/** Splits tensors (in order) into n contiguous groups of roughly equal bytes. */
function shard<T extends { data: Uint8Array }>(tensors: T[], n: number): T[][] {
  const total = tensors.reduce((a, t) => a + t.data.length, 0);
  const groups: T[][] = Array.from({ length: n }, () => []);
  let acc = 0;
  for (const t of tensors) {
    const g = Math.min(n - 1, Math.floor((acc / total) * n));
    groups[g].push(t);
    acc += t.data.length;
  }
  return groups;
}

/** Checks sizes the way the runtime's config parser will, before writing anything. */
function checkOptions(o: FixtureOptions): void {
  const bad = (why: string) => {
    throw new RangeError(`fixture options: ${why}`);
  };
  for (const k of ["layers", "hidden", "heads", "kvHeads", "headDim", "experts", "topK"] as const) {
    if (!Number.isInteger(o[k]) || o[k] <= 0) bad(`${k} must be a positive integer`);
  }
  if (o.hidden % 4 || o.headDim % 4 || o.inter % 4) bad("hidden, headDim, inter: multiples of 4");
  if (o.heads % o.kvHeads) bad("heads must be a multiple of kvHeads");
  if (o.topK > o.experts) bad("topK must be <= experts");
  if (o.vocab < 3) bad("vocab must be >= 3 (bos and eos ids are vocab-2 and vocab-1)");
  if (!Number.isInteger(o.shards) || o.shards < 1) bad("shards must be >= 1");
}

/** Writes a fixture checkpoint into dir (created if needed). Returns the files written. */
export async function writeFixture(dir: string, opts: FixtureOptions): Promise<string[]> {
  checkOptions(opts);
  await Deno.mkdir(dir, { recursive: true });
  const prefix = opts.omni ? "thinker." : "";
  const floats = textTensors(opts).map((t) => ({ ...t, name: prefix + t.name }));
  if (opts.omni) floats.push(...omniExtras(opts));
  const tensors: TensorToWrite[] = floats.map((t) => ({
    name: t.name,
    dtype: opts.dtype,
    shape: t.shape,
    data: encodeFloats(t.values, opts.dtype),
  }));
  const files = [`${dir}/config.json`];
  await Deno.writeTextFile(files[0], JSON.stringify(configJson(opts), null, 2) + "\n");
  const metadata = { format: "pt" };
  if (opts.shards === 1) {
    files.push(`${dir}/model.safetensors`);
    await writeSafetensors(files[1], tensors, metadata);
    return files;
  }
  const pad = (i: number) => String(i).padStart(5, "0");
  const weightMap: Record<string, string> = {};
  const groups = shard(tensors, opts.shards);
  for (let i = 0; i < groups.length; i++) {
    const name = `model-${pad(i + 1)}-of-${pad(opts.shards)}.safetensors`;
    for (const t of groups[i]) weightMap[t.name] = name;
    files.push(`${dir}/${name}`);
    await writeSafetensors(`${dir}/${name}`, groups[i], metadata);
  }
  const totalSize = tensors.reduce((a, t) => a + t.data.length, 0);
  const index = { metadata: { total_size: totalSize }, weight_map: weightMap };
  files.push(`${dir}/model.safetensors.index.json`);
  await Deno.writeTextFile(files[files.length - 1], JSON.stringify(index, null, 2) + "\n");
  return files;
}

const USAGE = "usage: fixture.ts --out DIR [--preset TINY|SMALL] [--dtype F32|BF16|F16] " +
  "[--shards N] [--seed N] [--omni] [--fused] [--tie]";

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      out: { type: "string" },
      preset: { type: "string", default: "TINY" },
      dtype: { type: "string" },
      shards: { type: "string" },
      seed: { type: "string" },
      omni: { type: "boolean", default: false },
      fused: { type: "boolean", default: false },
      tie: { type: "boolean", default: false },
    },
    strict: true,
  });
  const preset = PRESETS[values.preset!.toUpperCase()];
  if (!values.out || preset === undefined) {
    console.error(USAGE);
    return 2;
  }
  const dtype = (values.dtype ?? preset.dtype).toUpperCase();
  if (!["F32", "BF16", "F16"].includes(dtype)) {
    console.error(`--dtype ${values.dtype}: use F32, BF16 or F16`);
    return 2;
  }
  const opts: FixtureOptions = {
    ...preset,
    dtype: dtype as FloatDType,
    shards: values.shards ? Number(values.shards) : preset.shards,
    seed: values.seed ? Number(values.seed) : preset.seed,
    omni: values.omni!,
    fusedExperts: values.fused!,
    tieEmbeddings: values.tie!,
  };
  const files = await writeFixture(values.out, opts);
  for (const f of files) console.log(f);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
