/**
 * Quantized and GGUF models through the commands a user runs: `main.ts pack --quant`, then
 * generate, audit and verify on the result; `--model file.gguf` for logits and audit.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { TINY, writeFixture } from "../weights/fixture.ts";
import { hfToGguf } from "./_gguf_writer.ts";
import { cli } from "./_cli.ts";

const DEFAULT_MODEL = new URL("../weights/default", import.meta.url).pathname;

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cli_quant_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("main.ts pack --quant q8_0 --quant-base q8_0 of the default model: generate runs, the same ids at a small --expert-cache-mib, audit and verify pass", async () => {
  await withTemp(async (dir) => {
    const out = join(dir, "q8");
    const p = await cli([
      "pack",
      "--in",
      DEFAULT_MODEL,
      "--out",
      out,
      "--quant",
      "q8_0",
      "--quant-base",
      "q8_0",
    ]);
    assert.equal(p.code, 0, p.stderr);
    const m = JSON.parse(await Deno.readTextFile(join(out, "manifest.json")));
    assert.equal(m.experts.parts.gate.dtype, "Q8_0");
    assert.equal(m.experts.parts.down.dtype, "Q8_0");
    assert.deepEqual(m.quantization, { experts: "Q8_0", base: "Q8_0", fallbacks: [] });
    const gen = ["generate", "--model", out, "--ids", "1,2,3", "--max-tokens", "12", "--json"];
    const all = await cli(gen);
    assert.equal(all.code, 0, all.stderr);
    const small = await cli([...gen, "--expert-cache-mib", "1"]);
    assert.equal(small.code, 0, small.stderr);
    assert.deepEqual(JSON.parse(small.stdout).ids, JSON.parse(all.stdout).ids);
    assert.ok(JSON.parse(small.stdout).stats.expertLoads > 0);
    const audit = await cli(["audit", "--model", out]);
    assert.equal(audit.code, 0, audit.stderr);
    assert.match(audit.stdout, /q_proj\.weight.*Q8_0/);
    const verify = await cli(["verify", "--model", out]);
    assert.equal(verify.code, 0, verify.stderr);
  });
});

Deno.test("main.ts pack --quant q4_k says which tensors fell back (the default model's down projections: Q5_0); a bad type is a usage error", async () => {
  await withTemp(async (dir) => {
    const p = await cli([
      "pack",
      "--in",
      DEFAULT_MODEL,
      "--out",
      join(dir, "q4k"),
      "--quant",
      "q4_k",
    ]);
    assert.equal(p.code, 0, p.stderr);
    assert.match(p.stdout, /down_proj.*Q5_0 instead of Q4_K/);
    const bad = await cli([
      "pack",
      "--in",
      DEFAULT_MODEL,
      "--out",
      join(dir, "x"),
      "--quant",
      "q3",
    ]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--quant q3/);
  });
});

Deno.test("main.ts logits --model file.gguf equals the HF checkpoint's logits; audit --model file.gguf lists every tensor", async () => {
  await withTemp(async (dir) => {
    const hf = join(dir, "hf");
    await writeFixture(hf, TINY);
    const [gguf] = await hfToGguf(hf, join(dir, "tiny.gguf"));
    const env = { MOE_PACK_CACHE: join(dir, "cache") };
    const ids = ["--ids", "3,17,42,7"];
    const a = await cli(["logits", "--model", gguf, ...ids], env);
    assert.equal(a.code, 0, a.stderr);
    const b = await cli(["logits", "--model", hf, ...ids], env);
    assert.equal(b.code, 0, b.stderr);
    assert.deepEqual(JSON.parse(a.stdout).logits, JSON.parse(b.stdout).logits);
    const audit = await cli(["audit", "--model", gguf]);
    assert.equal(audit.code, 0, audit.stderr);
    assert.match(audit.stdout, /model\.layers\.1\.mlp\.experts\.7\.down_proj\.weight/);
  });
});
