/**
 * The kernel interface declared once (src/gpu/kernel_interface.ts): shared constants come from
 * TypeScript into every kernel; a spec whose bindings, params or assumed constants disagree with
 * the kernel's source is refused when the pipeline is made, naming the kernel and what differs.
 */
import assert from "node:assert";
import {
  checkParams,
  declaredBindings,
  declaredConstants,
  KernelInterfaceError,
  MAX_EXPERTS,
  paramsFields,
  SHARED_CONSTANTS,
} from "../src/gpu/kernel_interface.ts";
import {
  composeSource,
  KernelComposeError,
  kernelSource,
  type KernelSpec,
  Shaders,
  withSizes,
} from "../src/gpu/shader.ts";
import { MAX_STEP_TOKENS, WEIGHT_TEXTURE_WIDTH } from "../src/gpu/ops_api.ts";
import { ABSENT } from "../src/gpu/expert_pool.ts";
import { gpu, gpuTest } from "./kernel_harness.ts";

const refused = (pattern: RegExp) => (e: unknown) =>
  e instanceof KernelInterfaceError && pattern.test(e.message);

Deno.test("shared constants are defined once, in TypeScript, and reach every kernel", () => {
  assert.deepStrictEqual(
    { ...SHARED_CONSTANTS },
    {
      MAX_STEP_TOKENS,
      ABSENT_SLOT: ABSENT,
      MAX_EXPERTS,
      MAX_HEAD_DIM: 256,
      WEIGHT_TEXTURE_WIDTH,
    },
  );
  for (const name of Object.keys(SHARED_CONSTANTS)) {
    for (const kernel of ["common", "topk", "head_norm_rope", "experts_gate_up"]) {
      assert.ok(!declaredConstants(kernelSource(kernel)).has(name), `${kernel} redefines ${name}`);
    }
    const code = composeSource("topk");
    assert.strictEqual(declaredConstants(code).get(name), SHARED_CONSTANTS[name] >>> 0, name);
  }
});

Deno.test("withSizes() sets a kernel's own u32 consts per pipeline and refuses what it lacks", () => {
  const code = composeSource("matmul", "bf16", [], undefined, { MAX_TOKENS: 8 });
  assert.strictEqual(declaredConstants(code).get("MAX_TOKENS"), 8);
  assert.strictEqual(declaredConstants(composeSource("matmul", "bf16")).get("MAX_TOKENS"), 16);
  const src = "const A: u32 = 4u;\nconst B: u32 = 2u;\n";
  assert.strictEqual(withSizes("k", src, { B: 7 }), "const A: u32 = 4u;\nconst B: u32 = 7u;\n");
  assert.throws(() => withSizes("k", src, { C: 1 }), KernelComposeError);
  assert.throws(() => withSizes("k", src, { A: 0 }), KernelComposeError);
});

Deno.test("declaredBindings() and paramsFields() read a kernel's interface", () => {
  const code = composeSource("rmsnorm", undefined, ["workgroup_sum"]);
  assert.deepStrictEqual([...declaredBindings(code)].map(([i, d]) => [i, d.kind, d.name]), [
    [0, "uniform", "step"],
    [1, "uniform", "p"],
    [2, "read", "weight"],
    [3, "rw", "x"],
    [4, "rw", "out"],
  ]);
  assert.deepStrictEqual(paramsFields("rmsnorm", code), ["dim", "groups", "eps", "_pad"]);
});

Deno.test("texture weights: the weights binding becomes the texture, every word a texel fetch", () => {
  for (const loader of ["bf16", "f16", "q8_0_rows8", "q6_k_rows8", "q4_k_rows8"] as const) {
    const code = composeSource("matmul", loader, ["matmul_store"], undefined, {}, false, true);
    assert.deepStrictEqual(declaredBindings(code, "matmul").get(3), {
      kind: "texture",
      name: "weights",
    });
    const body = code.replace(/\/\/[^\n]*/g, "");
    assert.ok(!/\bweights\s*\[/.test(body), `${loader}: a weights[...] index is left`);
    assert.ok(/\bfn weights_word\b/.test(body) && /\bweights_word\(/.test(body), loader);
  }
  // pooled kernels: each pool a texture, each copy of the loader reading its own
  const pooled = composeSource(
    "experts_gate_up",
    "bf16",
    [],
    { count: 2, first: 7 },
    {},
    false,
    true,
  );
  const bindings = declaredBindings(pooled, "experts_gate_up");
  for (const k of [0, 1]) {
    assert.deepStrictEqual(bindings.get(7 + k), { kind: "texture", name: `weights_p${k}` });
    assert.ok(new RegExp(`textureLoad\\(weights_p${k},`).test(pooled), `pool ${k}`);
  }
  assert.ok(!/\bweights(_p\d)?\s*\[/.test(pooled.replace(/\/\/[^\n]*/g, "")));
  // a loader of 4-byte words cannot read 16-byte texels
  for (const pools of [undefined, { count: 1, first: 7 }]) {
    assert.throws(
      () => composeSource("experts_gate_up", "bf16_scalar", [], pools, {}, false, true),
      (e) => e instanceof KernelComposeError && /16-byte words/.test(e.message),
    );
  }
  // any other texture type is not a binding an op can make
  const other = "@group(0) @binding(2) var t: texture_2d<f32>;";
  assert.throws(() => declaredBindings(other, "k"), refused(/binding 2 \(t\) has type/));
});

Deno.test("checkParams() wants every field but trailing padding written, nothing past it", () => {
  const code = composeSource("rmsnorm", undefined, ["workgroup_sum"]);
  checkParams("rmsnorm", code, 3);
  checkParams("rmsnorm", code, 4);
  assert.throws(() => checkParams("rmsnorm", code, 2), refused(/rmsnorm.*eps never written/));
  assert.throws(() => checkParams("rmsnorm", code, 5), refused(/writes 5 params/));
  assert.throws(() => checkParams("argmax", composeSource("attention_softmax"), 9));
});

gpuTest("a spec that disagrees with its kernel is refused when the pipeline is made", async () => {
  const shaders = new Shaders(gpu.device);
  const ok: KernelSpec = {
    kernel: "rmsnorm",
    bindings: ["uniform", "uniform", "read", "rw", "rw"],
    prelude: ["workgroup_sum"],
  };
  shaders.pipeline({ ...ok, bindings: [...ok.bindings], expect: { WG: 64 } });
  assert.throws(
    () => shaders.pipeline({ ...ok, bindings: ["uniform", "uniform", "read", "read", "rw"] }),
    refused(/rmsnorm\.wgsl.*binding 3 \(x\) is rw, the op binds read/),
  );
  assert.throws(
    () => shaders.pipeline({ ...ok, bindings: ["uniform", "uniform", "read", "rw"] }),
    refused(/binding 4 \(out\) is declared but not bound/),
  );
  assert.throws(
    () => shaders.pipeline({ ...ok, bindings: [...ok.bindings, "read"] }),
    refused(/binding 5 \(read\) is not declared/),
  );
  assert.throws(
    () => shaders.pipeline({ ...ok, bindings: [...ok.bindings], expect: { WG: 32 } }),
    refused(/WG = 64 in the kernel, the op assumes 32/),
  );
  assert.throws(
    () => shaders.pipeline({ ...ok, bindings: [...ok.bindings], expect: { ROWS: 4 } }),
    refused(/ROWS is not declared/),
  );
  assert.throws(
    () => shaders.checkParams({ ...ok, bindings: [...ok.bindings] }, 1),
    refused(/groups, eps never written/),
  );
  await gpu.settle();
});
