/**
 * GPU errors are raised, never only logged (src/gpu/device.ts): an uncaptured validation error is
 * latched and thrown by the next gpu.check() as a GpuError; pipelines and bind groups made by
 * Shaders and Ops are created inside error scopes, so gpu.settle() names the one that failed; a
 * lost device makes check() throw DeviceLostError from then on.
 */
import assert from "node:assert/strict";
import { DeviceLostError, GpuError, openGpu } from "../src/gpu/device.ts";
import { Shaders } from "../src/gpu/shader.ts";
import { Ops } from "../src/gpu/ops.ts";

/** An invalid buffer: MAP_READ may only be combined with COPY_DST. */
function invalidBuffer(device: GPUDevice): GPUBuffer {
  return device.createBuffer({
    label: "invalid",
    size: 16,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.STORAGE,
  });
}

/** Submits a copy and waits for its readback, as a model step does. */
async function readback(device: GPUDevice, from: GPUBuffer): Promise<void> {
  const staging = device.createBuffer({
    size: 16,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(from, 0, staging, 0, 16);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  staging.unmap();
  staging.destroy();
}

Deno.test("gpu.check() after a readback throws the uncaptured validation error of the work as a GpuError, once", async () => {
  const gpu = await openGpu();
  try {
    gpu.check(); // nothing yet
    await readback(gpu.device, invalidBuffer(gpu.device));
    assert.throws(() => gpu.check(), (e: Error) => {
      assert.ok(e instanceof GpuError);
      assert.equal(e.kind, "validation");
      assert.match(e.message, /validation error during GPU work/);
      return true;
    });
    gpu.check(); // the latch is cleared: the next operation is judged on its own
  } finally {
    gpu.device.destroy();
  }
});

Deno.test("Shaders.pipeline() and Ops bind groups are made in error scopes: gpu.settle() names the one that failed", async () => {
  const gpu = await openGpu();
  try {
    const shaders = new Shaders(gpu.device);
    shaders.pipeline({
      kernel: "rope",
      bindings: ["uniform", "uniform", "read", "rw"],
      constants: { NOT_AN_OVERRIDE: 1 },
    });
    await assert.rejects(gpu.settle(), (e: Error) => {
      assert.ok(e instanceof GpuError, String(e));
      assert.match(e.message, /during creation of pipeline rope\|/);
      return true;
    });
    await gpu.settle(); // cleared

    const ops = new Ops(gpu);
    const notStorage = gpu.device.createBuffer({ size: 256, usage: GPUBufferUsage.COPY_DST });
    const table = gpu.device.createBuffer({ size: 256, usage: GPUBufferUsage.STORAGE });
    ops.rope({ x: notStorage, table, heads: 1, headDim: 8 });
    await assert.rejects(gpu.settle(), (e: Error) => {
      assert.ok(e instanceof GpuError, String(e));
      assert.match(e.message, /during creation of bind group rope/);
      return true;
    });
    ops.destroy();
  } finally {
    gpu.device.destroy();
  }
});

Deno.test("a lost device makes gpu.check() throw DeviceLostError, and lostError is set", async () => {
  const gpu = await openGpu();
  assert.equal(gpu.lostError, null);
  gpu.device.destroy();
  const lost = await gpu.lost;
  assert.ok(lost instanceof DeviceLostError);
  assert.equal(gpu.lostError, lost);
  assert.throws(() => gpu.check(), DeviceLostError);
  assert.throws(() => gpu.check(), DeviceLostError); // for good, unlike a GpuError
});
