/**
 * GGUF models split by llama.cpp's gguf-split: files `NAME-00001-of-00003.gguf`, ..., each a whole
 * GGUF file holding some of the tensors, with `split.no` (0-based), `split.count` and
 * `split.tensors.count` (tensors in all files) in its metadata; the first file holds the model's
 * metadata. Opening any one of them opens all; a missing file is named. A file without
 * `split.count` (or with 1) is a whole model on its own.
 */

import { basename, dirname, join, resolve } from "node:path";
import { type GgufFile, type GgufTensorInfo, openGgufFile } from "./file.ts";
import { getInt, type GgufMetadata } from "./metadata.ts";

/** The files of a split model are missing, misnamed or inconsistent with each other. */
export class GgufSplitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GgufSplitError";
  }
}

/** Metadata keys of split files (llama-arch.cpp LLM_KV_SPLIT_*). */
export const SPLIT_KEYS = {
  no: "split.no",
  count: "split.count",
  tensors: "split.tensors.count",
} as const;

/** gguf-split's file names (llama_split_path: "%s-%05d-of-%05d.gguf", numbered from 1). */
const SPLIT_NAME = /^(.*)-(\d{5})-of-(\d{5})\.gguf$/;

/** The name of split `no` (1-based) of `count` with this prefix (a path without the suffix). */
export function splitPath(prefix: string, no: number, count: number): string {
  const pad = (n: number) => String(n).padStart(5, "0");
  return `${prefix}-${pad(no)}-of-${pad(count)}.gguf`;
}

/** One tensor of the model and the file that holds it. */
export interface GgufTensorRef {
  info: GgufTensorInfo;
  file: GgufFile;
}

/** A whole GGUF model: one file, or every file of a split model. */
export interface GgufModel {
  /** The first file's path. */
  path: string;
  /** The files in split order (one for an unsplit model). */
  files: GgufFile[];
  /** The model's metadata (the first file's). */
  metadata: GgufMetadata;
  /** Every tensor of every file by name. */
  tensors: Map<string, GgufTensorRef>;
  /** Zero-copy bytes of a tensor. */
  data(ref: GgufTensorRef): Uint8Array;
  /** Unmaps every file; views into them must not be used afterwards. */
  close(): void;
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** The split count the file declares (1 when it has none). */
function declaredCount(f: GgufFile): number {
  return getInt(f.metadata, SPLIT_KEYS.count, f.path) ?? 1;
}

/** The paths of every file of the model the given file belongs to, first split first. */
function modelPaths(given: GgufFile): string[] {
  const count = declaredCount(given);
  const m = SPLIT_NAME.exec(basename(given.path));
  const namedCount = m === null ? 1 : Number(m[3]);
  if (count <= 1 && namedCount <= 1) return [given.path];
  if (count !== namedCount) {
    throw new GgufSplitError(
      `${given.path}: its ${SPLIT_KEYS.count} metadata is ${count} but its name says ` +
        `${namedCount} files; keep the names gguf-split gave (NAME-00001-of-0000N.gguf)`,
    );
  }
  const prefix = join(dirname(given.path), m![1]);
  const paths = Array.from({ length: count }, (_, i) => splitPath(prefix, i + 1, count));
  const missing = paths.filter((p) => !exists(p));
  if (missing.length > 0) {
    throw new GgufSplitError(
      `${given.path} is split ${Number(m![2])} of a model in ${count} files but ` +
        `${missing.join(", ")} ${missing.length === 1 ? "is" : "are"} missing; download every ` +
        `split into the same directory`,
    );
  }
  return paths;
}

/** Checks split i of the model (0-based) says so. */
function checkSplit(f: GgufFile, i: number, count: number): void {
  const no = getInt(f.metadata, SPLIT_KEYS.no, f.path);
  const n = declaredCount(f);
  if (no !== i || n !== count) {
    throw new GgufSplitError(
      `${f.path}: ${SPLIT_KEYS.no} ${no} of ${SPLIT_KEYS.count} ${n}, but its name makes it ` +
        `split ${i} of ${count}; the files are from different models or renamed: download again`,
    );
  }
}

/** Opens a GGUF model from any one of its files (or its only file). */
export function openGgufModel(path: string): GgufModel {
  const given = openGgufFile(path);
  let files: GgufFile[] = [given];
  const closeAll = () => {
    files.forEach((f) => f.close());
    given.close(); // idempotent; it is one of files once they are open
  };
  try {
    const paths = modelPaths(given);
    if (paths.length > 1) {
      // The given file is one of them: its own name gave the others'.
      files = [];
      for (const p of paths) files.push(resolve(p) === resolve(path) ? given : openGgufFile(p));
      files.forEach((f, i) => checkSplit(f, i, paths.length));
    }
    const tensors = new Map<string, GgufTensorRef>();
    for (const file of files) {
      for (const info of file.tensors) {
        const prev = tensors.get(info.name);
        if (prev !== undefined) {
          throw new GgufSplitError(
            `tensor ${info.name} is in both ${prev.file.path} and ${file.path}; the splits are ` +
              `from different models: download them again`,
          );
        }
        tensors.set(info.name, { info, file });
      }
    }
    const first = files[0];
    const total = getInt(first.metadata, SPLIT_KEYS.tensors, first.path);
    if (files.length > 1 && total !== tensors.size) {
      throw new GgufSplitError(
        `${first.path}: ${SPLIT_KEYS.tensors} is ${total} but the ${files.length} splits hold ` +
          `${tensors.size} tensors; a split is damaged or from another model: download again`,
      );
    }
    return {
      path: first.path,
      files,
      metadata: first.metadata,
      tensors,
      data: (ref) => ref.file.data(ref.info),
      close: closeAll,
    };
  } catch (e) {
    closeAll();
    throw e;
  }
}
