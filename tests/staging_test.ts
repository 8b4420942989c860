/**
 * Expert uploads through staging buffers kept mapped (src/gpu/staging.ts): the bytes land where
 * writeBuffer would put them (one region or a record split around its down projection's
 * alignment), a busy or too small ring refuses without writing, a buffer is reused once its
 * mapping is back, and ExpertPool falls back to writeBuffer when the ring refuses.
 */
import assert from "node:assert/strict";
import { StagingRing } from "../src/gpu/staging.ts";
import { expertLayouts, ExpertPool, ExpertPoolError } from "../src/gpu/expert_pool.ts";
import { openGpu } from "../src/gpu/device.ts";
import { expertConfig, readStorage } from "./_experts.ts";

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 131 + i * 7 + (i >> 9)) & 255;
  return b;
}

function target(device: GPUDevice, size: number): GPUBuffer {
  return device.createBuffer({
    size,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
  });
}

async function readBack(device: GPUDevice, buffer: GPUBuffer): Promise<Uint8Array> {
  const read = device.createBuffer({
    size: buffer.size,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buffer, 0, read, 0, buffer.size);
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const bytes = new Uint8Array(read.getMappedRange()).slice();
  read.unmap();
  read.destroy();
  return bytes;
}

/** Resolves once the ring has `n` free buffers (its mappings come back ~10 ms after a write). */
async function freeBuffers(ring: StagingRing, n: number): Promise<void> {
  for (let i = 0; i < 200 && ring.available < n; i++) {
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.equal(ring.available, n, "staging buffers mapped again");
}

Deno.test("StagingRing copies one region, or several packed, to their destinations", async () => {
  const gpu = await openGpu();
  const device = gpu.device;
  try {
    const ring = new StagingRing(device, 4096, 2);
    const a = target(device, 8192), b = target(device, 8192);
    const src = pattern(4096, 1);
    assert.ok(ring.write(src, [{ dst: a, dstOffset: 1024, srcOffset: 0, size: 4096 }]));
    // a record split in two: its first 1000 bytes at 0, the rest 3096 bytes at 5000 of b
    const src2 = pattern(4096, 2);
    assert.ok(ring.write(src2, [
      { dst: b, dstOffset: 0, srcOffset: 0, size: 1000 },
      { dst: b, dstOffset: 5000, srcOffset: 1000, size: 3096 },
    ]));
    assert.deepEqual(ring.stats, { staged: 2, busy: 0 });
    const gotA = await readBack(device, a), gotB = await readBack(device, b);
    assert.deepEqual(gotA.subarray(1024, 5120), src);
    assert.ok(gotA.subarray(0, 1024).every((x) => x === 0), "nothing before the region");
    assert.ok(gotA.subarray(5120).every((x) => x === 0), "nothing after the region");
    assert.deepEqual(gotB.subarray(0, 1000), src2.subarray(0, 1000));
    assert.ok(gotB.subarray(1000, 5000).every((x) => x === 0), "the gap is left alone");
    assert.deepEqual(gotB.subarray(5000, 8096), src2.subarray(1000));
    ring.destroy();
  } finally {
    device.destroy();
  }
});

Deno.test("StagingRing refuses when busy or too small, writes nothing, and reuses a buffer once mapped again", async () => {
  const gpu = await openGpu();
  const device = gpu.device;
  try {
    const ring = new StagingRing(device, 1024, 1);
    const dst = target(device, 4096);
    assert.ok(!ring.write(pattern(2048, 3), [{ dst, dstOffset: 0, srcOffset: 0, size: 2048 }]));
    assert.ok(ring.write(pattern(1024, 4), [{ dst, dstOffset: 0, srcOffset: 0, size: 1024 }]));
    // its only buffer is on its way back: refused, nothing written
    assert.equal(ring.available, 0);
    assert.ok(!ring.write(pattern(1024, 5), [{ dst, dstOffset: 2048, srcOffset: 0, size: 1024 }]));
    assert.deepEqual(ring.stats, { staged: 1, busy: 2 });
    await freeBuffers(ring, 1);
    assert.ok(ring.write(pattern(1024, 6), [{ dst, dstOffset: 1024, srcOffset: 0, size: 1024 }]));
    const got = await readBack(device, dst);
    assert.deepEqual(got.subarray(0, 1024), pattern(1024, 4));
    assert.deepEqual(got.subarray(1024, 2048), pattern(1024, 6));
    assert.ok(got.subarray(2048).every((x) => x === 0), "refused writes left no bytes");
    ring.destroy();
    assert.ok(!ring.write(pattern(8, 7), [{ dst, dstOffset: 0, srcOffset: 0, size: 8 }]));
  } finally {
    device.destroy();
  }
});

Deno.test("ExpertPool uploads through staging land as writeBuffer's, split records and fallbacks included", async () => {
  const gpu = await openGpu();
  const device = gpu.device;
  try {
    const config = expertConfig(2, 4, 2);
    // Q4_K gate/up and Q6_K down: down starts on a 420-byte unit, so the record is split
    const layouts = expertLayouts(config, [
      { gate: "BF16", down: "BF16" },
      { gate: "Q4_K", down: "Q6_K" },
    ]);
    assert.ok(layouts[0].contiguous && !layouts[1].contiguous);
    const slots = 6;
    // one staging buffer: uploads in a burst fall back to writeBuffer after the first
    const staged = new ExpertPool(device, config, layouts, slots, { stagingBuffers: 1 });
    const plain = new ExpertPool(device, config, layouts, slots, { stagingBuffers: 0 });
    for (const pool of [staged, plain]) {
      for (let slot = 0; slot < slots; slot++) {
        const layer = slot % 2;
        const msg = await pool.uploadRecord(
          slot,
          layer,
          pattern(layouts[layer].recordBytes, slot),
        );
        assert.equal(msg, null);
        if (pool === staged && slot === 2) {
          // between bursts (decode steps) the buffer comes back and is used again
          for (let i = 0; i < 200 && pool.stagingStats.available < 1; i++) {
            await new Promise((r) => setTimeout(r, 10));
          }
          assert.equal(pool.stagingStats.available, 1);
        }
      }
    }
    assert.equal(plain.stagingStats.staged, 0);
    assert.ok(staged.stagingStats.staged >= 2, "the ring was used");
    assert.ok(staged.stagingStats.busy >= 1, "and a burst fell back to writeBuffer");
    assert.equal(staged.pools.length, plain.pools.length);
    for (let i = 0; i < staged.pools.length; i++) {
      const size = staged.pools[i].buffer!.size;
      assert.deepEqual(
        await readStorage(device, staged.pools[i].buffer!, 0, size),
        await readStorage(device, plain.pools[i].buffer!, 0, size),
        `pool buffer ${i}`,
      );
    }
    // and the split record is where the layout says
    const got = await readStorage(device, plain.pools[0].buffer!, 0, plain.pools[0].buffer!.size);
    const l1 = layouts[1], rec = pattern(l1.recordBytes, 1), at = 1 * l1.slotBytes;
    assert.deepEqual(got.subarray(at, at + 2 * l1.gateBytes), rec.subarray(0, 2 * l1.gateBytes));
    assert.deepEqual(
      got.subarray(at + l1.downOffset, at + l1.downOffset + l1.downBytes),
      rec.subarray(2 * l1.gateBytes),
    );
    assert.throws(
      () => new ExpertPool(device, config, layouts, slots, { stagingBuffers: -1 }),
      ExpertPoolError,
    );
    staged.destroy();
    plain.destroy();
  } finally {
    device.destroy();
  }
});
