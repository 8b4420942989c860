/**
 * Expert kernels that bind a group of pool buffers: the composed WGSL (one copy of the loader and
 * of the pool section per pool buffer, dispatchers by pool index) compiles for every weight loader
 * and pool count, and a kernel without a pool section is refused by name. The numbers these
 * kernels compute are checked in kernel_moe_test.ts and kernel_quant_test.ts.
 */
import assert from "node:assert";
import {
  composeSource,
  KernelComposeError,
  kernelSource,
  topLevelItems,
  type WeightLoader,
} from "../src/gpu/shader.ts";
import { TILED_EXPERT_PRELUDE } from "../src/gpu/ops.ts";
import { gpu, gpuTest } from "./kernel_harness.ts";

const EXPERT_KERNELS = [
  "experts_gate_up",
  "experts_gate_up_matvec",
  "experts_down",
  "experts_down_matvec",
  "experts_gate_up_tiled",
  "experts_down_tiled",
  "experts_gate_up_tiled_wg",
  "experts_down_tiled_wg",
];
const LOADERS: WeightLoader[] = [
  "f32",
  "bf16",
  "f16",
  "f32_scalar",
  "bf16_scalar",
  "q8_0",
  "q4_0",
  "q5_0",
  "q4_k",
  "q6_k",
];

Deno.test("topLevelItems() splits WGSL into its declarations", () => {
  const src = "alias W = u32;\nstruct S { a: u32, b: vec2<f32> }\nfn f(x: u32) -> u32 {\n" +
    "  if (x > 1u) { return x; }\n  return 0u;\n}\nconst C: u32 = 4u;";
  assert.deepStrictEqual(topLevelItems(src), [
    "alias W = u32;",
    "struct S { a: u32, b: vec2<f32> }",
    "fn f(x: u32) -> u32 {\n  if (x > 1u) { return x; }\n  return 0u;\n}",
    "const C: u32 = 4u;",
  ]);
});

Deno.test("composeSource() with pools: one renamed copy per pool buffer and a dispatcher", () => {
  const code = composeSource("experts_down", "q8_0", [], { count: 3, first: 6 });
  for (let k = 0; k < 3; k++) {
    assert.ok(
      code.includes(
        `@group(0) @binding(${6 + k}) var<storage, read> weights_p${k}: array<WeightWord>;`,
      ),
      `binding of pool ${k}`,
    );
    assert.ok(code.includes(`fn down_rows_p${k}(slot: u32, pair: u32, d0: u32)`), `copy ${k}`);
    assert.ok(code.includes(`fn load_w8_p${k}(`), `loader copy ${k}`);
    assert.ok(code.includes(`case ${k}u: { down_rows_p${k}(slot, pair, d0); }`), `case ${k}`);
  }
  assert.ok(!code.includes("fn down_rows_p3"), "no fourth copy");
  assert.ok(code.includes("fn down_rows(pool: u32, slot: u32, pair: u32, d0: u32)"));
  assert.strictEqual(code.match(/alias WeightWord/g)?.length, 1, "types declared once");
  assert.ok(!/\bweights\b/.test(code.replace(/\/\/[^\n]*/g, "")), "no unrenamed weights");
  assert.ok(!/\bload_w8\(/.test(code), "every loader call goes to a copy");
});

Deno.test("composeSource() refuses pools for a kernel without a pool section", () => {
  assert.throws(
    () => composeSource("matmul", "bf16", [], { count: 2, first: 5 }),
    (e: unknown) => e instanceof KernelComposeError && /matmul\.wgsl.*pool-begin/.test(e.message),
  );
  assert.ok(kernelSource("experts_down").includes("// @pool-begin"));
});

gpuTest("every expert kernel compiles with 1 and 11 pool bindings for every loader", async () => {
  for (const kernel of EXPERT_KERNELS) {
    for (const loader of LOADERS) {
      for (const count of [1, 11]) {
        const prelude = kernel.includes("_tiled") ? TILED_EXPERT_PRELUDE : [];
        const code = composeSource(kernel, loader, prelude, { count, first: 7 });
        gpu.device.pushErrorScope("validation");
        const module = gpu.device.createShaderModule({ code });
        const info = await module.getCompilationInfo();
        const scope = await gpu.device.popErrorScope();
        const errors = info.messages.filter((m) => m.type === "error").map((m) => m.message);
        if (scope) errors.push(scope.message);
        assert.deepStrictEqual(errors, [], `${kernel} / ${loader} / ${count} pools`);
      }
    }
  }
});
