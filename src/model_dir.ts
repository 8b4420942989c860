/**
 * Opens a model directory for the runtime: a Hugging Face checkpoint (config.json +
 * safetensors) or, without --model, the default model embedded in weights/default/ (it travels
 * inside a `deno compile` binary via --include).
 */
import type { ModelWeights } from "./types.ts";
import { openCheckpoint } from "./checkpoint.ts";
import { type AuditReport, loadWeights } from "./weights.ts";

/** The embedded default model (a directory beside the sources, included in compiled binaries). */
export const DEFAULT_MODEL_DIR = new URL("../weights/default/", import.meta.url).pathname
  .replace(/\/$/, "");

export interface OpenedModel {
  dir: string;
  weights: ModelWeights;
  audit: AuditReport;
  close(): void;
}

/** Opens and audits a model directory (throws naming any missing or mis-shaped tensor). */
export function openModelDir(dir: string = DEFAULT_MODEL_DIR): OpenedModel {
  const ckpt = openCheckpoint(dir);
  try {
    const { weights, audit } = loadWeights(ckpt);
    return { dir, weights, audit, close: () => ckpt.close() };
  } catch (e) {
    ckpt.close();
    throw e;
  }
}
