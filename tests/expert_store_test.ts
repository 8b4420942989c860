import assert from "node:assert/strict";
import { ExpertMetrics } from "../src/experts/metrics.ts";
import { ExpertChecksumError, ExpertStore, ExpertStoreError } from "../src/experts/store.ts";
import { openPacked } from "../src/packed_weights.ts";
import { EXPERTS_FILE, MANIFEST_FILE } from "../src/pack/format.ts";
import { ManifestError, readManifest } from "../src/pack/manifest.ts";
import { pack } from "../src/pack/pack.ts";
import { TINY, writeFixture } from "../weights/fixture.ts";

/** Packs a TINY fixture once per test file; tests copy it before damaging anything. */
const root = await Deno.makeTempDir({ prefix: "expert_store_test_" });
await writeFixture(`${root}/hf`, { ...TINY, dtype: "BF16" });
await pack(`${root}/hf`, `${root}/packed`);
const manifest = await readManifest(`${root}/packed`);
globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));

async function copyPacked(name: string): Promise<string> {
  const dir = `${root}/${name}`;
  await Deno.mkdir(dir);
  for (const e of Deno.readDirSync(`${root}/packed`)) {
    await Deno.copyFile(`${root}/packed/${e.name}`, `${dir}/${e.name}`);
  }
  return dir;
}

function flipByte(path: string, offset: number): void {
  const bytes = Deno.readFileSync(path);
  bytes[offset] ^= 0x01;
  Deno.writeFileSync(path, bytes);
}

for (const mode of [undefined, "pread"] as const) {
  Deno.test(`ExpertStore (${mode ?? "mmap"}): a flipped byte throws ExpertChecksumError naming layer, expert and file`, async () => {
    const dir = await copyPacked(`flip_${mode ?? "mmap"}`);
    const r = manifest.experts.records[1 * TINY.experts + 3];
    flipByte(`${dir}/${EXPERTS_FILE}`, r.offset + Math.floor(r.length / 2));
    const m = await openPacked(dir, { mode });
    try {
      assert.equal(m.experts.mode, mode ?? "mmap");
      const err = (() => {
        try {
          m.weights.layers[1].expert(3);
        } catch (e) {
          return e;
        }
      })();
      assert.ok(err instanceof ExpertChecksumError, `got ${err}`);
      assert.equal(err.layer, 1);
      assert.equal(err.expert, 3);
      assert.equal(err.file, `${dir}/${EXPERTS_FILE}`);
      assert.match(err.message, /layer 1 expert 3 in .*experts\.bin/);
      assert.throws(() => m.experts.record(1, 3), ExpertChecksumError); // never verified: again
      assert.equal(m.experts.record(1, 4).length, r.length); // neighbours are intact
    } finally {
      m.close();
    }
  });
}

Deno.test("ExpertStore: a flipped padding byte between records is not an error", async () => {
  const dir = await copyPacked("flip_padding");
  const r = manifest.experts.records[0];
  flipByte(`${dir}/${EXPERTS_FILE}`, r.offset + r.length); // first byte after record (0, 0)
  const m = await openPacked(dir);
  try {
    assert.equal(m.experts.record(0, 0).length, r.length);
  } finally {
    m.close();
  }
});

Deno.test("ExpertStore.record() verifies each record once and pread equals mmap bytes", async () => {
  const a = await openPacked(`${root}/packed`);
  const b = await openPacked(`${root}/packed`, { mode: "pread" });
  try {
    for (let l = 0; l < TINY.layers; l++) {
      for (let e = 0; e < TINY.experts; e++) {
        assert.deepEqual(a.experts.record(l, e), b.experts.record(l, e));
      }
    }
    a.experts.record(0, 0);
    const n = TINY.layers * TINY.experts;
    assert.equal(a.experts.stats.verified, n);
    assert.equal(a.experts.stats.reads, n + 1);
    assert.equal(b.experts.stats.verified, n);
    assert.equal(b.experts.isCached(0, 0), null); // pread: page state unknown
    assert.throws(() => a.experts.record(TINY.layers, 0), ExpertStoreError);
    assert.throws(() => a.experts.record(0, -1), ExpertStoreError);
  } finally {
    a.close();
    b.close();
  }
});

Deno.test("ExpertStore.read() is cold after dropPageCache() and warm on the next read", async () => {
  const metrics = new ExpertMetrics();
  const m = await openPacked(`${root}/packed`, { metrics });
  try {
    m.experts.record(0, 2); // verified and resident; its own class depends on earlier tests
    metrics.reset();
    assert.equal(m.experts.dropPageCache(), true);
    assert.equal(m.experts.isCached(0, 2), false);
    assert.equal(m.experts.read(0, 2).source, "cold");
    assert.equal(m.experts.isCached(0, 2), true);
    assert.equal(m.experts.read(0, 2).source, "warm");
    const s = metrics.snapshot();
    assert.equal(s.latency.cold.count, 1);
    assert.equal(s.latency.warm.count, 1);
  } finally {
    m.close();
  }
});

Deno.test("ExpertStore.readAhead() reads dropped records in the background, skips cached ones and keeps transient reads exact", async () => {
  const m = await openPacked(`${root}/packed`);
  const p = await openPacked(`${root}/packed`, { mode: "pread" });
  try {
    const E = TINY.experts;
    const keys = [0 * E + 1, 1 * E + 5, 0 * E + 6];
    const want = keys.map((k) => p.experts.record(Math.floor(k / E), k % E).slice());
    assert.equal(m.experts.dropPageCache(), true);
    assert.ok(keys.every((k) => m.experts.isCached(Math.floor(k / E), k % E) === false));
    assert.equal(m.experts.readAhead(keys), keys.length);
    assert.equal(m.experts.stats.readAheads, keys.length);
    // the reads finish on other threads: poll the page cache (mincore)
    for (let i = 0; i < 200; i++) {
      if (keys.every((k) => m.experts.isCached(Math.floor(k / E), k % E))) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.ok(keys.every((k) => m.experts.isCached(Math.floor(k / E), k % E)), "read ahead");
    assert.equal(m.experts.readAhead(keys), 0, "nothing to read: all cached");
    // the first reads ahead count as in flight until their calls return (after the pages
    // arrive): until then they are not read ahead again, and a drop may race their last pages
    for (let i = 0; i < 200 && m.experts.readAheadsInFlight > 0; i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.equal(m.experts.readAheadsInFlight, 0);
    // transient reads (the cache's) give the same bytes, cold ones through the reused buffer
    // (dropped before each: a read brings its neighbours' pages too)
    for (const [i, k] of keys.entries()) {
      m.experts.dropPageCache();
      const r = m.experts.read(Math.floor(k / E), k % E, true);
      assert.equal(r.source, "cold");
      assert.deepEqual(r.bytes, want[i]);
    }
    assert.equal(p.experts.readAhead(keys), 0, "pread mode: no read-ahead");
    // a read-ahead still in flight when the store closes is harmless
    m.experts.dropPageCache();
    assert.equal(m.experts.readAhead(keys), keys.length);
  } finally {
    m.close();
    p.close();
  }
  await new Promise((r) => setTimeout(r, 50)); // let the last reads end before the op sanitizer
});

Deno.test("ExpertStore.open() refuses a truncated experts.bin", async () => {
  const dir = await copyPacked("truncated");
  await Deno.truncate(`${dir}/${EXPERTS_FILE}`, manifest.experts.bytes - 4096);
  await assert.rejects(
    ExpertStore.open(`${dir}/${EXPERTS_FILE}`, manifest.experts),
    (e: Error) => e instanceof ExpertStoreError && /truncated/.test(e.message),
  );
});

Deno.test("openPacked() refuses a manifest of another format version", async () => {
  const dir = await copyPacked("version");
  const m = JSON.parse(await Deno.readTextFile(`${dir}/${MANIFEST_FILE}`));
  m.version = 99;
  await Deno.writeTextFile(`${dir}/${MANIFEST_FILE}`, JSON.stringify(m));
  await assert.rejects(
    openPacked(dir),
    (e: Error) => e instanceof ManifestError && /version 99/.test(e.message),
  );
});

Deno.test("ExpertMetrics.snapshot() gives nearest-rank percentiles and the hit rate", () => {
  const m = new ExpertMetrics();
  for (let i = 100; i >= 1; i--) m.recordLoad("warm", i);
  m.hits = 3;
  m.misses = 1;
  m.bytesUploaded = 4096;
  const s = m.snapshot();
  assert.deepEqual(s.latency.warm, {
    count: 100,
    totalMs: 5050,
    meanMs: 50.5,
    p50Ms: 50,
    p90Ms: 90,
    p99Ms: 99,
    maxMs: 100,
  });
  assert.equal(s.latency.cold.count, 0);
  assert.equal(s.hitRate, 0.75);
  assert.equal(s.bytesUploaded, 4096);
  m.reset();
  assert.equal(m.snapshot().latency.warm.count, 0);
  assert.equal(m.snapshot().hits, 0);
});

Deno.test("ExpertMetrics keeps the last LATENCY_WINDOW samples for percentiles", () => {
  const m = new ExpertMetrics();
  for (let i = 0; i < 4096; i++) m.recordLoad("cold", 1000); // pushed out by the next 4096
  for (let i = 0; i < 4096; i++) m.recordLoad("cold", 1);
  const s = m.snapshot().latency.cold;
  assert.equal(s.count, 8192);
  assert.equal(s.maxMs, 1);
});
