/**
 * The flags every inference command shares (--model, --expert-slots, --expert-cache-mib,
 * --policy, --no-prefetch, --router-masking, --max-context, --steps-per-readback) and the one
 * place that turns them into a GpuModel.
 */
import { type Flags, info, numberFlag, UsageError } from "./args.ts";
import { type OpenedModel, openModel } from "../model_dir.ts";
import { GpuModel } from "../gpu/model.ts";
import { slotBytes } from "../gpu/expert_pool.ts";
import { policyByName } from "../experts/policy.ts";
import { MAX_STEPS_PER_BATCH } from "../gpu/host.ts";

export const RUNTIME_STRING_FLAGS = [
  "model",
  "expert-slots",
  "expert-cache-mib",
  "policy",
  "max-context",
  "steps-per-readback",
];
export const RUNTIME_BOOLEAN_FLAGS = ["no-prefetch", "router-masking"];

export interface Runtime {
  opened: OpenedModel;
  model: GpuModel;
  close(): void;
}

/** Opens the model named by the flags (default: the embedded one) on the GPU. */
export async function openRuntime(flags: Flags, defaultContext: number): Promise<Runtime> {
  const opened = await openModel(flags.model as string | undefined);
  try {
    const c = opened.weights.config;
    const maxContext = numberFlag(
      flags,
      "max-context",
      defaultContext,
      (n) => Number.isInteger(n) && n > 0,
    );
    let expertSlots: number | undefined;
    if (flags["expert-slots"] !== undefined && flags["expert-cache-mib"] !== undefined) {
      throw new UsageError("give --expert-slots or --expert-cache-mib, not both");
    }
    if (flags["expert-slots"] !== undefined) {
      expertSlots = numberFlag(flags, "expert-slots", 0, (n) => Number.isInteger(n) && n > 0);
    } else if (flags["expert-cache-mib"] !== undefined) {
      const mib = numberFlag(flags, "expert-cache-mib", 0, (n) => n > 0);
      const dtype = opened.weights.layers[0].expert(0).gate.dtype;
      expertSlots = Math.floor((mib * 2 ** 20) / slotBytes(c, dtype));
    }
    const stepsPerReadback = flags["steps-per-readback"] === undefined ? undefined : numberFlag(
      flags,
      "steps-per-readback",
      0,
      (n) => Number.isInteger(n) && n >= 1 && n <= MAX_STEPS_PER_BATCH,
    );
    let policy;
    try {
      policy = policyByName<number>((flags.policy as string | undefined) ?? "lru");
    } catch (e) {
      throw new UsageError(`--policy: ${(e as Error).message}`);
    }
    const model = await GpuModel.open(opened.weights, {
      maxContext,
      expertSlots,
      expertSource: opened.experts,
      policy,
      prefetch: !flags["no-prefetch"],
      routerMasking: !!flags["router-masking"],
      stepsPerReadback,
    });
    const total = c.numLayers * c.numExperts;
    info(
      `model ${opened.dir}: ${c.numLayers} layers, ${c.numExperts} experts (top-${c.topK}), ` +
        `${model.pool.totalSlots}/${total} expert slots, context ${model.maxContext}, on ` +
        model.gpu.adapterInfo.description,
    );
    return {
      opened,
      model,
      close() {
        model.destroy();
        opened.close();
      },
    };
  } catch (e) {
    opened.close();
    throw e;
  }
}
