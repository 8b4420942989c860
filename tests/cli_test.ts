/**
 * The commands acceptance checks call, run as subprocesses exactly as a user would:
 * `main.ts logits`, `main.ts generate --json`, `main.ts audit`, `main.ts pack`.
 */
import assert from "node:assert/strict";
import { TINY, writeFixture } from "../weights/fixture.ts";
import { greedy, openReferenceModel } from "../src/reference/model.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

async function cli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-webgpu", MAIN, ...args],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function withDirs(fn: (model: string, cache: string) => Promise<void>, opts = TINY) {
  const model = await Deno.makeTempDir({ prefix: "cli_model_" });
  const cache = await Deno.makeTempDir({ prefix: "cli_cache_" });
  try {
    await writeFixture(model, opts);
    await fn(model, cache);
  } finally {
    await Deno.remove(model, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
}

Deno.test("main.ts logits prints one JSON row per position matching the reference", async () => {
  await withDirs(async (model, cache) => {
    const ids = [3, 17, 42];
    const r = await cli(["logits", "--model", model, "--ids", ids.join(",")], {
      MOE_PACK_CACHE: cache,
    });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /packing it once/);
    const json = JSON.parse(r.stdout);
    assert.deepEqual(json.ids, ids);
    assert.equal(json.logits.length, 3);
    const want = (await openReferenceModel(model)).newSession().forward64(ids);
    for (let t = 0; t < ids.length; t++) {
      assert.equal(json.logits[t].length, TINY.vocab);
      for (let v = 0; v < TINY.vocab; v++) {
        assert.ok(Math.abs(json.logits[t][v] - want[t][v]) <= 1e-4, `logit [${t}][${v}]`);
      }
    }
    // the second run reuses the packed copy, and a tiny budget gives the same numbers
    const again = await cli(
      ["logits", "--model", model, "--ids", ids.join(","), "--expert-slots", String(TINY.topK)],
      { MOE_PACK_CACHE: cache },
    );
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, /using its packed copy/);
    assert.deepEqual(JSON.parse(again.stdout), json);
  }, { ...TINY, dtype: "BF16" });
});

Deno.test("main.ts generate --json prints the reference's greedy continuation", async () => {
  await withDirs(async (model, cache) => {
    const ids = [3, 17, 42];
    const r = await cli(
      [
        "generate",
        "--model",
        model,
        "--ids",
        "3,17,42",
        "--max-tokens",
        "16",
        "--temperature",
        "0",
        "--json",
      ],
      { MOE_PACK_CACHE: cache },
    );
    assert.equal(r.code, 0, r.stderr);
    const ref = await openReferenceModel(model);
    const want = await greedy(ref, ids, 16);
    const eos = new Set(ref.config.eosTokenIds);
    const stop = want.findIndex((t) => eos.has(t));
    const out = JSON.parse(r.stdout);
    const kept = stop < 0 ? want : want.slice(0, stop + 1);
    assert.deepEqual(out.ids, kept);
    // stats of the decode steps: every token after the first, all experts resident
    assert.equal(out.stats.tokens, kept.length - 1);
    assert.equal(out.stats.expertLoads, 0);
    assert.ok(out.stats.readbacks >= 1 && out.stats.readbacks <= out.stats.tokens);
    assert.ok(out.stats.submits >= out.stats.readbacks && out.stats.ms > 0);
  });
});

Deno.test("main.ts generate --steps-per-readback 1 and the smallest budget give the same ids, one readback per token and loads", async () => {
  const base = ["generate", "--ids", "5,6,7", "--max-tokens", "24", "--json"];
  const adaptive = JSON.parse((await cli(base)).stdout);
  const one = await cli([...base, "--steps-per-readback", "1"]);
  assert.equal(one.code, 0, one.stderr);
  const r1 = JSON.parse(one.stdout);
  assert.deepEqual(r1.ids, adaptive.ids);
  assert.equal(r1.stats.readbacks, r1.stats.tokens);
  assert.equal(r1.stats.submits, r1.stats.tokens);
  assert.ok(adaptive.stats.readbacks < adaptive.stats.tokens);
  const budget = JSON.parse((await cli([...base, "--expert-slots", "4"])).stdout);
  assert.deepEqual(budget.ids, adaptive.ids);
  assert.ok(budget.stats.expertLoads > 0);
  const bad = await cli([...base, "--steps-per-readback", "0"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--steps-per-readback/);
});

Deno.test("main.ts generate without --model runs the embedded default model", async () => {
  const r = await cli(["generate", "--ids", "1,2,3", "--max-tokens", "4", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const ids = JSON.parse(r.stdout).ids;
  assert.ok(Array.isArray(ids) && ids.length >= 1 && ids.length <= 4);
});

Deno.test("main.ts audit lists used tensors and skipped Omni towers", async () => {
  await withDirs(async (model) => {
    const r = await cli(["audit", "--model", model]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /thinker\.model\.layers\.1\.self_attn\.q_norm\.weight/);
    assert.match(r.stdout, /thinker\.audio_tower\./);
    assert.match(r.stdout, /skipped/);
  }, { ...TINY, omni: true });
});

Deno.test("main.ts audit fails naming a tensor of the wrong shape", async () => {
  await withDirs(async (model) => {
    const path = `${model}/config.json`;
    const config = JSON.parse(await Deno.readTextFile(path));
    config.head_dim = 28; // q_proj etc. no longer match
    await Deno.writeTextFile(path, JSON.stringify(config));
    const r = await cli(["audit", "--model", model]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /self_attn\.q_proj\.weight/);
  });
});

Deno.test("main.ts rejects bad flags with usage and exit 2", async () => {
  const r = await cli(["logits", "--ids", "1,x"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /not a non-negative integer/);
  const u = await cli(["nope"]);
  assert.equal(u.code, 2);
});

Deno.test("main.ts generate works without FFI (the read fallback a compiled binary uses)", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-env",
      "--allow-write",
      "--unstable-webgpu",
      MAIN,
      "generate",
      "--ids",
      "1,2,3",
      "--max-tokens",
      "4",
      "--json",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const withFfi = await cli(["generate", "--ids", "1,2,3", "--max-tokens", "4", "--json"]);
  const dec = new TextDecoder();
  assert.equal(out.code, 0, dec.decode(out.stderr));
  assert.deepEqual(JSON.parse(dec.decode(out.stdout)).ids, JSON.parse(withFfi.stdout).ids);
});
