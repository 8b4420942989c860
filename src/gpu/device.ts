/**
 * Opens the WebGPU device the runtime runs on, with the adapter's own limits (not the WebGPU
 * defaults: llvmpipe and real GPUs allow far larger storage bindings than the 128 MiB default).
 *
 * GPU errors are never only logged: an uncaptured validation, out-of-memory or internal error is
 * latched, and the next `check()` (after a readback, before a step) throws it as a GpuError, so
 * the operation that caused it fails instead of returning numbers computed from invalid work.
 * `scoped()` wraps object creation (pipelines, bind groups) in error scopes that name what was
 * being made; `settle()` waits for those scopes. Device loss is kept: `check()` throws
 * DeviceLostError from then on, and `lost` resolves for whoever reloads the model.
 */

/** The opened device and what we learned about it. */
export interface Gpu {
  device: GPUDevice;
  adapterInfo: GPUAdapterInfo;
  /** The limits the device was created with (a copy of the adapter's numeric limits). */
  limits: Record<string, number>;
  /** Whether shader-f16 was granted (reported only; no kernel relies on it yet). */
  hasShaderF16: boolean;
  /** The OPTIONAL_FEATURES the adapter offered, all requested and granted. */
  features: string[];
  /** Resolves when the device is lost (its reason), so callers can fail their pending work. */
  lost: Promise<DeviceLostError>;
  /** The loss once `lost` has resolved, else null (readable without awaiting). */
  readonly lostError: DeviceLostError | null;
  /**
   * Throws DeviceLostError once the device is lost, else the first GPU error latched since the
   * last check (a GpuError, then cleared). Call it after each readback and before trusting
   * numbers the GPU produced.
   */
  check(): void;
  /** Runs `fn` inside validation / out-of-memory / internal error scopes; an error caught there
   * is latched as a GpuError naming `what` (e.g. "pipeline matmul|bf16"). */
  scoped<T>(what: string, fn: () => T): T;
  /** Waits for every scope opened so far to close, then check(). */
  settle(): Promise<void>;
}

/** navigator.gpu is missing or no adapter was found. */
export class WebGPUNotAvailableError extends Error {
  override name = "WebGPUNotAvailableError";
  constructor(detail: string) {
    super(
      `WebGPU is not available (${detail}). Run Deno with --unstable-webgpu, and on a machine ` +
        `without a GPU install Mesa's Vulkan drivers (llvmpipe / lavapipe, e.g. ` +
        `apt-get install mesa-vulkan-drivers).`,
    );
  }
}

/** The device was lost (driver reset, out of memory, destroy()). */
export class DeviceLostError extends Error {
  override name = "DeviceLostError";
  constructor(readonly reason: string, detail: string) {
    super(
      `the WebGPU device was lost (${reason}: ${detail}); the model must be reopened on a new ` +
        `device (the server does this itself; a CLI command must be rerun)`,
    );
  }
}

/** Which of WebGPU's error filters caught the error. */
export type GpuErrorKind = "validation" | "out-of-memory" | "internal";

/** The GPU reported an error (invalid work, out of memory, internal): what it computed is void. */
export class GpuError extends Error {
  override name = "GpuError";
  constructor(readonly kind: GpuErrorKind, readonly during: string, detail: string) {
    super(
      `the GPU reported a${kind === "internal" ? "n" : ""} ${kind} error during ${during}: ` +
        `${detail}; the results of that work are invalid` +
        (kind === "out-of-memory" ? " (lower --expert-slots or --max-context)" : ""),
    );
  }
}

/** The filters every scope pushes, innermost last (popped in reverse). */
const FILTERS: GPUErrorFilter[] = ["validation", "out-of-memory", "internal"];

function kindOf(error: GPUError): GpuErrorKind {
  if (error instanceof GPUOutOfMemoryError) return "out-of-memory";
  if (error instanceof GPUInternalError) return "internal";
  return "validation";
}

/** Every numeric field of an adapter's limits, as a plain record. */
function numericLimits(limits: GPUSupportedLimits): Record<string, number> {
  const out: Record<string, number> = {};
  // GPUSupportedLimits exposes its fields as getters on the prototype: for..in sees them.
  for (const key in limits) {
    const v = (limits as unknown as Record<string, unknown>)[key];
    if (typeof v === "number") out[key] = v;
  }
  return out;
}

/** The latch, scopes and loss state of one device, behind the Gpu interface. */
class OpenedGpu implements Gpu {
  readonly lost: Promise<DeviceLostError>;
  readonly hasShaderF16: boolean;
  lostError: DeviceLostError | null = null;
  /** The first error not yet thrown by check(). */
  #latched: GpuError | null = null;
  /** Scopes not yet closed (their pops resolve once the GPU has judged the work inside). */
  #pending = new Set<Promise<unknown>>();

  constructor(
    readonly device: GPUDevice,
    readonly adapterInfo: GPUAdapterInfo,
    readonly limits: Record<string, number>,
    readonly features: string[],
  ) {
    this.hasShaderF16 = features.includes("shader-f16");
    this.lost = device.lost.then((info) => {
      const err = new DeviceLostError(String(info.reason), info.message);
      // "destroyed" is a destroy() call (the model's own, at close, or a test's); anything else
      // is news for the log
      if (info.reason !== "destroyed") console.error(err.message);
      this.lostError = err;
      return err;
    });
    device.addEventListener("uncapturederror", (ev) => {
      const error = (ev as GPUUncapturedErrorEvent).error;
      console.error(`WebGPU uncaptured error: ${error.message}`);
      this.#latch(new GpuError(kindOf(error), "GPU work", error.message));
    });
  }

  check(): void {
    if (this.lostError) throw this.lostError;
    const e = this.#latched;
    if (e) {
      this.#latched = null;
      throw e;
    }
  }

  scoped<T>(what: string, fn: () => T): T {
    for (const f of FILTERS) this.device.pushErrorScope(f);
    try {
      return fn();
    } finally {
      for (let i = 0; i < FILTERS.length; i++) {
        const pop: Promise<unknown> = this.device.popErrorScope().then((error) => {
          if (error) {
            console.error(`WebGPU error creating ${what}: ${error.message}`);
            this.#latch(new GpuError(kindOf(error), `creation of ${what}`, error.message));
          }
        }, () => {}); // a lost device rejects its pops: the loss itself is reported
        this.#pending.add(pop);
        pop.finally(() => this.#pending.delete(pop));
      }
    }
  }

  async settle(): Promise<void> {
    await Promise.all(this.#pending);
    this.check();
  }

  #latch(e: GpuError): void {
    this.#latched ??= e;
  }
}

/** The Gpu of each device openGpu() opened, for code that holds only the device. */
const byDevice = new WeakMap<GPUDevice, Gpu>();

/** gpu.scoped(what, fn) for the Gpu that owns `device`; just fn() for a device made elsewhere. */
export function scopedOn<T>(device: GPUDevice, what: string, fn: () => T): T {
  const gpu = byDevice.get(device);
  return gpu ? gpu.scoped(what, fn) : fn();
}

/** Features requested whenever the adapter offers them: subgroup operations and f16 arithmetic
 * for kernels that can use them, timestamp queries for per-kernel timing. */
export const OPTIONAL_FEATURES = ["subgroups", "shader-f16", "timestamp-query"] as const;

/** Opens a high-performance adapter and a device with all of its limits and every optional
 * feature it offers. */
export async function openGpu(): Promise<Gpu> {
  if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
    throw new WebGPUNotAvailableError("navigator.gpu is undefined");
  }
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new WebGPUNotAvailableError("requestAdapter() returned null");
  const limits = numericLimits(adapter.limits);
  const features: string[] = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f));
  const device = await adapter.requestDevice({
    requiredLimits: limits,
    requiredFeatures: features as GPUFeatureName[],
  });
  const gpu = new OpenedGpu(device, adapter.info, limits, features);
  byDevice.set(device, gpu);
  return gpu;
}
