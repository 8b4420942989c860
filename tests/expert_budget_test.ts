/**
 * The default expert budget (fittingExpertSlots): every expert when they all fit, else the largest
 * count that allocates, found by bisection, less the stated headroom. A device whose expert pool
 * allocations fail past a byte cap stands in for a GPU that is too small.
 */
import assert from "node:assert/strict";
import {
  EXPERT_HEADROOM,
  fittingExpertSlots,
  largestFitting,
  uniformLayouts,
} from "../src/gpu/expert_pool.ts";
import { openGpu } from "../src/gpu/device.ts";
import { expertConfig } from "./_experts.ts";

Deno.test("largestFitting() bisects to the largest n that fits, in O(log n) probes", async () => {
  for (const limit of [4, 5, 37, 99, 100]) {
    let probes = 0;
    const n = await largestFitting(4, 100, (k) => {
      probes++;
      return Promise.resolve(k <= limit);
    });
    assert.equal(n, limit);
    assert.ok(probes <= 7, `${probes} probes`);
  }
  assert.equal(await largestFitting(4, 100, () => Promise.resolve(false)), 3);
});

/** A real device whose "experts.pool" buffers fail (out of memory, as error scopes report it)
 * once a scope has asked for more than capBytes of them. */
function cappedDevice(device: GPUDevice, capBytes: number): GPUDevice {
  let asked = 0;
  return new Proxy(device, {
    get(target, prop) {
      if (prop === "pushErrorScope") {
        return (filter: GPUErrorFilter) => {
          asked = 0;
          target.pushErrorScope(filter);
        };
      }
      if (prop === "popErrorScope") {
        return async () => {
          const real = await target.popErrorScope();
          return real ??
            (asked > capBytes ? { message: `fake: ${asked} B > ${capBytes} B` } : null);
        };
      }
      if (prop === "createBuffer") {
        return (d: GPUBufferDescriptor) => {
          if (d.label?.startsWith("experts.pool")) asked += d.size;
          return target.createBuffer(d);
        };
      }
      const v = Reflect.get(target, prop, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

Deno.test("fittingExpertSlots() takes every expert when they fit, else the most that fit less the headroom (not a halving)", async () => {
  const config = expertConfig(2, 50, 2);
  const layouts = uniformLayouts(config, "BF16", "BF16");
  const slot = layouts[0].slotBytes;
  const gpu = await openGpu();
  try {
    assert.equal(await fittingExpertSlots(gpu.device, config, layouts), 100);
    const fit = 73; // halving from 100 would have settled on 50
    const n = await fittingExpertSlots(
      cappedDevice(gpu.device, fit * slot + slot / 2),
      config,
      layouts,
    );
    assert.equal(n, Math.floor(fit * (1 - EXPERT_HEADROOM)));
    assert.equal(await fittingExpertSlots(cappedDevice(gpu.device, 0), config, layouts), 2);
  } finally {
    gpu.device.destroy();
  }
});
