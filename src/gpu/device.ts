/**
 * Opens the WebGPU device the runtime runs on, with the adapter's own limits (not the WebGPU
 * defaults: llvmpipe and real GPUs allow far larger storage bindings than the 128 MiB default).
 * Device loss and uncaptured validation errors are reported on stderr, never swallowed.
 */

/** The opened device and what we learned about it. */
export interface Gpu {
  device: GPUDevice;
  adapterInfo: GPUAdapterInfo;
  /** The limits the device was created with (a copy of the adapter's numeric limits). */
  limits: Record<string, number>;
  /** Whether the adapter offers shader-f16 (reported only; no kernel relies on it). */
  hasShaderF16: boolean;
  /** Resolves when the device is lost (its reason), so callers can fail their pending work. */
  lost: Promise<DeviceLostError>;
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
    super(`the WebGPU device was lost (${reason}: ${detail}); restart the process to recover`);
  }
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

/** Opens a high-performance adapter and a device with all of its limits. */
export async function openGpu(): Promise<Gpu> {
  if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
    throw new WebGPUNotAvailableError("navigator.gpu is undefined");
  }
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new WebGPUNotAvailableError("requestAdapter() returned null");
  const limits = numericLimits(adapter.limits);
  const hasShaderF16 = adapter.features.has("shader-f16");
  const device = await adapter.requestDevice({ requiredLimits: limits });
  const lost = device.lost.then((info) => {
    const err = new DeviceLostError(String(info.reason), info.message);
    // "destroyed" is our own device.destroy(); anything else is news.
    if (info.reason !== "destroyed") console.error(err.message);
    return err;
  });
  device.addEventListener("uncapturederror", (ev) => {
    const error = (ev as GPUUncapturedErrorEvent).error;
    console.error(`WebGPU uncaptured error: ${error.message}`);
  });
  return { device, adapterInfo: adapter.info, limits, hasShaderF16, lost };
}
