/**
 * The commands acceptance checks call, run as subprocesses exactly as a user would:
 * `main.ts logits`, `main.ts generate --json`, `main.ts audit`, `main.ts pack`.
 */
import assert from "node:assert/strict";
import { TINY, writeFixture } from "../weights/fixture.ts";
import { greedy, openReferenceModel } from "../src/reference/model.ts";
import { intFlag, numberFlag, parseIds, UsageError } from "../src/cli/args.ts";
import { GENERATE_SPEC } from "../src/cli/generate.ts";
import { LOGITS_SPEC } from "../src/cli/logits.ts";
import { PACK_SPEC } from "../src/cli/pack.ts";
import { SERVE_SPEC } from "../src/server/cli.ts";
import { cli, MAIN } from "./_cli.ts";

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
  // the model-aware policy, made once the model's layers and experts are known: same ids
  const model = await cli([...base, "--expert-slots", "24", "--policy", "model"]);
  assert.equal(model.code, 0, model.stderr);
  assert.deepEqual(JSON.parse(model.stdout).ids, adaptive.ids);
  const badPolicy = await cli([...base, "--policy", "belady"]);
  assert.equal(badPolicy.code, 2);
  assert.match(badPolicy.stderr, /--policy/);
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

Deno.test("parseIds() and the number flags take decimal digits only: no empty items, hex, exponents or Infinity", () => {
  assert.deepEqual(parseIds("3,17, 42"), [3, 17, 42]);
  for (
    const bad of [
      "3,,4",
      "3,",
      ",3",
      "0x10",
      "1e3",
      "+3",
      "-1",
      "3.0",
      "Infinity",
      " ",
      "9007199254740993",
    ]
  ) {
    assert.throws(() => parseIds(bad), UsageError, bad);
  }
  const flags = (v: string) => ({ x: v });
  assert.equal(numberFlag(flags("0.7"), "x", 0), 0.7);
  assert.equal(numberFlag(flags(".5"), "x", 0), 0.5);
  assert.equal(numberFlag(flags("-1e-3"), "x", 0), -0.001);
  for (const bad of ["Infinity", "-Infinity", "NaN", "0x10", "", "1,5", "1e999", "0b1"]) {
    assert.throws(() => numberFlag(flags(bad), "x", 0), UsageError, bad);
  }
  assert.equal(intFlag(flags("16"), "x", 0, 1), 16);
  for (const bad of ["0x10", "1e1", "16.0", "Infinity", "0", "99999999999999999999"]) {
    assert.throws(() => intFlag(flags(bad), "x", 0, 1), UsageError, bad);
  }
  assert.equal(intFlag({}, "x", 7, 1), 7);
});

Deno.test("main.ts generate checks --ids and numeric flags before loading any model", async () => {
  const missing = "/nonexistent/model/dir";
  const cases: [string[], RegExp][] = [
    [["--ids", "3,,4"], /--ids: "" is not a non-negative integer/],
    [["--ids", "0x10"], /--ids: "0x10"/],
    [["--ids", "1", "--temperature", "Infinity"], /--temperature: "Infinity"/],
    [["--ids", "1", "--max-tokens", "1e2"], /--max-tokens: "1e2"/],
    [["--ids", "1", "--expert-cache-mib", "Infinity"], /--expert-cache-mib: "Infinity"/],
    [["--ids", "1", "--max-context", "0x100"], /--max-context: "0x100"/],
  ];
  for (const [args, message] of cases) {
    const t0 = performance.now();
    const r = await cli(["generate", "--model", missing, ...args]);
    assert.equal(r.code, 2, `${args}: ${r.stderr}`);
    assert.match(r.stderr, message);
    assert.doesNotMatch(r.stderr, /nonexistent/, "no model was opened"); // the flag failed first
    console.error(
      `  generate ${args.join(" ")}: exit 2 in ${(performance.now() - t0).toFixed(0)} ms`,
    );
  }
  const serve = await cli(["serve", "--model", missing, "--port", "0x50"]);
  assert.equal(serve.code, 2);
  assert.match(serve.stderr, /--port: "0x50"/);
});

Deno.test("every main.ts command answers --help on stdout with exit 0, listing all its flags", async () => {
  const specs = [GENERATE_SPEC, LOGITS_SPEC, PACK_SPEC, SERVE_SPEC];
  for (const spec of specs) {
    const r = await cli([spec.name, "--help"]);
    assert.equal(r.code, 0, `${spec.name}: ${r.stderr}`);
    assert.match(r.stdout, new RegExp(`^usage: main\\.ts ${spec.name} `));
    for (const flag of spec.flags) {
      assert.match(
        r.stdout,
        new RegExp(`--${flag.name}\\b`),
        `${spec.name} --help: --${flag.name}`,
      );
    }
    assert.doesNotMatch(r.stderr, /Unknown option/);
  }
  for (const name of ["audit", "verify"]) {
    const r = await cli([name, "-h"]);
    assert.equal(r.code, 0, `${name}: ${r.stderr}`);
    assert.match(r.stdout, /--model/);
  }
  const top = await cli(["--help"]);
  assert.equal(top.code, 0);
  for (const name of ["audit", "logits", "generate", "serve", "pack", "verify"]) {
    assert.match(top.stdout, new RegExp(`^  ${name} `, "m"), name);
  }
  const serveFlags = SERVE_SPEC.flags.map((f) => f.name);
  for (const flag of ["allowed-host", "cors-origin", "api-key-all", "expert-cache-mib", "policy"]) {
    assert.ok(serveFlags.includes(flag), flag);
  }
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

Deno.test("main.ts generate: the context advice works (--max-context when the model allows it, else fewer tokens)", async () => {
  const over = await cli(["generate", "--ids", "1,2", "--max-tokens", "5000"]);
  assert.equal(over.code, 2);
  assert.match(over.stderr, /maximum is 2048 positions: lower --max-tokens to at most 2046/);
  const r = await cli(["generate", "--ids", "1,2", "--max-tokens", "5000", "--max-context", "64"]);
  assert.match(r.stderr, /pass --max-context|lower --max-tokens/);
  const advised = await cli([
    "generate",
    "--ids",
    "1,2",
    "--max-tokens",
    "100",
    "--max-context",
    "64",
  ]);
  assert.match(advised.stderr, /pass --max-context 102/);
  const followed = await cli([
    "generate",
    "--ids",
    "1,2",
    "--max-tokens",
    "100",
    "--max-context",
    "102",
    "--json",
  ]);
  assert.equal(followed.code, 0, followed.stderr);
});

Deno.test("--policy defaults to the model-aware policy and builds each named policy for the model", async () => {
  const { runtimeOptions, DEFAULT_POLICY } = await import("../src/cli/runtime.ts");
  const grid = { numLayers: 6, numExperts: 16 };
  assert.equal(DEFAULT_POLICY, "model");
  assert.match(runtimeOptions({}, 64).policy(grid).name, /^model/);
  assert.equal(runtimeOptions({ policy: "lru" }, 64).policy(grid).name, "lru");
  assert.match(runtimeOptions({ policy: "lrfu:0.05" }, 64).policy(grid).name, /^lrfu/);
  assert.throws(() => runtimeOptions({ policy: "belady" }, 64), /--policy/);
});

Deno.test("the load cap is on unless --no-load-cap; --no-prefetch is separate", async () => {
  const { runtimeOptions, RUNTIME_BOOLEAN_FLAGS } = await import("../src/cli/runtime.ts");
  assert.ok(RUNTIME_BOOLEAN_FLAGS.includes("no-load-cap"));
  assert.equal(runtimeOptions({}, 64).loadCap, true);
  assert.equal(runtimeOptions({ "no-load-cap": true }, 64).loadCap, false);
  assert.equal(runtimeOptions({ "no-load-cap": true }, 64).prefetch, true);
  assert.equal(runtimeOptions({ "no-prefetch": true }, 64).loadCap, true);
});
