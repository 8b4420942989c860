/** openGpu() requests every optional feature the adapter offers, and reports what was granted. */
import assert from "node:assert/strict";
import { openGpu, OPTIONAL_FEATURES } from "../src/gpu/device.ts";

Deno.test("openGpu() requests subgroups, shader-f16 and timestamp-query when offered; the device has exactly those", async () => {
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  const offered = OPTIONAL_FEATURES.filter((f) => adapter!.features.has(f));
  const gpu = await openGpu();
  try {
    assert.deepEqual(gpu.features, offered);
    for (const f of OPTIONAL_FEATURES) {
      assert.equal(gpu.device.features.has(f), offered.includes(f), f);
    }
    assert.equal(gpu.hasShaderF16, offered.includes("shader-f16"));
  } finally {
    gpu.device.destroy();
  }
});
