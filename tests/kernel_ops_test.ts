import assert from "node:assert";
import { Ops } from "../src/gpu/ops.ts";
import { readF32, readU32 } from "../src/gpu/readback.ts";
import { composeSource, weightLoader } from "../src/gpu/shader.ts";
import { buffer, gpu, gpuTest, randomF32 } from "./kernel_harness.ts";

gpuTest("openGpu() requests the adapter's limits, not the WebGPU defaults", async () => {
  const adapter = await navigator.gpu.requestAdapter();
  assert.ok(adapter);
  const adapterLimits = adapter.limits as unknown as Record<string, number>;
  const deviceLimits = gpu.device.limits as unknown as Record<string, number>;
  for (
    const key of ["maxBufferSize", "maxStorageBufferBindingSize", "maxComputeWorkgroupStorageSize"]
  ) {
    const want: number = adapterLimits[key];
    assert.strictEqual(deviceLimits[key], want, key);
    assert.strictEqual(gpu.limits[key], want, key);
  }
});

gpuTest(
  "readF32()/readU32() return the requested range, also after the staging buffer grows",
  async () => {
    const small = randomF32(10, 1);
    const large = randomF32(5000, 2);
    assert.deepStrictEqual(await readF32(gpu, buffer(small), 8, 5), small.subarray(2, 7));
    assert.deepStrictEqual(await readF32(gpu, buffer(large), 0, 5000), large);
    const words = new Uint32Array([7, 8, 9, 0xffffffff]);
    assert.deepStrictEqual(await readU32(gpu, buffer(words), 4, 3), words.subarray(1));
  },
);

gpuTest("weightLoader() takes vector loads only when every row starts on 16 bytes", () => {
  assert.strictEqual(weightLoader("bf16", [0], [2048]), "bf16");
  assert.strictEqual(weightLoader("bf16", [4], [2048]), "bf16_scalar");
  assert.strictEqual(weightLoader("bf16", [0], [2052]), "bf16_scalar");
  assert.strictEqual(weightLoader("f32", [4], [2052]), "f32");
  assert.strictEqual(weightLoader("f16", [6], [8]), "f16_scalar");
  // Every loader defines the same functions the kernels call.
  for (const l of ["f32", "bf16", "f16", "f32_scalar", "bf16_scalar", "f16_scalar"] as const) {
    const src = composeSource("matmul", l);
    assert.match(src, /fn load_w4\(/, l);
    assert.match(src, /fn load_w8\(/, l);
  }
  return Promise.resolve();
});

gpuTest(
  "Ops.destroy() frees the step uniform: recording afterwards is a validation error",
  async () => {
    const own = new Ops(gpu);
    const x = buffer(64 * 4);
    const op = own.kvStore({
      k: x,
      v: x,
      kCache: buffer(64 * 4),
      vCache: buffer(64 * 4),
      width: 4,
    });
    own.destroy();
    gpu.device.pushErrorScope("validation");
    const encoder = gpu.device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    op.record(pass, 1);
    pass.end();
    gpu.device.queue.submit([encoder.finish()]);
    const error = await gpu.device.popErrorScope();
    assert.ok(error, "submitting work that uses a destroyed buffer must fail");
  },
);
