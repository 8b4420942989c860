/** Helpers shared by the expert pool and cache tests. */
import { parseConfig } from "../src/config.ts";
import type { GpuModel } from "../src/gpu/model.ts";
import type { ModelConfig } from "../src/types.ts";

/** A model config with L layers of E experts, top-k K (hidden 64, intermediate 32, vocab 64). */
export function expertConfig(L: number, E: number, K: number): ModelConfig {
  return parseConfig({
    model_type: "qwen3_moe",
    vocab_size: 64,
    hidden_size: 64,
    num_hidden_layers: L,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    head_dim: 32,
    num_experts: E,
    num_experts_per_tok: K,
    moe_intermediate_size: 32,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    norm_topk_prob: true,
    max_position_embeddings: 64,
  }, "test config");
}

/** Prefill logits of `prompt` (all rows), then decode logits of `decode`, one token at a time. */
export async function promptThenDecode(
  model: GpuModel,
  prompt: number[],
  decode: number[],
): Promise<Float32Array[]> {
  const s = model.newSession();
  const rows = await s.forward(prompt);
  for (const id of decode) rows.push(...await s.forward([id]));
  s.free();
  return rows;
}

/**
 * Bytes [offset, offset + size) of a storage buffer (pools have no COPY_SRC: a compute pass
 * copies the range the way the kernels bind it, then it is mapped).
 */
export async function readStorage(
  device: GPUDevice,
  buffer: GPUBuffer,
  offset: number,
  size: number,
): Promise<Uint8Array> {
  const module = device.createShaderModule({
    code: `
      @group(0) @binding(0) var<storage, read> src: array<u32>;
      @group(0) @binding(1) var<storage, read_write> dst: array<u32>;
      @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3u) {
        if (id.x < arrayLength(&dst)) { dst[id.x] = src[id.x]; }
      }`,
  });
  const pipeline = device.createComputePipeline({
    layout: "auto",
    compute: { module, entryPoint: "main" },
  });
  const dst = device.createBuffer({
    size,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
  });
  const read = device.createBuffer({
    size,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const bind = device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [
      { binding: 0, resource: { buffer, offset, size } },
      { binding: 1, resource: { buffer: dst } },
    ],
  });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bind);
  pass.dispatchWorkgroups(Math.ceil(size / 4 / 64));
  pass.end();
  enc.copyBufferToBuffer(dst, 0, read, 0, size);
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const bytes = new Uint8Array(read.getMappedRange()).slice();
  read.unmap();
  read.destroy();
  dst.destroy();
  return bytes;
}
