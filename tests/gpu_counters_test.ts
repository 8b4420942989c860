/** bench/gpu_counters.ts counts exactly what reaches WebGPU, and uninstalling restores it. */
import assert from "node:assert/strict";
import {
  activeGpuCounters,
  countsPer,
  diffCounts,
  type GpuCounts,
  installGpuCounters,
  perUnit,
  zeroCounts,
} from "../bench/gpu_counters.ts";
import { openGpu } from "../src/gpu/device.ts";

/** WebGPU keeps handles open across tests, so resource sanitizers are off. */
function gpuTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, fn, sanitizeResources: false, sanitizeOps: false });
}

/** Every method the counters wrap, as [prototype, name]. */
const WRAPPED: [object, string][] = [
  [GPUComputePassEncoder.prototype, "dispatchWorkgroups"],
  [GPUComputePassEncoder.prototype, "dispatchWorkgroupsIndirect"],
  [GPUCommandEncoder.prototype, "beginComputePass"],
  [GPUCommandEncoder.prototype, "copyBufferToBuffer"],
  [GPUCommandEncoder.prototype, "clearBuffer"],
  [GPUQueue.prototype, "submit"],
  [GPUQueue.prototype, "writeBuffer"],
  [GPUBuffer.prototype, "mapAsync"],
];
/** Wrapped too when a `mark` predicate is given. */
const WRAPPED_WITH_MARK: [object, string][] = [
  [GPUComputePassEncoder.prototype, "setPipeline"],
  [GPUComputePassEncoder.prototype, "end"],
];

/** One invocation per workgroup, each adding 1 to out[0]: out[0] counts workgroups run. */
const SHADER = `
@group(0) @binding(0) var<storage, read_write> out: array<atomic<u32>>;
@compute @workgroup_size(1) fn main() { atomicAdd(&out[0], 1u); }
`;

gpuTest(
  "counts dispatches, passes, submits, copies, clears, writes and reads exactly",
  async () => {
    const gpu = await openGpu();
    const device = gpu.device;
    const counters = installGpuCounters();
    try {
      const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
      const out = device.createBuffer({ size: 64, usage: S });
      const staging = device.createBuffer({
        size: 128,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      const upload = device.createBuffer({
        size: 64,
        usage: GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC,
      });
      const indirect = device.createBuffer({
        size: 16,
        usage: GPUBufferUsage.INDIRECT | GPUBufferUsage.COPY_DST,
        mappedAtCreation: true,
      });
      new Uint32Array(indirect.getMappedRange()).set([3, 1, 1]);
      indirect.unmap();
      const pipeline = device.createComputePipeline({
        layout: "auto",
        compute: { module: device.createShaderModule({ code: SHADER }), entryPoint: "main" },
      });
      const bindGroup = device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: [{ binding: 0, resource: { buffer: out } }],
      });
      // creation alone counts nothing
      assert.deepEqual(counters.snapshot(), zeroCounts());

      const enc1 = device.createCommandEncoder();
      const a = enc1.beginComputePass();
      a.setPipeline(pipeline);
      a.setBindGroup(0, bindGroup);
      a.dispatchWorkgroups(1);
      a.dispatchWorkgroups(2);
      a.end();
      const b = enc1.beginComputePass();
      b.setPipeline(pipeline);
      b.setBindGroup(0, bindGroup);
      b.dispatchWorkgroups(1);
      b.dispatchWorkgroupsIndirect(indirect, 0); // 3 workgroups
      b.end();
      enc1.copyBufferToBuffer(out, 0, staging, 64, 16); // 16 bytes
      // WebGPU allows a missing size (the rest of the source) and a short overload; Deno's types
      // do not list them
      const loose = (e: GPUCommandEncoder) =>
        e as unknown as { copyBufferToBuffer(...args: unknown[]): void };
      loose(enc1).copyBufferToBuffer(out, 16, staging, 16); // the rest of out: 48 bytes
      enc1.clearBuffer(out);
      const enc2 = device.createCommandEncoder();
      const c = enc2.beginComputePass();
      c.setPipeline(pipeline);
      c.setBindGroup(0, bindGroup);
      c.dispatchWorkgroups(4);
      c.end();
      loose(enc2).copyBufferToBuffer(out, staging, 4); // the short overload, 4 bytes
      device.queue.submit([enc1.finish(), enc2.finish()]);
      device.queue.submit([]);
      const one = function* () {
        yield device.createCommandEncoder().finish();
      };
      device.queue.submit(one() as unknown as GPUCommandBuffer[]); // any iterable

      const wb = device.createBuffer({ size: 64, usage: GPUBufferUsage.COPY_DST });
      device.queue.writeBuffer(wb, 0, new Uint32Array(8), 2, 4); // 4 u32 = 16 bytes
      device.queue.writeBuffer(wb, 0, new ArrayBuffer(12), 4); // 8 bytes
      device.queue.writeBuffer(wb, 0, new DataView(new ArrayBuffer(20), 4)); // 16 bytes
      device.queue.writeBuffer(wb, 0, new Float32Array(6)); // 24 bytes

      await staging.mapAsync(GPUMapMode.READ, 64, 16); // 16 bytes
      // the wrapped calls really ran: 1 + 2 + 1 + 3 workgroups before the first copy...
      assert.deepEqual([...new Uint32Array(staging.getMappedRange(64, 16))], [7, 0, 0, 0]);
      staging.unmap();
      await staging.mapAsync(GPUMapMode.READ); // 128 bytes
      // ... and 4 after the clear, copied by the short overload
      assert.equal(new Uint32Array(staging.getMappedRange())[0], 4);
      staging.unmap();
      await staging.mapAsync(GPUMapMode.READ, 32); // 96 bytes
      staging.unmap();
      await upload.mapAsync(GPUMapMode.WRITE); // not a read: not counted
      upload.unmap();
      await gpu.settle();

      const want: GpuCounts = {
        dispatches: 5,
        indirectDispatches: 1,
        passes: 3,
        submits: 3,
        commandBuffers: 3,
        copies: 3,
        copyBytes: 16 + 48 + 4,
        clears: 1,
        writeBuffers: 4,
        writeBytes: 16 + 8 + 16 + 24,
        mapReads: 3,
        readBytes: 16 + 128 + 96,
        markedDispatches: 0,
        markedPasses: 0,
        dispatchesInMarkedPasses: 0,
      };
      assert.deepEqual(counters.snapshot(), want);

      // snapshot is a copy; measure counts only its own work; reset zeroes
      const snap = counters.snapshot();
      const { value, counts } = await counters.measure(() => {
        device.queue.writeBuffer(wb, 0, new Uint8Array(8));
        device.queue.submit([]);
        return Promise.resolve(42);
      });
      assert.equal(value, 42);
      assert.deepEqual(counts, { ...zeroCounts(), writeBuffers: 1, writeBytes: 8, submits: 1 });
      assert.deepEqual(snap, want);
      counters.reset();
      assert.deepEqual(counters.snapshot(), zeroCounts());
    } finally {
      counters.uninstall();
      device.destroy();
    }
  },
);

gpuTest("uninstall restores the original methods; one installation at a time", async () => {
  const all = [...WRAPPED, ...WRAPPED_WITH_MARK];
  const originals = all.map(([p, name]) => Object.getOwnPropertyDescriptor(p, name));
  const counters = installGpuCounters({ mark: () => true });
  assert.equal(activeGpuCounters(), counters);
  assert.throws(() => installGpuCounters(), /already installed/);
  all.forEach(([p, name], i) => {
    assert.notEqual(Object.getOwnPropertyDescriptor(p, name)!.value, originals[i]!.value, name);
  });
  counters.uninstall();
  counters.uninstall(); // idempotent
  assert.equal(activeGpuCounters(), null);
  all.forEach(([p, name], i) => {
    assert.deepEqual(Object.getOwnPropertyDescriptor(p, name), originals[i], name);
  });

  // nothing is counted after uninstalling; a new installation counts from zero
  const gpu = await openGpu();
  try {
    const buf = gpu.device.createBuffer({ size: 16, usage: GPUBufferUsage.COPY_DST });
    gpu.device.queue.writeBuffer(buf, 0, new Uint32Array(4));
    gpu.device.queue.submit([]);
    assert.deepEqual(counters.snapshot(), zeroCounts());
    // without a mark, setPipeline and end stay the originals
    const again = installGpuCounters();
    try {
      WRAPPED_WITH_MARK.forEach(([p, name]) => {
        assert.equal(
          Object.getOwnPropertyDescriptor(p, name)!.value,
          originals[WRAPPED.length + WRAPPED_WITH_MARK.findIndex(([, n]) => n === name)]!.value,
          name,
        );
      });
      gpu.device.queue.submit([]);
      assert.deepEqual(again.snapshot(), { ...zeroCounts(), submits: 1 });
    } finally {
      again.uninstall();
    }
  } finally {
    gpu.device.destroy();
  }
});

gpuTest(
  "marked pipelines: their dispatches, and every dispatch of the passes that hold them",
  async () => {
    const gpu = await openGpu();
    const device = gpu.device;
    const counters = installGpuCounters({ mark: (label) => label.startsWith("marked") });
    try {
      const out = device.createBuffer({
        size: 16,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
      });
      const module = device.createShaderModule({ code: SHADER });
      const layout = device.createBindGroupLayout({
        entries: [{ binding: 0, visibility: GPUShaderStage.COMPUTE, buffer: { type: "storage" } }],
      });
      const pipe = (label: string) =>
        device.createComputePipeline({
          label,
          layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
          compute: { module, entryPoint: "main" },
        });
      const marked = pipe("marked|x"), other = pipe("other|x");
      const bindGroup = device.createBindGroup({
        layout,
        entries: [{ binding: 0, resource: { buffer: out } }],
      });
      const enc = device.createCommandEncoder();
      const run = (pass: GPUComputePassEncoder, pipeline: GPUComputePipeline, n: number) => {
        pass.setPipeline(pipeline);
        pass.setBindGroup(0, bindGroup);
        for (let i = 0; i < n; i++) pass.dispatchWorkgroups(1);
      };
      // a pass with 2 other + 3 marked + 1 other dispatches: marked
      const a = enc.beginComputePass();
      run(a, other, 2);
      run(a, marked, 3);
      run(a, other, 1);
      a.end();
      // a pass of other dispatches only: not marked
      const b = enc.beginComputePass();
      run(b, other, 4);
      b.end();
      // a marked pass with one dispatch
      const c = enc.beginComputePass();
      run(c, marked, 1);
      c.end();
      device.queue.submit([enc.finish()]);
      await device.queue.onSubmittedWorkDone();
      await gpu.settle();
      const got = counters.snapshot();
      assert.deepEqual(
        {
          dispatches: got.dispatches,
          passes: got.passes,
          markedDispatches: got.markedDispatches,
          markedPasses: got.markedPasses,
          dispatchesInMarkedPasses: got.dispatchesInMarkedPasses,
        },
        {
          dispatches: 11,
          passes: 3,
          markedDispatches: 4,
          markedPasses: 2,
          dispatchesInMarkedPasses: 7,
        },
      );
    } finally {
      counters.uninstall();
      device.destroy();
    }
  },
);

Deno.test("diffCounts, perUnit and countsPer work field by field", () => {
  const before = { ...zeroCounts(), dispatches: 10, submits: 2, readBytes: 100 };
  const after = { ...zeroCounts(), dispatches: 50, submits: 6, readBytes: 900, passes: 8 };
  const d = diffCounts(after, before);
  assert.deepEqual(d, { ...zeroCounts(), dispatches: 40, submits: 4, readBytes: 800, passes: 8 });
  assert.deepEqual(perUnit(d, 4), {
    ...zeroCounts(),
    dispatches: 10,
    submits: 1,
    readBytes: 200,
    passes: 2,
  });
  assert.deepEqual(countsPer(after, before, 4), perUnit(d, 4));
});
