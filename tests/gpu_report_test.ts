/**
 * bench/gpu_report.ts, the script a lent GPU machine runs (tools/gpu/run.sh): with --small it runs
 * here; its report has every figure, and the logits it leaves for transformers_run.py to compare
 * are the model's (within the SMALL fixture's tolerance of the float64 reference).
 */
import assert from "node:assert/strict";
import { openReferenceModel } from "../src/reference/model.ts";

/** The SMALL fixture's bar in tests/gpu_model_test.ts (max |logit - float64 reference|). */
const SMALL_TOLERANCE = 5e-6;

Deno.test({
  name:
    "gpu_report --small: a complete report, and logits of its prompt equal the float64 reference's",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "gpu_report_" });
    try {
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          "--unstable-webgpu",
          new URL("../bench/gpu_report.ts", import.meta.url).pathname,
          "--small",
          "--dir",
          `${dir}/model`,
          "--out",
          `${dir}/report.json`,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      const report = JSON.parse(await Deno.readTextFile(`${dir}/report.json`));
      assert.ok(report.copy.gbPerS > 0);
      assert.ok(report.decode.tokPerS > 0 && report.decode.mbPerToken > 0);
      assert.deepEqual(Object.keys(report.prefillTokPerS), ["64", "512", "2048"]);
      assert.equal(report.shape.dtype, "BF16");
      const { prompt, logits } = JSON.parse(
        await Deno.readTextFile(`${dir}/model/runtime_logits.json`),
      ) as { prompt: number[]; logits: number[] };
      assert.equal(prompt.length, 16);
      const ref = await openReferenceModel(`${dir}/model`);
      try {
        const want = ref.newSession().forward64(prompt).at(-1)!;
        assert.equal(logits.length, want.length);
        let worst = 0;
        for (let i = 0; i < want.length; i++) {
          worst = Math.max(worst, Math.abs(logits[i] - want[i]));
        }
        assert.ok(worst < SMALL_TOLERANCE, `max |diff| ${worst}`);
      } finally {
        ref.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
