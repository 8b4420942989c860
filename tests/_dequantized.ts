/** Test helper: a model's weights as the GPU holds them, dequantized exactly, written as an F32
 * Hugging Face checkpoint, so the float64 reference runs on the very same values. */
import { join } from "node:path";
import { encodeFloats, toFloat32 } from "../src/dtype.ts";
import { type TensorToWrite, writeSafetensors } from "../src/safetensors.ts";
import { LAYER_TENSORS } from "../src/weights.ts";
import type { ModelWeights, TensorView } from "../src/types.ts";

/** Every tensor of w, dequantized, as an F32 Hugging Face checkpoint beside config.json. */
export async function writeDequantized(
  w: ModelWeights,
  configFrom: string,
  dir: string,
): Promise<void> {
  const tensors: TensorToWrite[] = [];
  const add = (v: TensorView) =>
    tensors.push({
      name: v.name,
      dtype: "F32",
      shape: v.shape,
      data: encodeFloats(toFloat32(v), "F32"),
    });
  add(w.embed);
  w.layers.forEach((layer) => {
    for (const key of Object.keys(LAYER_TENSORS) as (keyof typeof LAYER_TENSORS)[]) add(layer[key]);
    for (let e = 0; e < w.config.numExperts; e++) {
      const x = layer.expert(e);
      add(x.gate);
      add(x.up);
      add(x.down);
    }
  });
  add(w.finalNorm);
  if (!w.config.tieWordEmbeddings) add(w.lmHead);
  await Deno.mkdir(dir, { recursive: true });
  await writeSafetensors(join(dir, "model.safetensors"), tensors);
  await Deno.copyFile(join(configFrom, "config.json"), join(dir, "config.json"));
}
