/**
 * The Qwen3-MoE tensor table (name templates with expected shapes, as in llama.cpp's arch tables)
 * and the loader that turns a Checkpoint into ModelWeights. Every needed tensor is checked (present,
 * shape, dtype) before anything is returned, and every checkpoint tensor is accounted for in the
 * audit: used, or skipped with a reason.
 *
 * Experts come in two layouts, both read without copying:
 * - per expert (what checkpoints on disk hold):
 *   {p}model.layers.{l}.mlp.experts.{e}.gate_proj.weight [I, D], up_proj [I, D], down_proj [D, I]
 * - fused (transformers 5.x, modeling_qwen3_moe.py Qwen3MoeExperts):
 *   {p}model.layers.{l}.mlp.experts.gate_up_proj [E, 2I, D] and .down_proj [E, D, I], used as
 *   `gate, up = linear(x, gate_up_proj[e]).chunk(2, dim=-1)`: rows [0, I) of expert e are gate,
 *   rows [I, 2I) are up, both [I, D] row-major; down_proj[e] is [D, I]. Each is a contiguous byte
 *   range of the fused tensor, so expert views are subarrays (no transpose is needed).
 */

import type { Checkpoint, CheckpointEntry } from "./checkpoint.ts";
import { tensorBytes } from "./dtype.ts";
import type {
  ExpertWeights,
  LayerWeights,
  ModelConfig,
  ModelWeights,
  TensorView,
} from "./types.ts";

/** Thrown when the checkpoint lacks a needed tensor or has one of the wrong shape or dtype. */
export class WeightError extends Error {
  /** One line per problem, each naming its tensor. */
  readonly problems: string[];
  constructor(problems: string[], dir: string) {
    const shown = problems.slice(0, MAX_PROBLEMS_SHOWN);
    const more = problems.length - shown.length;
    super(
      `${dir}: ${problems.length} weight problem(s); the checkpoint does not match its ` +
        `config.json (re-download it or fix the config):\n  ` + shown.join("\n  ") +
        (more > 0 ? `\n  ... and ${more} more` : ""),
    );
    this.name = "WeightError";
    this.problems = problems;
  }
}

/** Long lists of missing experts would flood the terminal; the rest is counted. */
const MAX_PROBLEMS_SHOWN = 20;

/** One tensor in the audit. */
export interface AuditEntry {
  name: string;
  /** What the runtime uses it for ("layer.q", "expert.gate_up (fused)", ...), or why skipped. */
  role: string;
  shape: number[];
  dtype: string;
  /** Shard path. */
  file: string;
  bytes: number;
  /** Decoder layer, for layer tensors. */
  layer?: number;
}

/** What loadWeights used and skipped; every checkpoint tensor is in exactly one list. */
export interface AuditReport {
  dir: string;
  config: ModelConfig;
  used: AuditEntry[];
  skipped: AuditEntry[];
  usedBytes: number;
  skippedBytes: number;
  totalBytes: number;
  /** Shards with their sizes and how they were mapped ("mmap" or "read"). */
  files: { path: string; bytes: number; mode: string }[];
}

/** Shape expression of a table entry, evaluated against the config. */
type ShapeFn = (c: ModelConfig) => number[];

/** One tensor template: {p} is the tensor prefix, {l} the layer, {e} the expert. */
export interface TensorSpec {
  role: string;
  template: string;
  shape: ShapeFn;
  /** Shape written with the dimension legend of src/types.ts, for messages and docs. */
  legend: string;
}

const spec = (role: string, template: string, legend: string, shape: ShapeFn): TensorSpec => ({
  role,
  template,
  shape,
  legend,
});

/** Whole-model tensors. lm_head is absent (and unused) with tie_word_embeddings. */
export const GLOBAL_TENSORS = {
  embed: spec(
    "embed",
    "{p}model.embed_tokens.weight",
    "[V, D]",
    (c) => [c.vocabSize, c.hiddenSize],
  ),
  finalNorm: spec("final_norm", "{p}model.norm.weight", "[D]", (c) => [c.hiddenSize]),
  lmHead: spec("lm_head", "{p}lm_head.weight", "[V, D]", (c) => [c.vocabSize, c.hiddenSize]),
} as const;

const L = "{p}model.layers.{l}.";

/** Per-layer tensors other than the experts, keyed by their LayerWeights field. */
export const LAYER_TENSORS = {
  inputNorm: spec("layer.input_norm", L + "input_layernorm.weight", "[D]", (c) => [c.hiddenSize]),
  q: spec("layer.q", L + "self_attn.q_proj.weight", "[Hq*Dh, D]", (c) => [
    c.numHeads * c.headDim,
    c.hiddenSize,
  ]),
  k: spec("layer.k", L + "self_attn.k_proj.weight", "[Hkv*Dh, D]", (c) => [
    c.numKvHeads * c.headDim,
    c.hiddenSize,
  ]),
  v: spec("layer.v", L + "self_attn.v_proj.weight", "[Hkv*Dh, D]", (c) => [
    c.numKvHeads * c.headDim,
    c.hiddenSize,
  ]),
  o: spec("layer.o", L + "self_attn.o_proj.weight", "[D, Hq*Dh]", (c) => [
    c.hiddenSize,
    c.numHeads * c.headDim,
  ]),
  qNorm: spec("layer.q_norm", L + "self_attn.q_norm.weight", "[Dh]", (c) => [c.headDim]),
  kNorm: spec("layer.k_norm", L + "self_attn.k_norm.weight", "[Dh]", (c) => [c.headDim]),
  postAttentionNorm: spec(
    "layer.post_attention_norm",
    L + "post_attention_layernorm.weight",
    "[D]",
    (c) => [c.hiddenSize],
  ),
  router: spec(
    "layer.router",
    L + "mlp.gate.weight",
    "[E, D]",
    (c) => [c.numExperts, c.hiddenSize],
  ),
} as const;

/** Per-expert tensors (checkpoints on disk). */
export const EXPERT_TENSORS = {
  gate: spec("expert.gate", L + "mlp.experts.{e}.gate_proj.weight", "[I, D]", (c) => [
    c.moeIntermediateSize,
    c.hiddenSize,
  ]),
  up: spec("expert.up", L + "mlp.experts.{e}.up_proj.weight", "[I, D]", (c) => [
    c.moeIntermediateSize,
    c.hiddenSize,
  ]),
  down: spec("expert.down", L + "mlp.experts.{e}.down_proj.weight", "[D, I]", (c) => [
    c.hiddenSize,
    c.moeIntermediateSize,
  ]),
} as const;

/** Fused experts of transformers 5.x (see the module comment for the layout). */
export const FUSED_EXPERT_TENSORS = {
  gateUp: spec("experts.gate_up (fused)", L + "mlp.experts.gate_up_proj", "[E, 2I, D]", (c) => [
    c.numExperts,
    2 * c.moeIntermediateSize,
    c.hiddenSize,
  ]),
  down: spec("experts.down (fused)", L + "mlp.experts.down_proj", "[E, D, I]", (c) => [
    c.numExperts,
    c.hiddenSize,
    c.moeIntermediateSize,
  ]),
} as const;

/** Checkpoint tensors known to be harmless to skip, with the reason reported in the audit. */
const SKIPPABLE: { pattern: RegExp; reason: string }[] = [
  { pattern: /\.rotary_emb\.inv_freq$/, reason: "RoPE buffer (recomputed from rope_theta)" },
];

/** A template's name for a prefix, layer and expert. */
export function tensorName(template: string, prefix: string, layer = 0, expert = 0): string {
  return template.replace("{p}", prefix).replace("{l}", String(layer)).replace(
    "{e}",
    String(expert),
  );
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** A contiguous piece of t starting byteBegin bytes in (a row range of a row-major tensor). */
function rowSlice(
  t: TensorView,
  byteBegin: number,
  shape: number[],
  name: string,
): TensorView {
  const bytes = tensorBytes(t.dtype, shape);
  return {
    name,
    dtype: t.dtype,
    shape,
    bytes: t.bytes.subarray(byteBegin, byteBegin + bytes),
    file: t.file,
    offset: t.offset + byteBegin,
  };
}

/** Checks names against the table and collects views, problems and audit entries. */
class Loader {
  readonly problems: string[] = [];
  readonly used: AuditEntry[] = [];
  private readonly usedNames = new Set<string>();
  constructor(private readonly ckpt: Checkpoint) {}

  /** The tensor for a spec, checked; null (with a problem recorded) when unusable. */
  take(s: TensorSpec, layer?: number, expert?: number): TensorView | null {
    const c = this.ckpt.config;
    const name = tensorName(s.template, c.tensorPrefix, layer, expert);
    const entry = this.ckpt.entries.get(name);
    const want = s.shape(c);
    if (entry === undefined) {
      this.problems.push(`missing tensor ${name} (${s.role}, expected ${s.legend} = [${want}])`);
      return null;
    }
    this.usedNames.add(name);
    this.used.push(auditEntry(entry, s.role, layer));
    const view = this.ckpt.tensors.get(name);
    if (view === undefined) {
      this.problems.push(`tensor ${name} has dtype ${entry.dtype}; supported: F32, BF16, F16`);
      return null;
    }
    if (!sameShape(view.shape, want)) {
      this.problems.push(
        `tensor ${name} has shape [${view.shape}] but ${s.legend} = [${want}] was expected`,
      );
      return null;
    }
    return view;
  }

  has(s: TensorSpec, layer: number, expert = 0): boolean {
    const name = tensorName(s.template, this.ckpt.config.tensorPrefix, layer, expert);
    return this.ckpt.entries.has(name);
  }

  /** Every tensor not taken: skipped with a reason, or a problem when it belongs to the model. */
  leftovers(): AuditEntry[] {
    const c = this.ckpt.config;
    const textModel = `${c.tensorPrefix}model.`;
    const lmHead = tensorName(GLOBAL_TENSORS.lmHead.template, c.tensorPrefix);
    const skipped: AuditEntry[] = [];
    for (const [name, e] of this.ckpt.entries) {
      if (this.usedNames.has(name)) continue;
      const known = SKIPPABLE.find((s) => s.pattern.test(name));
      if (known !== undefined) {
        skipped.push(auditEntry(e, known.reason));
      } else if (name === lmHead) {
        skipped.push(auditEntry(e, "lm_head unused: tie_word_embeddings is true"));
      } else if (name.startsWith(textModel)) {
        // A text-model tensor the runtime does not know would be silently ignored: refuse.
        this.problems.push(
          `tensor ${name} belongs to the text model but this runtime has no use for it ` +
            `(an unsupported architecture feature?)`,
        );
        skipped.push(auditEntry(e, "UNKNOWN text-model tensor"));
      } else {
        skipped.push(auditEntry(e, "not part of the text model"));
      }
    }
    return skipped;
  }
}

function auditEntry(e: CheckpointEntry, role: string, layer?: number): AuditEntry {
  const out: AuditEntry = {
    name: e.name,
    role,
    shape: e.shape,
    dtype: e.dtype,
    file: e.file,
    bytes: e.end - e.begin,
  };
  if (layer !== undefined) out.layer = layer;
  return out;
}

/** Per-expert views of fused tensors (zero copy: row ranges of row-major tensors). */
function fusedExperts(gateUp: TensorView, down: TensorView, c: ModelConfig): ExpertWeights[] {
  const I = c.moeIntermediateSize, D = c.hiddenSize;
  const half = tensorBytes(gateUp.dtype, [I, D]), db = tensorBytes(down.dtype, [D, I]);
  const out: ExpertWeights[] = [];
  for (let e = 0; e < c.numExperts; e++) {
    const base = e * 2 * half;
    out.push({
      gate: rowSlice(gateUp, base, [I, D], `${gateUp.name}[${e}][0:${I}]`),
      up: rowSlice(gateUp, base + half, [I, D], `${gateUp.name}[${e}][${I}:${2 * I}]`),
      down: rowSlice(down, e * db, [D, I], `${down.name}[${e}]`),
    });
  }
  return out;
}

function loadLayer(ld: Loader, c: ModelConfig, l: number): LayerWeights | null {
  const t = {} as Record<keyof typeof LAYER_TENSORS, TensorView | null>;
  for (const key of Object.keys(LAYER_TENSORS) as (keyof typeof LAYER_TENSORS)[]) {
    t[key] = ld.take(LAYER_TENSORS[key], l);
  }
  let experts: ExpertWeights[] | null = [];
  const fused = ld.has(FUSED_EXPERT_TENSORS.gateUp, l) && !ld.has(EXPERT_TENSORS.gate, l, 0);
  if (fused) {
    const gateUp = ld.take(FUSED_EXPERT_TENSORS.gateUp, l);
    const down = ld.take(FUSED_EXPERT_TENSORS.down, l);
    experts = gateUp && down ? fusedExperts(gateUp, down, c) : null;
  } else {
    for (let e = 0; e < c.numExperts; e++) {
      const gate = ld.take(EXPERT_TENSORS.gate, l, e);
      const up = ld.take(EXPERT_TENSORS.up, l, e);
      const down = ld.take(EXPERT_TENSORS.down, l, e);
      if (gate && up && down && experts) experts.push({ gate, up, down });
      else experts = null;
    }
  }
  if (experts === null || Object.values(t).some((v) => v === null)) return null;
  const list = experts;
  return {
    ...(t as Record<keyof typeof LAYER_TENSORS, TensorView>),
    expert(e: number): ExpertWeights {
      const w = list[e];
      if (w === undefined) {
        throw new RangeError(`layer ${l} has experts 0..${c.numExperts - 1}; asked for ${e}`);
      }
      return w;
    },
  };
}

/**
 * Checks the checkpoint against the tensor table and returns zero-copy weights with the audit.
 * Throws WeightError naming every missing, misshaped or unsupported-dtype tensor, and every
 * text-model tensor the runtime would ignore.
 */
export function loadWeights(ckpt: Checkpoint): { weights: ModelWeights; audit: AuditReport } {
  const c = ckpt.config;
  const ld = new Loader(ckpt);
  const embed = ld.take(GLOBAL_TENSORS.embed);
  const layers: (LayerWeights | null)[] = [];
  for (let l = 0; l < c.numLayers; l++) layers.push(loadLayer(ld, c, l));
  const finalNorm = ld.take(GLOBAL_TENSORS.finalNorm);
  const lmHead = c.tieWordEmbeddings ? embed : ld.take(GLOBAL_TENSORS.lmHead);
  const skipped = ld.leftovers();
  if (ld.problems.length > 0 || !embed || !finalNorm || !lmHead || layers.some((x) => !x)) {
    throw new WeightError(ld.problems, ckpt.dir);
  }
  const sum = (xs: AuditEntry[]) => xs.reduce((a, x) => a + x.bytes, 0);
  const usedBytes = sum(ld.used), skippedBytes = sum(skipped);
  return {
    weights: { config: c, embed, layers: layers as LayerWeights[], finalNorm, lmHead },
    audit: {
      dir: ckpt.dir,
      config: c,
      used: ld.used,
      skipped,
      usedBytes,
      skippedBytes,
      totalBytes: usedBytes + skippedBytes,
      files: ckpt.files.map((f) => ({ path: f.path, bytes: f.file.size, mode: f.file.mode })),
    },
  };
}
