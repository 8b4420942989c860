/**
 * Reads GPU buffers back to the CPU through one reusable staging buffer (grown when a larger read
 * comes), with one submit and one mapAsync per read. Reads are serialised per device.
 */
import type { Gpu } from "./device.ts";

/** Copies go in multiples of 4 bytes (WebGPU rule for copyBufferToBuffer). */
const COPY_ALIGN = 4;

interface Staging {
  buffer: GPUBuffer | null;
  size: number;
  /** Tail of the queue of reads on this device: a new read starts after the previous one. */
  busy: Promise<unknown>;
}

const stagings = new WeakMap<GPUDevice, Staging>();

function stagingOf(device: GPUDevice): Staging {
  let s = stagings.get(device);
  if (!s) {
    s = { buffer: null, size: 0, busy: Promise.resolve() };
    stagings.set(device, s);
  }
  return s;
}

async function readBytes(
  gpu: Gpu,
  buffer: GPUBuffer,
  byteOffset: number,
  byteLength: number,
): Promise<ArrayBuffer> {
  const device = gpu.device;
  const s = stagingOf(device);
  const size = Math.ceil(byteLength / COPY_ALIGN) * COPY_ALIGN;
  const run = s.busy.catch(() => {}).then(async () => {
    if (!s.buffer || s.size < size) {
      s.buffer?.destroy();
      s.buffer = device.createBuffer({
        label: "readback.staging",
        size,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      s.size = size;
    }
    const staging = s.buffer;
    const encoder = device.createCommandEncoder({ label: "readback" });
    encoder.copyBufferToBuffer(buffer, byteOffset, staging, 0, size);
    device.queue.submit([encoder.finish()]);
    await staging.mapAsync(GPUMapMode.READ, 0, size);
    gpu.check();
    const copy = staging.getMappedRange(0, size).slice(0, byteLength);
    staging.unmap();
    return copy;
  });
  s.busy = run;
  return await run;
}

/** count f32 values of `buffer` starting at byteOffset (a multiple of 4). */
export async function readF32(
  gpu: Gpu,
  buffer: GPUBuffer,
  byteOffset: number,
  count: number,
): Promise<Float32Array> {
  return new Float32Array(await readBytes(gpu, buffer, byteOffset, count * 4));
}

/** count u32 values of `buffer` starting at byteOffset (a multiple of 4). */
export async function readU32(
  gpu: Gpu,
  buffer: GPUBuffer,
  byteOffset: number,
  count: number,
): Promise<Uint32Array> {
  return new Uint32Array(await readBytes(gpu, buffer, byteOffset, count * 4));
}
