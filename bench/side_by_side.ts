/** Opening one model several ways on one device, for benches that compare configurations. */
import { DEFAULT_MODEL_DIR, type OpenedModel, openModel, openModelDir } from "../src/model_dir.ts";
import { looksPacked } from "../src/packed_weights.ts";
import { GpuModel, type GpuModelOptions } from "../src/gpu/model.ts";
import { type Gpu, openGpu } from "../src/gpu/device.ts";

export interface SideBySide {
  opened: OpenedModel;
  gpu: Gpu;
  /** One model per option set, in order. */
  models: GpuModel[];
  /** Frees the models, the device and the opened weights. */
  close(): void;
}

/**
 * The embedded default model, or a fixture checkpoint opened as it is (openModel would pack it
 * into the user's cache), and one GpuModel per option set (experts from the model's own source).
 */
export async function openSideBySide(
  dir: string,
  optionSets: GpuModelOptions[],
): Promise<SideBySide> {
  // (packed directories open as they are; a fixture checkpoint too, unpacked)
  const opened = dir === DEFAULT_MODEL_DIR || looksPacked(dir)
    ? await openModel(dir)
    : openModelDir(dir);
  const gpu = await openGpu();
  const models: GpuModel[] = [];
  for (const o of optionSets) {
    models.push(await GpuModel.open(opened.weights, { gpu, expertSource: opened.experts, ...o }));
  }
  return {
    opened,
    gpu,
    models,
    close() {
      for (const m of models) m.destroy();
      gpu.device.destroy();
      opened.close();
    },
  };
}
