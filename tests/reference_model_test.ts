/**
 * The CPU float64 reference (src/reference/model.ts) against the independent torch reference
 * (tools/torch_reference.py; logits stored in tests/fixtures/torch_reference_*.json by
 * tools/make_torch_fixtures.sh) on the same weights/fixture.ts checkpoints, rebuilt here from the
 * options each fixture records; and against itself: prefill equals token-by-token decode, and
 * every checkpoint layout (shards, Omni nesting, fused experts) gives the same logits.
 */

import assert from "node:assert/strict";
import {
  greedy,
  openReferenceModel,
  type ReferenceModel,
  type ReferenceOptions,
} from "../src/reference/model.ts";
import { type FixtureOptions, PRESETS, writeFixture } from "../weights/fixture.ts";
import type { FloatDType } from "../src/types.ts";
import { readConfig } from "../src/config.ts";

/** Both sides compute in float64; only summation order differs (observed ~1e-14). */
const TORCH_TOLERANCE = 1e-9;
/** Prefill and decode run the same float64 math on different row groupings. */
const DECODE_TOLERANCE = 1e-12;
const FIXTURE_DIR = new URL("./fixtures/", import.meta.url);
const FIXTURE_NAMES = [
  "tiny_f32",
  "tiny_bf16",
  "small_bf16",
  "omni_tiny_bf16",
  "tiny_f16_fused_tied",
];

/** One stored torch run: logits rows of `positions` of `ids`, then greedy tokens. */
interface TorchCase {
  ids: number[];
  positions: number[];
  logits: number[][];
  generated: number[];
}

interface TorchFixture {
  fixture: {
    preset: string;
    dtype: FloatDType;
    shards: number;
    omni: boolean;
    fusedExperts: boolean;
    tieEmbeddings: boolean;
  };
  cases: TorchCase[];
}

/** Writes the fixture checkpoint of `opts` to a temp dir and runs body on its reference model. */
async function withModel<T>(
  opts: FixtureOptions,
  body: (model: ReferenceModel, dir: string) => Promise<T> | T,
  referenceOptions: ReferenceOptions = {},
): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "reference_model_test_" });
  try {
    await writeFixture(dir, opts);
    const model = await openReferenceModel(dir, referenceOptions);
    try {
      return await body(model, dir);
    } finally {
      model.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function maxAbsDiff(a: ArrayLike<number>[], b: ArrayLike<number>[]): number {
  assert.equal(a.length, b.length, "row count");
  let max = 0;
  a.forEach((row, r) => {
    assert.equal(row.length, b[r].length, "row length");
    for (let i = 0; i < row.length; i++) max = Math.max(max, Math.abs(row[i] - b[r][i]));
  });
  return max;
}

for (const name of FIXTURE_NAMES) {
  Deno.test(`openReferenceModel() matches torch logits and greedy tokens within 1e-9: ${name}`, async () => {
    const stored: TorchFixture = JSON.parse(
      await Deno.readTextFile(new URL(`torch_reference_${name}.json`, FIXTURE_DIR)),
    );
    const f = stored.fixture;
    const opts: FixtureOptions = { ...PRESETS[f.preset], ...f };
    await withModel(opts, async (model) => {
      let worst = 0;
      for (const c of stored.cases) {
        const rows = model.newSession().forward64(c.ids);
        const diff = maxAbsDiff(c.positions.map((p) => rows[p]), c.logits);
        assert.ok(diff <= TORCH_TOLERANCE, `${c.ids.length} tokens: max abs diff ${diff}`);
        worst = Math.max(worst, diff);
        if (c.generated.length > 0) {
          assert.deepEqual(await greedy(model, c.ids, c.generated.length), c.generated);
        }
      }
      console.log(`${name}: max |TS - torch| = ${worst}`);
    });
  });
}

Deno.test("Session.forward64() prefill of 24 tokens equals token-by-token decode within 1e-12", async () => {
  await withModel({ ...PRESETS.TINY, dtype: "BF16" }, (model) => {
    const ids = Array.from({ length: 24 }, (_, i) => (5 + 13 * i) % model.config.vocabSize);
    const prefill = model.newSession().forward64(ids);
    const decode = model.newSession();
    const steps = ids.map((id) => decode.forward64([id])[0]);
    const diff = maxAbsDiff(prefill, steps);
    console.log(`prefill vs decode: max abs diff ${diff}`);
    assert.ok(diff <= DECODE_TOLERANCE, `max abs diff ${diff}`);
    assert.equal(decode.length, ids.length);
  });
});

Deno.test("Session.truncate() then forward64() reproduces the dropped positions' logits within 1e-12", async () => {
  await withModel(PRESETS.TINY, (model) => {
    const ids = [11, 250, 3, 97, 42, 42, 180, 7];
    const session = model.newSession();
    const full = session.forward64(ids);
    session.truncate(3);
    assert.equal(session.length, 3);
    const again = session.forward64(ids.slice(3));
    assert.ok(maxAbsDiff(full.slice(3), again) <= DECODE_TOLERANCE);
  });
});

Deno.test("Session.forward() returns the float64 logits rounded to float32, lastOnly the last row", async () => {
  await withModel(PRESETS.TINY, async (model) => {
    const ids = [9, 8, 7];
    const rows64 = model.newSession().forward64(ids);
    const last = await model.newSession().forward(ids, { lastOnly: true });
    assert.equal(last.length, 1);
    assert.deepEqual(Array.from(last[0]), Array.from(rows64[2], Math.fround));
  });
});

Deno.test("openReferenceModel() gives bit-identical logits for sharded, Omni and fused layouts", async () => {
  const ids = [1, 2, 3, 200, 299, 150];
  const base = await withModel(PRESETS.TINY, (m) => m.newSession().forward64(ids));
  const layout = { ...PRESETS.TINY, shards: 3, omni: true, fusedExperts: true };
  const other = await withModel(layout, (m) => m.newSession().forward64(ids));
  assert.equal(maxAbsDiff(base, other), 0);
});

Deno.test("openReferenceModel() with no weight cache (streamed from disk) gives bit-identical logits", async () => {
  const ids = [4, 44, 144, 244];
  const cached = await withModel(PRESETS.TINY, (m) => m.newSession().forward64(ids));
  const streamed = await withModel(
    { ...PRESETS.TINY, fusedExperts: true },
    (m) => m.newSession().forward64(ids),
    { cacheMaxElements: 0 },
  );
  assert.equal(maxAbsDiff(cached, streamed), 0);
});

Deno.test("readReferenceConfig() and the production readConfig() agree on plain and Omni fixtures", async () => {
  for (const opts of [PRESETS.SMALL, { ...PRESETS.TINY, omni: true, tieEmbeddings: true }]) {
    await withModel(opts, (model, dir) => assert.deepEqual(model.config, readConfig(dir)));
  }
});
