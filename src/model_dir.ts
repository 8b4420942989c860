/**
 * Opens a model directory for the runtime. Three kinds:
 * - a packed directory (manifest.json, base.bin, experts.bin; made by `main.ts pack`), recognised
 *   by its manifest.json even when that is damaged (the error then names manifest.json): the
 *   manifest and every base tensor are checksum-verified at open, experts are memory-mapped from
 *   experts.bin and checksum-verified on first load;
 * - a Hugging Face checkpoint (config.json + safetensors), or a GGUF model (a .gguf file, the
 *   first file of a split one, or a folder holding one): the runtime packs it once into a cache
 *   directory first and says so on stderr (audit reads the checkpoint directly);
 * - nothing given: the default model embedded in weights/default/ (a packed directory that
 *   travels inside a `deno compile` binary via --include).
 */
import { dirname, join, resolve } from "node:path";
import { createHash } from "node:crypto";
import type { ModelWeights } from "./types.ts";
import { openCheckpoint } from "./checkpoint.ts";
import { type AuditReport, loadWeights } from "./weights.ts";
import { looksPacked, openPacked } from "./packed_weights.ts";
import { pack } from "./pack/pack.ts";
import { terminalProgress } from "./pack/progress.ts";
import { ggufPath } from "./pack/input.ts";
import { COPIED_FILES } from "./pack/format.ts";
import { openGguf } from "./gguf/qwen3moe.ts";
import type { ExpertSource } from "./gpu/expert_cache.ts";

/** The embedded default model (a packed directory beside the sources). */
export const DEFAULT_MODEL_DIR = new URL("../weights/default/", import.meta.url).pathname
  .replace(/\/$/, "");

/** Thrown when a --model directory is neither a packed model nor a checkpoint. */
export class ModelDirError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ModelDirError";
  }
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

export interface OpenedModel {
  dir: string;
  weights: ModelWeights;
  audit: AuditReport;
  /** The packed expert file when the model is packed; else experts come from the checkpoint. */
  experts?: ExpertSource;
  close(): void;
}

/** Opens and audits a Hugging Face checkpoint or a GGUF model directly (throws naming any bad
 * tensor). */
export function openModelDir(dir: string): OpenedModel {
  const gguf = ggufPath(dir);
  const ckpt = gguf === null ? openCheckpoint(dir) : openGguf(gguf);
  try {
    const { weights, audit } = loadWeights(ckpt);
    return { dir, weights, audit, close: () => ckpt.close() };
  } catch (e) {
    ckpt.close();
    throw e;
  }
}

/** Where raw checkpoints are packed: $MOE_PACK_CACHE, else ~/.cache/moe-runtime/packed. */
export function packCacheRoot(): string {
  const env = Deno.env.get("MOE_PACK_CACHE");
  if (env) return env;
  const home = Deno.env.get("XDG_CACHE_HOME") ?? join(Deno.env.get("HOME") ?? ".", ".cache");
  return join(home, "moe-runtime", "packed");
}

/** A cache key for a checkpoint: its real path and the name, size and mtime of each file the
 * packer reads (a directory's files; for a GGUF file, the .gguf files beside it, so its other
 * splits count, and the tokenizer files). */
function checkpointKey(path: string): string {
  const real = Deno.realPathSync(path);
  const isGguf = Deno.statSync(real).isFile;
  const dir = isGguf ? dirname(real) : real;
  const h = createHash("sha256").update(real);
  const names = [...Deno.readDirSync(dir)].map((e) => e.name)
    .filter((n) => !isGguf || n.endsWith(".gguf") || COPIED_FILES.includes(n))
    .sort();
  for (const name of names) {
    const st = Deno.statSync(join(dir, name));
    h.update(`\0${name}\0${st.size}\0${st.mtime?.getTime() ?? 0}`);
  }
  const base = real.split("/").filter(Boolean).pop() ?? "model";
  return `${base}-${h.digest("hex").slice(0, 16)}`;
}

/**
 * Opens any model directory for inference (see the module comment); undefined means the
 * embedded default model.
 */
export async function openModel(dir: string = DEFAULT_MODEL_DIR): Promise<OpenedModel> {
  let packedDir = dir;
  if (!looksPacked(dir)) {
    const gguf = ggufPath(dir);
    if (gguf === null && !isFile(join(dir, "config.json"))) {
      throw new ModelDirError(
        `${dir} has neither manifest.json (a packed model), config.json (a Hugging Face ` +
          `checkpoint) nor a .gguf file; pass the model's directory or GGUF file to --model`,
      );
    }
    packedDir = join(packCacheRoot(), checkpointKey(gguf ?? dir));
    if (!looksPacked(packedDir)) {
      console.error(
        `${dir} is a ${gguf === null ? "Hugging Face" : "GGUF"} checkpoint: packing it once ` +
          `into ${packedDir} (run \`main.ts pack --in ${dir} --out DIR\` to choose the place)`,
      );
      const progress = terminalProgress();
      try {
        await pack(resolve(dir), packedDir, { onProgress: progress?.onProgress });
      } finally {
        progress?.finish();
      }
    } else {
      console.error(`${dir}: using its packed copy in ${packedDir}`);
    }
  }
  const p = await openPacked(packedDir);
  return {
    dir: packedDir,
    weights: p.weights,
    audit: p.audit,
    experts: p.experts,
    close: () => p.close(),
  };
}
