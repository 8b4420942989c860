/**
 * CPU float64 reference of Hugging Face's Qwen3MoeForCausalLM (and the Qwen3-Omni thinker's text
 * model): plain, slow and meant to be obviously correct. It reads config.json and the safetensors
 * itself (src/reference/_tensors.ts), independent of the production loader, so the WebGPU runtime
 * can be checked against it. All math is float64, including RoPE angles and both softmaxes (HF
 * computes those in float32 islands; the reference is the exact math instead).
 *
 * Dimension legend (src/types.ts): T tokens in a step, D hidden, V vocab, L layers, Hq query
 * heads, Hkv kv heads, Dh head dim, E experts, K experts per token, I expert intermediate size.
 */

import type { LanguageModel, ModelConfig, Session } from "../types.ts";
import { CheckpointTensors } from "./_tensors.ts";

/** config.json asks for something the reference does not implement. */
export class ReferenceConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ReferenceConfigError";
  }
}

/** A forward call does not fit the session: unknown token id or context overflow. */
export class ReferenceInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ReferenceInputError";
  }
}

/** A reference session: the Session interface plus float64 logits. */
export interface ReferenceSession extends Session {
  /** Like forward, but synchronous and in float64: [ids.length][V] (or the last row). */
  forward64(ids: number[], opts?: { lastOnly?: boolean }): Float64Array[];
}

/** The reference model; close() releases its shard files. */
export interface ReferenceModel extends LanguageModel {
  newSession(): ReferenceSession;
  close(): void;
}

/** Options of openReferenceModel. */
export interface ReferenceOptions {
  /** Longest sequence a session holds; default max_position_embeddings. */
  maxContext?: number;
  /** Largest tensor group (in elements) kept decoded in memory; default CACHE_MAX_ELEMENTS. */
  cacheMaxElements?: number;
}

/**
 * Each group of tensors (all layers' dense weights, all experts, lm_head) is cached as float64
 * only while it stays under this many elements (512 MiB); a real 30B checkpoint instead re-reads
 * each layer's weights per forward call and the chosen experts per token, trading speed for RAM.
 */
const CACHE_MAX_ELEMENTS = 64 * 1024 * 1024;
/** lm_head is streamed in blocks of this many rows when it is too big to cache. */
const LM_HEAD_BLOCK_ROWS = 4096;

// ---------------------------------------------------------------------------------------------
// Hugging Face tensor names, written out (p = "" or "thinker.", l = layer, e = expert).

const NAMES = {
  embed: (p: string) => `${p}model.embed_tokens.weight`, // [V, D]
  finalNorm: (p: string) => `${p}model.norm.weight`, // [D]
  lmHead: (p: string) => `${p}lm_head.weight`, // [V, D]
  inputNorm: (p: string, l: number) => `${p}model.layers.${l}.input_layernorm.weight`, // [D]
  q: (p: string, l: number) => `${p}model.layers.${l}.self_attn.q_proj.weight`, // [Hq*Dh, D]
  k: (p: string, l: number) => `${p}model.layers.${l}.self_attn.k_proj.weight`, // [Hkv*Dh, D]
  v: (p: string, l: number) => `${p}model.layers.${l}.self_attn.v_proj.weight`, // [Hkv*Dh, D]
  o: (p: string, l: number) => `${p}model.layers.${l}.self_attn.o_proj.weight`, // [D, Hq*Dh]
  qNorm: (p: string, l: number) => `${p}model.layers.${l}.self_attn.q_norm.weight`, // [Dh]
  kNorm: (p: string, l: number) => `${p}model.layers.${l}.self_attn.k_norm.weight`, // [Dh]
  postNorm: (p: string, l: number) => `${p}model.layers.${l}.post_attention_layernorm.weight`,
  router: (p: string, l: number) => `${p}model.layers.${l}.mlp.gate.weight`, // [E, D]
  // transformers 4.x: one module per expert
  gate: (p: string, l: number, e: number) =>
    `${p}model.layers.${l}.mlp.experts.${e}.gate_proj.weight`, // [I, D]
  up: (p: string, l: number, e: number) => `${p}model.layers.${l}.mlp.experts.${e}.up_proj.weight`,
  down: (p: string, l: number, e: number) =>
    `${p}model.layers.${l}.mlp.experts.${e}.down_proj.weight`, // [D, I]
  // transformers 5.x Qwen3MoeExperts: gate_up_proj [E, 2I, D] (rows 0..I gate, I..2I up),
  // down_proj [E, D, I]
  fusedGateUp: (p: string, l: number) => `${p}model.layers.${l}.mlp.experts.gate_up_proj`,
  fusedDown: (p: string, l: number) => `${p}model.layers.${l}.mlp.experts.down_proj`,
};

// ---------------------------------------------------------------------------------------------
// config.json

type Json = Record<string, unknown>;

/** Qwen3MoeConfig's defaults for fields a config.json may leave out. */
const DEFAULT_RMS_NORM_EPS = 1e-6;
const DEFAULT_ROPE_THETA = 10000;

/** Reads DIR/config.json into a ModelConfig (Qwen3-MoE, or Qwen3-Omni's thinker text model). */
export function readReferenceConfig(dir: string): ModelConfig {
  const top = JSON.parse(Deno.readTextFileSync(`${dir}/config.json`)) as Json;
  let text = top;
  let scopes = [top];
  let tensorPrefix = "";
  if (top.model_type === "qwen3_omni_moe") {
    const thinker = top.thinker_config as Json | undefined;
    text = thinker?.text_config as Json;
    if (!thinker || !text) {
      throw new ReferenceConfigError(`${dir}/config.json has no thinker_config.text_config`);
    }
    scopes = [text, thinker, top];
    tensorPrefix = "thinker.";
  } else if (top.model_type !== "qwen3_moe") {
    throw new ReferenceConfigError(
      `model_type ${top.model_type} in ${dir}/config.json: the reference implements qwen3_moe ` +
        `and qwen3_omni_moe only`,
    );
  }
  // a key from the innermost scope that sets it (Omni text configs carry nulls for ids)
  const first = (key: string) =>
    scopes.map((s) => s[key]).find((v) => v !== undefined && v !== null);
  const refuse = (what: string) => {
    throw new ReferenceConfigError(
      `${dir}/config.json: ${what} is not implemented by the reference`,
    );
  };
  if (text.attention_bias === true) refuse("attention_bias");
  if (text.use_sliding_window === true) refuse("use_sliding_window");
  if (Array.isArray(text.mlp_only_layers) && text.mlp_only_layers.length > 0) {
    refuse("mlp_only_layers (dense layers)");
  }
  if ((text.decoder_sparse_step ?? 1) !== 1) refuse("decoder_sparse_step != 1 (dense layers)");
  if ((text.shared_expert_intermediate_size ?? 0) !== 0) refuse("shared experts");
  const ropeParameters = (text.rope_parameters ?? {}) as Json; // transformers 5.x
  const ropeScaling = (text.rope_scaling ?? {}) as Json;
  for (const scaling of [ropeParameters, ropeScaling]) {
    const type = scaling.rope_type ?? scaling.type ?? "default";
    // mrope with text-only positions (equal t/h/w) is exactly plain RoPE
    if (type !== "default" && type !== "mrope") refuse(`rope type ${type}`);
  }
  // a positive number from the text config (or its fallback); absent or bad ones are refused
  const need = (key: string, fallback?: unknown): number => {
    const v = text[key] ?? fallback;
    if (typeof v !== "number" || !(v > 0)) {
      throw new ReferenceConfigError(`${dir}/config.json: ${key} is ${v}, need a positive number`);
    }
    return v;
  };
  const numHeads = need("num_attention_heads");
  const eos = first("eos_token_id");
  return {
    modelType: top.model_type as string,
    tensorPrefix,
    vocabSize: need("vocab_size"),
    hiddenSize: need("hidden_size"),
    numLayers: need("num_hidden_layers"),
    numHeads,
    numKvHeads: need("num_key_value_heads", numHeads),
    headDim: need("head_dim", need("hidden_size") / numHeads),
    numExperts: need("num_experts"),
    topK: need("num_experts_per_tok"),
    moeIntermediateSize: need("moe_intermediate_size"),
    normTopkProb: text.norm_topk_prob === true,
    rmsNormEps: need("rms_norm_eps", DEFAULT_RMS_NORM_EPS),
    ropeTheta: need("rope_theta", ropeParameters.rope_theta ?? DEFAULT_ROPE_THETA),
    maxPositionEmbeddings: need("max_position_embeddings"),
    tieWordEmbeddings: first("tie_word_embeddings") === true,
    bosTokenId: (first("bos_token_id") ?? null) as number | null,
    eosTokenIds: eos === undefined ? [] : ([] as number[]).concat(eos as number | number[]),
  };
}

// ---------------------------------------------------------------------------------------------
// weights as float64

interface Layer {
  inputNorm: Float64Array; // [D]
  q: Float64Array; // [Hq*Dh, D]
  k: Float64Array; // [Hkv*Dh, D]
  v: Float64Array; // [Hkv*Dh, D]
  o: Float64Array; // [D, Hq*Dh]
  qNorm: Float64Array; // [Dh]
  kNorm: Float64Array; // [Dh]
  postNorm: Float64Array; // [D]
  router: Float64Array; // [E, D]
}

interface Expert {
  gate: Float64Array; // [I, D]
  up: Float64Array; // [I, D]
  down: Float64Array; // [D, I]
}

/** Every weight of the model as float64, cached when small, otherwise read on demand. */
class Weights {
  readonly finalNorm: Float64Array; // [D]
  private readonly layerCache: Map<number, Layer> | null;
  private readonly lmHeadName: string;
  private readonly lmHeadCache: Float64Array | null; // [V, D] when small enough
  private readonly fused: boolean;
  private readonly expertCache: Map<string, Expert> | null;

  constructor(
    readonly c: ModelConfig,
    readonly tensors: CheckpointTensors,
    cacheMaxElements: number,
  ) {
    const p = c.tensorPrefix;
    const { hiddenSize: D, numHeads: Hq, numKvHeads: Hkv, headDim: Dh, numExperts: E } = c;
    const layerElements = c.numLayers * (D * (2 * Hq * Dh + 2 * Hkv * Dh + E + 2) + 2 * Dh);
    this.layerCache = layerElements <= cacheMaxElements ? new Map() : null;
    for (let l = 0; l < c.numLayers; l++) this.layer(l); // check every shape up front
    this.finalNorm = tensors.read(NAMES.finalNorm(p), [D]);
    this.lmHeadName = c.tieWordEmbeddings ? NAMES.embed(p) : NAMES.lmHead(p);
    const V = c.vocabSize;
    const lmHeadShape = tensors.shape(this.lmHeadName);
    if (lmHeadShape.join(",") !== `${V},${D}`) {
      throw new ReferenceConfigError(
        `${this.lmHeadName} is [${lmHeadShape}], expected [${V},${D}]`,
      );
    }
    this.lmHeadCache = V * D <= cacheMaxElements ? tensors.read(this.lmHeadName, [V, D]) : null;
    this.fused = tensors.has(NAMES.fusedGateUp(p, 0));
    const expertElements = c.numLayers * E * 3 * c.moeIntermediateSize * D;
    this.expertCache = expertElements <= cacheMaxElements ? new Map() : null;
  }

  /** Layer l's attention, norm and router weights. */
  layer(l: number): Layer {
    const cached = this.layerCache?.get(l);
    if (cached) return cached;
    const { tensorPrefix: p, hiddenSize: D, numHeads: Hq, numKvHeads: Hkv, headDim: Dh } = this.c;
    const t = this.tensors;
    const layer = {
      inputNorm: t.read(NAMES.inputNorm(p, l), [D]),
      q: t.read(NAMES.q(p, l), [Hq * Dh, D]),
      k: t.read(NAMES.k(p, l), [Hkv * Dh, D]),
      v: t.read(NAMES.v(p, l), [Hkv * Dh, D]),
      o: t.read(NAMES.o(p, l), [D, Hq * Dh]),
      qNorm: t.read(NAMES.qNorm(p, l), [Dh]),
      kNorm: t.read(NAMES.kNorm(p, l), [Dh]),
      postNorm: t.read(NAMES.postNorm(p, l), [D]),
      router: t.read(NAMES.router(p, l), [this.c.numExperts, D]),
    };
    this.layerCache?.set(l, layer);
    return layer;
  }

  /** Row `id` of the embedding table. */
  embedRow(id: number): Float64Array {
    const D = this.c.hiddenSize;
    return this.tensors.readRange(NAMES.embed(this.c.tensorPrefix), id * D, D);
  }

  /** Expert e of layer l, from per-expert or fused (gate_up_proj / down_proj) tensors. */
  expert(l: number, e: number): Expert {
    const key = `${l}.${e}`;
    const cached = this.expertCache?.get(key);
    if (cached) return cached;
    const { tensorPrefix: p, hiddenSize: D, moeIntermediateSize: I, numExperts: E } = this.c;
    let expert: Expert;
    if (this.fused) {
      const gateUp = NAMES.fusedGateUp(p, l);
      const down = NAMES.fusedDown(p, l);
      checkShape(this.tensors, gateUp, [E, 2 * I, D]);
      checkShape(this.tensors, down, [E, D, I]);
      expert = {
        gate: this.tensors.readRange(gateUp, e * 2 * I * D, I * D), // rows 0..I of expert e
        up: this.tensors.readRange(gateUp, e * 2 * I * D + I * D, I * D), // rows I..2I
        down: this.tensors.readRange(down, e * D * I, D * I),
      };
    } else {
      expert = {
        gate: this.tensors.read(NAMES.gate(p, l, e), [I, D]),
        up: this.tensors.read(NAMES.up(p, l, e), [I, D]),
        down: this.tensors.read(NAMES.down(p, l, e), [D, I]),
      };
    }
    this.expertCache?.set(key, expert);
    return expert;
  }

  /** logits = lm_head x: [V] (embedding matrix when tie_word_embeddings). */
  lmHead(x: Float64Array): Float64Array {
    const { vocabSize: V, hiddenSize: D } = this.c;
    if (this.lmHeadCache) return matvec(this.lmHeadCache, x, V, D);
    const out = new Float64Array(V);
    for (let first = 0; first < V; first += LM_HEAD_BLOCK_ROWS) {
      const rows = Math.min(LM_HEAD_BLOCK_ROWS, V - first);
      const block = this.tensors.readRange(this.lmHeadName, first * D, rows * D);
      out.set(matvec(block, x, rows, D), first);
    }
    return out;
  }
}

function checkShape(tensors: CheckpointTensors, name: string, shape: number[]): void {
  const actual = tensors.shape(name);
  if (actual.join(",") !== shape.join(",")) {
    throw new ReferenceConfigError(`${name} is [${actual}], config implies [${shape}]`);
  }
}

// ---------------------------------------------------------------------------------------------
// math helpers, all float64

/** y = W x with W [rows, cols] row-major (nn.Linear without bias). */
function matvec(w: Float64Array, x: Float64Array, rows: number, cols: number): Float64Array {
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    const base = r * cols;
    for (let c = 0; c < cols; c++) s += w[base + c] * x[c];
    y[r] = s;
  }
  return y;
}

/** RMSNorm: x * 1/sqrt(mean(x^2) + eps) * weight. */
function rmsnorm(x: Float64Array, weight: Float64Array, eps: number): Float64Array {
  let sumSq = 0;
  for (let i = 0; i < x.length; i++) sumSq += x[i] * x[i];
  const scale = 1 / Math.sqrt(sumSq / x.length + eps);
  return x.map((xi, i) => xi * scale * weight[i]);
}

/** Softmax over all entries (max subtracted first). */
function softmax(x: Float64Array): Float64Array {
  let max = -Infinity;
  for (const v of x) max = Math.max(max, v);
  const e = x.map((v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

/** Rotate-half RoPE in place on one head: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin). */
function rope(x: Float64Array, pos: number, theta: number): void {
  const half = x.length / 2;
  for (let i = 0; i < half; i++) {
    const angle = pos / Math.pow(theta, (2 * i) / x.length); // pos * inv_freq[i]
    const cos = Math.cos(angle);
    const sin = Math.sin(angle);
    const x1 = x[i];
    const x2 = x[i + half];
    x[i] = x1 * cos - x2 * sin;
    x[i + half] = x2 * cos + x1 * sin;
  }
}

function silu(v: number): number {
  return v / (1 + Math.exp(-v));
}

function add(a: Float64Array, b: Float64Array): Float64Array {
  return a.map((v, i) => v + b[i]);
}

// ---------------------------------------------------------------------------------------------
// the model

/** Per-layer KV cache: one row per position, [Hkv*Dh] each (already normed and rotated). */
interface LayerCache {
  k: Float64Array[];
  v: Float64Array[];
}

class RefSession implements ReferenceSession {
  private caches: LayerCache[];
  private freed = false;

  constructor(private readonly w: Weights, private readonly maxContext: number) {
    this.caches = Array.from({ length: w.c.numLayers }, () => ({ k: [], v: [] }));
  }

  get length(): number {
    return this.caches[0]?.k.length ?? 0;
  }

  forward(ids: number[], opts?: { lastOnly?: boolean }): Promise<Float32Array[]> {
    return Promise.resolve(this.forward64(ids, opts).map((row) => Float32Array.from(row)));
  }

  forward64(ids: number[], opts?: { lastOnly?: boolean }): Float64Array[] {
    const c = this.w.c;
    if (this.freed) throw new ReferenceInputError("session was freed; open a new one");
    if (this.length + ids.length > this.maxContext) {
      throw new ReferenceInputError(
        `${this.length} cached + ${ids.length} new tokens exceed maxContext ${this.maxContext}; ` +
          `truncate the session or open the model with a larger maxContext`,
      );
    }
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) {
        throw new ReferenceInputError(
          `token id ${id} is outside the vocabulary [0, ${c.vocabSize})`,
        );
      }
    }
    const start = this.length;
    // token embeddings: [T][D]
    let x = ids.map((id) => this.w.embedRow(id));
    for (let l = 0; l < c.numLayers; l++) {
      const layer = this.w.layer(l);
      // h = x + attn(input_layernorm(x))
      const normed = x.map((r) => rmsnorm(r, layer.inputNorm, c.rmsNormEps));
      const attn = this.attention(l, layer, normed, start);
      x = x.map((r, t) => add(r, attn[t]));
      // out = h + moe(post_attention_layernorm(h))
      x = x.map((r) => add(r, this.moe(l, layer, rmsnorm(r, layer.postNorm, c.rmsNormEps))));
    }
    const rows = opts?.lastOnly ? x.slice(-1) : x;
    // final norm, then lm_head: [T][V]
    return rows.map((r) => this.w.lmHead(rmsnorm(r, this.w.finalNorm, c.rmsNormEps)));
  }

  /** Causal GQA self-attention of T new tokens at positions start..start+T-1: [T][D]. */
  private attention(
    l: number,
    layer: Layer,
    h: Float64Array[],
    start: number,
  ): Float64Array[] {
    const { hiddenSize: D, numHeads: Hq, numKvHeads: Hkv, headDim: Dh } = this.w.c;
    const { rmsNormEps: eps, ropeTheta: theta } = this.w.c;
    const cache = this.caches[l];
    const group = Hq / Hkv; // query heads per kv head
    const scaling = 1 / Math.sqrt(Dh); // Dh^-0.5
    // q/k/v projections, per-head q_norm / k_norm, then RoPE: q [T][Hq*Dh], k v [T][Hkv*Dh]
    const qs = h.map((ht, t) => {
      const q = matvec(layer.q, ht, Hq * Dh, D);
      for (let hd = 0; hd < Hq; hd++) {
        const head = rmsnorm(q.subarray(hd * Dh, (hd + 1) * Dh), layer.qNorm, eps);
        rope(head, start + t, theta);
        q.set(head, hd * Dh);
      }
      return q;
    });
    for (let t = 0; t < h.length; t++) {
      const k = matvec(layer.k, h[t], Hkv * Dh, D);
      for (let hd = 0; hd < Hkv; hd++) {
        const head = rmsnorm(k.subarray(hd * Dh, (hd + 1) * Dh), layer.kNorm, eps);
        rope(head, start + t, theta);
        k.set(head, hd * Dh);
      }
      // append this token's k, v to the cache
      cache.k.push(k);
      cache.v.push(matvec(layer.v, h[t], Hkv * Dh, D));
    }
    return qs.map((q, t) => {
      const visible = start + t + 1; // causal: positions 0..start+t
      const heads = new Float64Array(Hq * Dh);
      for (let hd = 0; hd < Hq; hd++) {
        const kvHead = Math.floor(hd / group);
        // scores = q . k * Dh^-0.5 over visible positions, softmax
        const scores = new Float64Array(visible);
        for (let j = 0; j < visible; j++) {
          let s = 0;
          for (let d = 0; d < Dh; d++) s += q[hd * Dh + d] * cache.k[j][kvHead * Dh + d];
          scores[j] = s * scaling;
        }
        const probs = softmax(scores);
        // weighted sum of values
        for (let j = 0; j < visible; j++) {
          for (let d = 0; d < Dh; d++) heads[hd * Dh + d] += probs[j] * cache.v[j][kvHead * Dh + d];
        }
      }
      // o_proj: [D]
      return matvec(layer.o, heads, D, Hq * Dh);
    });
  }

  /** Sparse MoE of one token: router softmax, top-k, optional renormalise, weighted experts. */
  private moe(l: number, layer: Layer, x: Float64Array): Float64Array {
    const { hiddenSize: D, numExperts: E, topK: K, moeIntermediateSize: I } = this.w.c;
    // router probabilities over all experts: [E]
    const probs = softmax(matvec(layer.router, x, E, D));
    // top-k experts, highest probability first (ties: lower index first)
    const chosen = [...probs.keys()].sort((a, b) => probs[b] - probs[a] || a - b).slice(0, K);
    let weights = chosen.map((e) => probs[e]);
    if (this.w.c.normTopkProb) {
      const sum = weights.reduce((a, b) => a + b, 0);
      weights = weights.map((v) => v / sum);
    }
    // sum_k w_k * down(silu(gate x) * up x)
    const out = new Float64Array(D);
    chosen.forEach((e, k) => {
      const expert = this.w.expert(l, e);
      const gate = matvec(expert.gate, x, I, D);
      const up = matvec(expert.up, x, I, D);
      const act = gate.map((g, i) => silu(g) * up[i]);
      const y = matvec(expert.down, act, D, I);
      for (let d = 0; d < D; d++) out[d] += weights[k] * y[d];
    });
    return out;
  }

  truncate(length: number): void {
    if (!Number.isInteger(length) || length < 0 || length > this.length) {
      throw new ReferenceInputError(`cannot truncate a ${this.length}-token session to ${length}`);
    }
    for (const cache of this.caches) {
      cache.k.length = length;
      cache.v.length = length;
    }
  }

  free(): void {
    this.caches = this.caches.map(() => ({ k: [], v: [] }));
    this.freed = true;
  }
}

/** Opens a checkpoint directory (config.json + safetensors) as a float64 CPU model. */
export function openReferenceModel(
  dir: string,
  opts: ReferenceOptions = {},
): Promise<ReferenceModel> {
  const config = readReferenceConfig(dir);
  const tensors = CheckpointTensors.open(dir);
  const weights = new Weights(config, tensors, opts.cacheMaxElements ?? CACHE_MAX_ELEMENTS);
  const maxContext = opts.maxContext ?? config.maxPositionEmbeddings;
  return Promise.resolve({
    config,
    maxContext,
    newSession: () => new RefSession(weights, maxContext),
    close: () => tensors.close(),
  });
}

/**
 * Greedy decoding: feeds ids, then appends the argmax token n times (lowest id on ties), never
 * stopping early at EOS. Uses float64 logits when the session offers them.
 */
export async function greedy(model: LanguageModel, ids: number[], n: number): Promise<number[]> {
  const session = model.newSession();
  try {
    const out: number[] = [];
    let input = ids;
    for (let i = 0; i < n; i++) {
      const row = "forward64" in session
        ? (session as ReferenceSession).forward64(input, { lastOnly: true })[0]
        : (await session.forward(input, { lastOnly: true }))[0];
      let best = 0;
      for (let v = 1; v < row.length; v++) if (row[v] > row[best]) best = v;
      out.push(best);
      input = [best];
    }
    return out;
  } finally {
    session.free();
  }
}
