/**
 * A Hugging Face model directory: config.json plus model.safetensors, or
 * model.safetensors.index.json whose weight_map names the shard of every tensor. Every shard is
 * memory-mapped; tensors are zero-copy views into the shards.
 */

import { readConfig } from "./config.ts";
import {
  entryView,
  type HeaderEntry,
  isSupportedDType,
  openSafetensors,
  type SafetensorsFile,
} from "./safetensors.ts";
import type { ModelConfig, TensorView } from "./types.ts";

/** Thrown when a checkpoint directory is incomplete or inconsistent. */
export class CheckpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CheckpointError";
  }
}

const SINGLE_FILE = "model.safetensors";
const INDEX_FILE = "model.safetensors.index.json";

/** One tensor of the checkpoint as its header describes it (any dtype, supported or not). */
export interface CheckpointEntry extends HeaderEntry {
  /** Path of the shard that holds it. */
  file: string;
}

/** An opened checkpoint. */
export interface Checkpoint {
  dir: string;
  config: ModelConfig;
  /** Every tensor with a supported dtype (F32, BF16, F16), by name. */
  tensors: Map<string, TensorView>;
  /** Every tensor in the checkpoint by name, supported dtype or not (for audits and errors). */
  entries: Map<string, CheckpointEntry>;
  /** The shard files, in the order opened. */
  files: SafetensorsFile[];
  /** Unmaps every shard; views into them must not be used afterwards. */
  close(): void;
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** A bare file name: joined to the checkpoint directory, it cannot point outside it. */
function isShardName(name: unknown): name is string {
  return typeof name === "string" && name !== "" && name !== "." && name !== ".." &&
    !/[\/\\\0]/.test(name);
}

/** The shard file names of dir, from the index when there is one. */
function shardNames(dir: string): { shards: string[]; weightMap: Record<string, string> | null } {
  const indexPath = `${dir}/${INDEX_FILE}`;
  if (exists(indexPath)) {
    let index: { weight_map?: unknown };
    try {
      index = JSON.parse(Deno.readTextFileSync(indexPath));
    } catch (e) {
      throw new CheckpointError(`${indexPath} is not valid JSON: ${(e as Error).message}`);
    }
    const map = index.weight_map;
    if (typeof map !== "object" || map === null) {
      throw new CheckpointError(`${indexPath} has no weight_map object; re-download the index`);
    }
    const weightMap = map as Record<string, string>;
    for (const [name, shard] of Object.entries(weightMap)) {
      if (!isShardName(shard)) {
        throw new CheckpointError(
          `${indexPath}: weight_map maps tensor ${name} to ${JSON.stringify(shard)}, which is ` +
            `not a file name: shards must sit beside the index (no "/", "\\" or "..")`,
        );
      }
    }
    return { shards: [...new Set(Object.values(weightMap))].sort(), weightMap };
  }
  if (exists(`${dir}/${SINGLE_FILE}`)) return { shards: [SINGLE_FILE], weightMap: null };
  throw new CheckpointError(
    `${dir} has neither ${SINGLE_FILE} nor ${INDEX_FILE}; download the model's safetensors files`,
  );
}

/** Opens a checkpoint directory: reads config.json and maps every shard. */
export function openCheckpoint(dir: string): Checkpoint {
  const config = readConfig(dir);
  const { shards, weightMap } = shardNames(dir);
  const files: SafetensorsFile[] = [];
  const closeAll = () => files.forEach((f) => f.close());
  try {
    for (const name of shards) {
      const path = `${dir}/${name}`;
      if (!exists(path)) {
        throw new CheckpointError(
          `${path} is missing (named in ${INDEX_FILE}); download every shard`,
        );
      }
      files.push(openSafetensors(path));
    }
    const entries = new Map<string, CheckpointEntry>();
    const tensors = new Map<string, TensorView>();
    for (const f of files) {
      for (const e of f.entries) {
        const prev = entries.get(e.name);
        if (prev !== undefined) {
          throw new CheckpointError(
            `tensor ${e.name} is in both ${prev.file} and ${f.path}; the checkpoint is inconsistent`,
          );
        }
        const shardName = f.path.slice(dir.length + 1);
        if (weightMap !== null && weightMap[e.name] !== shardName) {
          throw new CheckpointError(
            `tensor ${e.name} is in ${f.path} but ${INDEX_FILE} maps it to ` +
              `${JSON.stringify(weightMap[e.name])}; the index does not match the shards`,
          );
        }
        entries.set(e.name, { ...e, file: f.path });
        // Unsupported dtypes stay in entries only; the loader reports them if they are needed.
        if (isSupportedDType(e.dtype)) {
          tensors.set(e.name, entryView(e, f.file, f.dataStart, f.path));
        }
      }
    }
    if (weightMap !== null) {
      for (const [name, shard] of Object.entries(weightMap)) {
        if (!entries.has(name)) {
          throw new CheckpointError(
            `${INDEX_FILE} maps tensor ${name} to ${shard} but that shard does not hold it`,
          );
        }
      }
    }
    return { dir, config, tensors, entries, files, close: closeAll };
  } catch (e) {
    closeAll();
    throw e;
  }
}
