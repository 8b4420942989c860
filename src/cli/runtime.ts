/**
 * The flags every inference command shares (--model, --expert-slots, --expert-cache-mib,
 * --policy, --no-prefetch, --no-load-cap, --router-masking, --expert-set, --max-context, --steps-per-readback),
 * checked before anything loads, and the one place that turns them into a GpuModel.
 */
import { type Flags, type FlagSpec, info, intFlag, numberFlag, UsageError } from "./args.ts";
import { type OpenedModel, openModel } from "../model_dir.ts";
import { DEFAULT_MAX_SEQUENCES, GpuModel } from "../gpu/model.ts";
import { MAX_STEP_TOKENS } from "../gpu/ops_api.ts";
import { modelExpertLayouts } from "../gpu/expert_pool.ts";
import { type EvictionPolicy, type ExpertGrid, policyFactory } from "../experts/policy.ts";
import { MAX_STEPS_PER_BATCH } from "../gpu/host.ts";
import { EXPERT_SET_MODES, type ExpertSetMode, isExpertSetMode } from "../gpu/expert_sets.ts";

/** The shared flags, in the order --help lists them. */
export const RUNTIME_FLAGS: FlagSpec[] = [
  {
    name: "model",
    arg: "DIR",
    help: "packed or Hugging Face model directory (default: the embedded model)",
  },
  { name: "expert-slots", arg: "N", help: "GPU slots for experts (default: all experts)" },
  { name: "expert-cache-mib", arg: "M", help: "GPU budget for experts in MiB (instead of slots)" },
  {
    name: "policy",
    arg: "P",
    help: "expert eviction policy: lru, lrfu, lrfu:DECAY, model or model:HALF_LIFE (model)",
  },
  { name: "max-context", arg: "N", help: "longest sequence a session holds" },
  {
    name: "steps-per-readback",
    arg: "N",
    help: `decode steps per GPU readback, 1..${MAX_STEPS_PER_BATCH} (default: adaptive)`,
  },
  {
    name: "max-batch",
    arg: "N",
    help: `sequences decoded together (KV slabs; default ${DEFAULT_MAX_SEQUENCES}, serve 16; ` +
      "fewer if the device cannot allocate them)",
  },
  { name: "kv-cache-mib", arg: "M", help: "GPU budget for KV caches in MiB (caps --max-batch)" },
  { name: "no-prefetch", help: "load only the experts a miss needs, no speculative prefetch" },
  {
    name: "no-load-cap",
    help: "prefetch every expert a miss's later layers flagged, even when a step then loads more " +
      "experts than it routes (default: guesses only within the step's hits)",
  },
  { name: "router-masking", help: "route among resident experts only (approximate, no loads)" },
  {
    name: "expert-set",
    arg: "S",
    help: "how a sequence's experts are chosen under a budget: context (after the prefill, each " +
      "layer's share of the slots holds the experts the prompt routed to most; with " +
      "--router-masking pinned, decode routes among them) or lru (lru)",
  },
];
export const RUNTIME_STRING_FLAGS = RUNTIME_FLAGS.filter((f) => f.arg).map((f) => f.name);
export const RUNTIME_BOOLEAN_FLAGS = RUNTIME_FLAGS.filter((f) => !f.arg).map((f) => f.name);

/** The runtime flags, checked (every number and name), before any file is opened. */
export interface RuntimeOptions {
  model: string | undefined;
  maxContext: number;
  /** Exactly one of these two, or neither (all experts resident). */
  expertSlots: number | undefined;
  expertCacheMib: number | undefined;
  stepsPerReadback: number | undefined;
  maxSequences: number;
  kvCacheMib: number | undefined;
  /** The eviction policy, made once the model's layers and experts are known. */
  policy: (grid: ExpertGrid) => EvictionPolicy<number>;
  prefetch: boolean;
  /** A decode step loads at most as many experts as it routes (GpuModelOptions.loadCap). */
  loadCap: boolean;
  routerMasking: boolean;
  /** How sessions that do not ask choose their experts (requests may override it). */
  expertSet: ExpertSetMode;
}

/** The eviction policy of `--policy` when not given. */
export const DEFAULT_POLICY = "model";

/** Checks the runtime flags; a UsageError names the first bad one. */
export function runtimeOptions(flags: Flags, defaultContext: number): RuntimeOptions {
  if (flags["expert-slots"] !== undefined && flags["expert-cache-mib"] !== undefined) {
    throw new UsageError("give --expert-slots or --expert-cache-mib, not both");
  }
  const optionalInt = (name: string, min: number, max?: number) =>
    flags[name] === undefined ? undefined : intFlag(flags, name, 0, min, max);
  let policy;
  try {
    // the model-aware policy by default: under a budget it hits more and decodes faster than LRU
    // at every budget measured (bench/budget.ts, bench/routing.ts)
    policy = policyFactory((flags.policy as string | undefined) ?? DEFAULT_POLICY);
  } catch (e) {
    throw new UsageError(`--policy: ${(e as Error).message}`);
  }
  const expertSet = flags["expert-set"] ?? "lru";
  if (!isExpertSetMode(expertSet)) {
    throw new UsageError(
      `--expert-set: expected ${EXPERT_SET_MODES.join(" or ")}, got ${JSON.stringify(expertSet)}`,
    );
  }
  return {
    model: flags.model as string | undefined,
    maxContext: intFlag(flags, "max-context", defaultContext, 1),
    expertSlots: optionalInt("expert-slots", 1),
    expertCacheMib: flags["expert-cache-mib"] === undefined
      ? undefined
      : numberFlag(flags, "expert-cache-mib", 0, (n) => n > 0),
    stepsPerReadback: optionalInt("steps-per-readback", 1, MAX_STEPS_PER_BATCH),
    maxSequences: intFlag(flags, "max-batch", DEFAULT_MAX_SEQUENCES, 1, MAX_STEP_TOKENS),
    kvCacheMib: flags["kv-cache-mib"] === undefined
      ? undefined
      : numberFlag(flags, "kv-cache-mib", 0, (n) => n > 0 && n < Infinity),
    policy,
    prefetch: !flags["no-prefetch"],
    loadCap: !flags["no-load-cap"],
    routerMasking: !!flags["router-masking"],
    expertSet,
  };
}

export interface Runtime {
  opened: OpenedModel;
  model: GpuModel;
  close(): void;
}

/**
 * Opens the model named by the flags (default: the embedded one) on the GPU. The flags are checked
 * first; a GPU error while the model's pipelines and bind groups are made fails the open (GpuError).
 */
export async function openRuntime(flags: Flags, defaultContext: number): Promise<Runtime> {
  const o = runtimeOptions(flags, defaultContext);
  const opened = await openModel(o.model);
  try {
    const c = opened.weights.config;
    let expertSlots = o.expertSlots;
    if (o.expertCacheMib !== undefined) {
      const slot = modelExpertLayouts(opened.weights)[0].slotBytes;
      expertSlots = Math.floor((o.expertCacheMib * 2 ** 20) / slot);
    }
    const model = await GpuModel.open(opened.weights, {
      maxContext: o.maxContext,
      expertSlots,
      expertSource: opened.experts,
      policy: o.policy(c),
      prefetch: o.prefetch,
      loadCap: o.loadCap,
      routerMasking: o.routerMasking,
      expertSet: o.expertSet,
      stepsPerReadback: o.stepsPerReadback,
      maxSequences: o.maxSequences,
      kvCacheMib: o.kvCacheMib,
    });
    try {
      await model.gpu.settle(); // pipeline or bind-group errors of the open surface here
    } catch (e) {
      model.destroy();
      throw e;
    }
    const total = c.numLayers * c.numExperts;
    info(
      `model ${opened.dir}: ${c.numLayers} layers, ${c.numExperts} experts (top-${c.topK}), ` +
        `${model.pool.totalSlots}/${total} expert slots, context ${model.maxContext}, ` +
        `${model.maxSequences} sequences at once, on ${model.gpu.adapterInfo.description} ` +
        `(features: ${
          model.gpu.features.join(", ") || "none of subgroups, shader-f16, timestamp-query"
        }; kernels: ${model.ops.choices})`,
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
