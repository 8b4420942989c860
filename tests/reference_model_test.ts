/**
 * The CPU float64 reference (src/reference/model.ts) against the independent torch reference
 * (tools/torch_reference.py, logits stored in tests/fixtures/torch_reference_*.json), and
 * against itself: prefill equals token-by-token decode, fused experts equal per-expert tensors.
 */

import assert from "node:assert/strict";
import { greedy, openReferenceModel, type ReferenceModel } from "../src/reference/model.ts";

/** f64 math on both sides, only the summation order differs. */
const TORCH_TOLERANCE = 1e-9;
/** Same code, prefill vs decode only changes which rows are computed together. */
const DECODE_TOLERANCE = 1e-12;

// ---------------------------------------------------------------------------------------------
// a tiny checkpoint written by this test (seeded), independent of weights/fixture.ts

interface TinyOptions {
  fused?: boolean;
  shards?: number;
  omni?: boolean;
  tie?: boolean;
}

const TINY = {
  vocab_size: 48,
  hidden_size: 16,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 8,
  num_experts: 6,
  num_experts_per_tok: 2,
  moe_intermediate_size: 12,
  norm_topk_prob: true,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  max_position_embeddings: 128,
};

/** mulberry32: a small deterministic PRNG, uniform in [0, 1). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Writes safetensors (F32) of `tensors` to path. */
function writeSafetensors(path: string, tensors: Map<string, [number[], Float32Array]>): void {
  const header: Record<string, unknown> = {};
  let offset = 0;
  for (const [name, [shape, data]] of tensors) {
    header[name] = { dtype: "F32", shape, data_offsets: [offset, offset + data.byteLength] };
    offset += data.byteLength;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const [, [, data]] of tensors) {
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), at);
    at += data.byteLength;
  }
  Deno.writeFileSync(path, out);
}

/** A seeded tiny Qwen3-MoE checkpoint; the same seed gives the same weights in every layout. */
function writeTiny(dir: string, opts: TinyOptions = {}): void {
  const c = TINY;
  const random = prng(1234);
  const p = opts.omni ? "thinker." : "";
  const tensors = new Map<string, [number[], Float32Array]>();
  const add = (name: string, shape: number[], center = 0, spread = 0.5) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = Float32Array.from({ length: n }, () => center + spread * (2 * random() - 1));
    tensors.set(name, [shape, data]);
    return data;
  };
  const { hidden_size: D, head_dim: Dh, moe_intermediate_size: I, num_experts: E } = c;
  add(`${p}model.embed_tokens.weight`, [c.vocab_size, D], 0, 1);
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const lp = `${p}model.layers.${l}.`;
    add(`${lp}input_layernorm.weight`, [D], 1, 0.2);
    add(`${lp}self_attn.q_proj.weight`, [c.num_attention_heads * Dh, D]);
    add(`${lp}self_attn.k_proj.weight`, [c.num_key_value_heads * Dh, D]);
    add(`${lp}self_attn.v_proj.weight`, [c.num_key_value_heads * Dh, D]);
    add(`${lp}self_attn.o_proj.weight`, [D, c.num_attention_heads * Dh]);
    add(`${lp}self_attn.q_norm.weight`, [Dh], 1, 0.2);
    add(`${lp}self_attn.k_norm.weight`, [Dh], 1, 0.2);
    add(`${lp}post_attention_layernorm.weight`, [D], 1, 0.2);
    add(`${lp}mlp.gate.weight`, [E, D]);
    const experts = Array.from({ length: E }, () => ({
      gate: add(`tmp.gate`, [I, D]),
      up: add(`tmp.up`, [I, D]),
      down: add(`tmp.down`, [D, I]),
    }));
    for (const t of ["tmp.gate", "tmp.up", "tmp.down"]) tensors.delete(t);
    if (opts.fused) {
      // gate_up_proj [E, 2I, D]: gate rows then up rows; down_proj [E, D, I]
      const gateUp = new Float32Array(E * 2 * I * D);
      const down = new Float32Array(E * D * I);
      experts.forEach((x, e) => {
        gateUp.set(x.gate, e * 2 * I * D);
        gateUp.set(x.up, e * 2 * I * D + I * D);
        down.set(x.down, e * D * I);
      });
      tensors.set(`${lp}mlp.experts.gate_up_proj`, [[E, 2 * I, D], gateUp]);
      tensors.set(`${lp}mlp.experts.down_proj`, [[E, D, I], down]);
    } else {
      experts.forEach((x, e) => {
        tensors.set(`${lp}mlp.experts.${e}.gate_proj.weight`, [[I, D], x.gate]);
        tensors.set(`${lp}mlp.experts.${e}.up_proj.weight`, [[I, D], x.up]);
        tensors.set(`${lp}mlp.experts.${e}.down_proj.weight`, [[D, I], x.down]);
      });
    }
  }
  add(`${p}model.norm.weight`, [D], 1, 0.2);
  if (!opts.tie) add(`${p}lm_head.weight`, [c.vocab_size, D]);

  const text = { ...c, model_type: "qwen3_moe", tie_word_embeddings: opts.tie === true };
  const config = opts.omni
    ? { model_type: "qwen3_omni_moe", thinker_config: { text_config: text } }
    : text;
  Deno.writeTextFileSync(`${dir}/config.json`, JSON.stringify(config));
  const shards = opts.shards ?? 1;
  if (shards === 1) return writeSafetensors(`${dir}/model.safetensors`, tensors);
  const names = [...tensors.keys()];
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file = `model-${s + 1}-of-${shards}.safetensors`;
    const part = new Map(names.filter((_, i) => i % shards === s).map((n) => [n, tensors.get(n)!]));
    for (const n of part.keys()) weightMap[n] = file;
    writeSafetensors(`${dir}/${file}`, part);
  }
  Deno.writeTextFileSync(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  );
}

async function withTiny<T>(
  opts: TinyOptions,
  body: (model: ReferenceModel, dir: string) => Promise<T>,
): Promise<T> {
  const dir = Deno.makeTempDirSync({ prefix: "reference_model_test_" });
  try {
    writeTiny(dir, opts);
    const model = await openReferenceModel(dir);
    try {
      return await body(model, dir);
    } finally {
      model.close();
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

function maxAbsDiff(a: ArrayLike<number>[], b: ArrayLike<number>[]): number {
  assert.equal(a.length, b.length);
  let max = 0;
  a.forEach((row, r) => {
    assert.equal(row.length, b[r].length);
    for (let i = 0; i < row.length; i++) max = Math.max(max, Math.abs(row[i] - b[r][i]));
  });
  return max;
}

const PROMPT = [3, 17, 42, 0, 47, 9, 9, 31, 5, 12];

// ---------------------------------------------------------------------------------------------

Deno.test("Session.forward64() prefill of N tokens equals token-by-token decode within 1e-12", async () => {
  await withTiny({}, (model) => {
    const prefill = model.newSession().forward64(PROMPT);
    const decode = model.newSession();
    const rows = PROMPT.map((id) => decode.forward64([id])[0]);
    const diff = maxAbsDiff(prefill, rows);
    assert.ok(diff <= DECODE_TOLERANCE, `prefill vs decode max abs diff ${diff}`);
    assert.equal(decode.length, PROMPT.length);
    return Promise.resolve();
  });
});

Deno.test("Session.truncate() then re-forward reproduces the dropped positions' logits", async () => {
  await withTiny({}, (model) => {
    const session = model.newSession();
    const full = session.forward64(PROMPT);
    session.truncate(4);
    const again = session.forward64(PROMPT.slice(4));
    assert.ok(maxAbsDiff(full.slice(4), again) <= DECODE_TOLERANCE);
    return Promise.resolve();
  });
});

Deno.test("openReferenceModel() gives identical logits for per-expert, fused, sharded and Omni layouts", async () => {
  const base = await withTiny({}, (m) => Promise.resolve(m.newSession().forward64(PROMPT)));
  for (const opts of [{ fused: true }, { shards: 3 }, { omni: true, fused: true, shards: 2 }]) {
    const other = await withTiny(opts, (m) => Promise.resolve(m.newSession().forward64(PROMPT)));
    assert.equal(maxAbsDiff(base, other), 0, JSON.stringify(opts));
  }
});

/** The live torch comparison needs Debian's python3-torch; the stored fixtures do not. */
const TORCH_AVAILABLE = new Deno.Command("/usr/bin/python3", { args: ["-c", "import torch"] })
  .outputSync().success;

Deno.test({
  name:
    "openReferenceModel() matches tools/torch_reference.py on a self-written checkpoint within 1e-9",
  ignore: !TORCH_AVAILABLE,
}, async () => {
  for (const opts of [{}, { fused: true, omni: true, tie: true }]) {
    await withTiny(opts, async (model, dir) => {
      const torch = new Deno.Command("/usr/bin/python3", {
        args: [
          "tools/torch_reference.py",
          "--model",
          dir,
          "--ids",
          PROMPT.join(","),
          "--generate",
          "8",
        ],
      }).outputSync();
      assert.ok(torch.success, new TextDecoder().decode(torch.stderr));
      const expected = JSON.parse(new TextDecoder().decode(torch.stdout));
      const logits = model.newSession().forward64(PROMPT);
      const diff = maxAbsDiff(logits, expected.logits);
      console.log(`torch vs TS reference ${JSON.stringify(opts)}: max abs diff ${diff}`);
      assert.ok(diff <= TORCH_TOLERANCE, `max abs diff ${diff}`);
      assert.deepEqual(await greedy(model, PROMPT, 8), expected.generated);
    });
  }
});
