import assert from "node:assert/strict";
import { openCheckpoint } from "../src/checkpoint.ts";
import { toFloat64 } from "../src/dtype.ts";
import { loadWeights } from "../src/weights.ts";
import { type FixtureOptions, mulberry32, SMALL, TINY, writeFixture } from "../weights/fixture.ts";

async function withFixture(
  opts: FixtureOptions,
  fn: (dir: string) => Promise<void> | void,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "fixture_test_" });
  try {
    await writeFixture(dir, opts);
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function mean(xs: Float64Array): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

function std(xs: Float64Array): number {
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / xs.length);
}

Deno.test("mulberry32() is deterministic per seed and uniform in [0, 1)", () => {
  const a = mulberry32(42), b = mulberry32(42), c = mulberry32(43);
  const xs = Array.from({ length: 10000 }, () => a());
  assert.deepEqual(xs.slice(0, 5), Array.from({ length: 5 }, () => b()));
  assert.notEqual(xs[0], c());
  assert.ok(xs.every((x) => x >= 0 && x < 1));
  assert.ok(Math.abs(xs.reduce((s, x) => s + x, 0) / xs.length - 0.5) < 0.02);
});

Deno.test("writeFixture() writes identical bytes for a seed and different bytes for another", async () => {
  const read = async (opts: FixtureOptions) => {
    let bytes = new Uint8Array(0);
    await withFixture(opts, async (dir) => {
      bytes = await Deno.readFile(`${dir}/model.safetensors`);
    });
    return bytes;
  };
  const a = await read(TINY), b = await read(TINY), c = await read({ ...TINY, seed: 2 });
  assert.deepEqual(a, b);
  assert.equal(a.length, c.length);
  assert.notDeepEqual(a, c);
});

Deno.test("writeFixture() writes a real qwen3_moe config.json with head_dim != hidden/heads", async () => {
  await withFixture(SMALL, async (dir) => {
    const cfg = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    assert.deepEqual(cfg.architectures, ["Qwen3MoeForCausalLM"]);
    assert.equal(cfg.model_type, "qwen3_moe");
    assert.equal(cfg.torch_dtype, "float32");
    assert.equal(cfg.head_dim, 40);
    assert.notEqual(cfg.head_dim, cfg.hidden_size / cfg.num_attention_heads);
    assert.equal(cfg.eos_token_id, SMALL.vocab - 1);
    assert.equal(cfg.bos_token_id, SMALL.vocab - 2);
    const ckpt = openCheckpoint(dir);
    try {
      const c = ckpt.config;
      assert.deepEqual(
        [c.vocabSize, c.hiddenSize, c.numLayers, c.numHeads, c.numKvHeads, c.headDim],
        [512, 128, 3, 4, 2, 40],
      );
      assert.deepEqual([c.numExperts, c.topK, c.moeIntermediateSize], [16, 4, 64]);
    } finally {
      ckpt.close();
    }
  });
});

Deno.test("writeFixture() draws sane scales: norms near 1, matrices ~ N(0, 1/fan_in)", async () => {
  await withFixture(SMALL, (dir) => {
    const ckpt = openCheckpoint(dir);
    try {
      const w = loadWeights(ckpt).weights;
      const D = SMALL.hidden, I = SMALL.inter;
      const near = (x: number, want: number, tol: number, what: string) =>
        assert.ok(Math.abs(x - want) <= tol * want, `${what}: ${x} vs ${want}`);
      near(mean(toFloat64(w.finalNorm)), 1, 0.05, "final norm mean");
      near(mean(toFloat64(w.layers[2].qNorm)), 1, 0.1, "q_norm mean");
      near(std(toFloat64(w.embed)), 1, 0.05, "embed std");
      near(std(toFloat64(w.layers[1].q)), 1 / Math.sqrt(D), 0.1, "q std");
      near(std(toFloat64(w.layers[1].expert(7).down)), 1 / Math.sqrt(I), 0.1, "down std");
      near(std(toFloat64(w.layers[0].router)), 2.5 / Math.sqrt(D), 0.15, "router std");
    } finally {
      ckpt.close();
    }
  });
});

/**
 * Layer-0 routing of every token id, in float64: RMSNorm(embed[v]) * input_layernorm, router
 * logits, softmax, top-k. Returns how many tokens each expert receives.
 */
function routeAllTokens(dir: string): { counts: number[]; tokens: number; topK: number } {
  const ckpt = openCheckpoint(dir);
  try {
    const { weights: w, audit } = loadWeights(ckpt);
    const c = audit.config;
    const D = c.hiddenSize, E = c.numExperts;
    const embed = toFloat64(w.embed), norm = toFloat64(w.layers[0].inputNorm);
    const router = toFloat64(w.layers[0].router);
    const counts = new Array(E).fill(0);
    for (let v = 0; v < c.vocabSize; v++) {
      const x = embed.subarray(v * D, (v + 1) * D);
      const rms = Math.sqrt(x.reduce((a, b) => a + b * b, 0) / D + c.rmsNormEps);
      const logits = Array.from({ length: E }, (_, e) => {
        let s = 0;
        for (let i = 0; i < D; i++) s += router[e * D + i] * (x[i] / rms) * norm[i];
        return s;
      });
      // Softmax is monotonic: the top-k of the logits is the top-k of the probabilities.
      const top = logits.map((l, e) => [l, e]).sort((a, b) => b[0] - a[0]).slice(0, c.topK);
      for (const [, e] of top) counts[e]++;
    }
    return { counts, tokens: c.vocabSize, topK: c.topK };
  } finally {
    ckpt.close();
  }
}

Deno.test("writeFixture() routers spread tokens over experts (TINY and SMALL, layer 0)", async () => {
  for (const preset of [TINY, { ...SMALL, dtype: "BF16" as const }]) {
    await withFixture(preset, (dir) => {
      const { counts, tokens, topK } = routeAllTokens(dir);
      const used = counts.filter((n) => n > 0).length;
      // Every expert gets tokens and none takes most of them (uniform share is topK/E).
      assert.equal(used, preset.experts, `experts used: ${counts}`);
      assert.ok(Math.max(...counts) < tokens / 2, `busiest expert: ${counts}`);
      assert.ok(Math.min(...counts) > (tokens * topK) / preset.experts / 4, `idlest: ${counts}`);
    });
  }
});

Deno.test("fixture.ts CLI writes a loadable sharded Omni BF16 fused checkpoint", async () => {
  const dir = await Deno.makeTempDir({ prefix: "fixture_cli_test_" });
  try {
    const script = new URL("../weights/fixture.ts", import.meta.url).pathname;
    const args = ["run", "-A", script, "--out", dir, "--preset", "TINY", "--dtype", "BF16"];
    const out = await new Deno.Command(Deno.execPath(), {
      args: [...args, "--shards", "2", "--omni", "--fused"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const ckpt = openCheckpoint(dir);
    try {
      const { weights, audit } = loadWeights(ckpt);
      assert.equal(ckpt.files.length, 2);
      assert.equal(weights.config.tensorPrefix, "thinker.");
      assert.equal(weights.embed.dtype, "BF16");
      assert.equal(audit.skipped.length, 5);
      assert.ok(audit.used.some((u) => u.name.endsWith("mlp.experts.gate_up_proj")));
    } finally {
      ckpt.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
