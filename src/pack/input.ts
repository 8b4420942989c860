/**
 * What `main.ts pack --in PATH` reads: a Hugging Face checkpoint directory, a packed model (to
 * re-pack it, e.g. quantized), or a GGUF file (or a folder holding one GGUF model, possibly split).
 * Each gives the audited weights, the config.json object the manifest records, and the tokenizer
 * and generation files to copy.
 */
import { join } from "node:path";
import { openCheckpoint } from "../checkpoint.ts";
import type { AuditEntry } from "../weights.ts";
import { loadWeights } from "../weights.ts";
import type { ModelWeights } from "../types.ts";
import { openPacked } from "../packed_weights.ts";
import { looksPacked, readManifest } from "./manifest.ts";
import { COPIED_FILES } from "./format.ts";
import { ggufConfigJson, openGguf } from "../gguf/qwen3moe.ts";
import { GgufTokenizerError, ggufTokenizerFiles } from "../gguf/tokenizer.ts";
import { GgufMetadataError } from "../gguf/metadata.ts";

/** Thrown when a folder holds GGUF files of more than one model. */
export class GgufLocateError extends Error {
  override name = "GgufLocateError";
}

const SPLIT_SUFFIX = /-\d{5}-of-\d{5}\.gguf$/;

/** The GGUF file to open for `path`: the path itself when it is a .gguf file, else the one GGUF
 * model in a folder without config.json or manifest.json (the first file of a split model);
 * null when path is not a GGUF model. */
export function ggufPath(path: string): string | null {
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(path);
  } catch {
    return null;
  }
  if (st.isFile) return path.endsWith(".gguf") ? path : null;
  if (!st.isDirectory || isFile(join(path, "config.json")) || looksPacked(path)) return null;
  const names = [...Deno.readDirSync(path)]
    .filter((e) => e.isFile && e.name.endsWith(".gguf"))
    .map((e) => e.name)
    .sort();
  const models = [...new Set(names.map((n) => n.replace(SPLIT_SUFFIX, ".gguf")))];
  if (models.length === 0) return null;
  if (models.length > 1) {
    throw new GgufLocateError(
      `${path} holds GGUF files of ${models.length} models (${models.join(", ")}); pass the file ` +
        `to use with --model or --in`,
    );
  }
  return join(path, names[0]);
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

export interface PackInput {
  weights: ModelWeights;
  /** Source tensors not used by the model (recorded as skipped). */
  skipped: AuditEntry[];
  /** The config.json object recorded in the manifest. */
  rawConfig: unknown;
  /** Tokenizer and generation files to copy, by name (a subset of COPIED_FILES). */
  files: Map<string, Uint8Array>;
  close(): void;
}

function readCopied(dir: string): Map<string, Uint8Array> {
  const files = new Map<string, Uint8Array>();
  for (const name of COPIED_FILES) {
    try {
      files.set(name, Deno.readFileSync(join(dir, name))); // small text files
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  return files;
}

/** A GGUF model: its tensors under HF names, config.json from its metadata, and the tokenizer
 * files beside it when there are any, else rebuilt from its tokenizer metadata. */
function openGgufInput(file: string): PackInput {
  const ckpt = openGguf(file);
  try {
    const { weights, audit } = loadWeights(ckpt); // refuses bad input, naming each tensor
    const meta = ckpt.gguf.metadata;
    const infos = new Map([...ckpt.gguf.tensors].map(([name, ref]) => [name, ref.info]));
    const rawConfig = ggufConfigJson(meta, infos, file);
    const files = readCopied(ckpt.dir);
    if (!files.has("tokenizer.json")) {
      try {
        const t = ggufTokenizerFiles(meta, file);
        const text = new TextEncoder();
        files.set("tokenizer.json", text.encode(JSON.stringify(t.tokenizer)));
        files.set("tokenizer_config.json", text.encode(JSON.stringify(t.config, null, 2)));
      } catch (e) {
        if (!(e instanceof GgufTokenizerError || e instanceof GgufMetadataError)) throw e;
        // the weights are usable by token ids; text commands will say the tokenizer is missing
        console.error(`${file}: no tokenizer packed: ${e.message}`);
      }
    }
    return { weights, skipped: audit.skipped, rawConfig, files, close: () => ckpt.close() };
  } catch (e) {
    ckpt.close();
    throw e;
  }
}

/** Opens the input of a pack (see the module doc); throws naming what is wrong with it. */
export async function openPackInput(path: string): Promise<PackInput> {
  const gguf = ggufPath(path);
  if (gguf !== null) return openGgufInput(gguf);
  if (looksPacked(path)) {
    const manifest = await readManifest(path);
    const p = await openPacked(path);
    return {
      weights: p.weights,
      skipped: manifest.skipped,
      rawConfig: manifest.config,
      files: readCopied(path),
      close: () => p.close(),
    };
  }
  const ckpt = openCheckpoint(path);
  try {
    const { weights, audit } = loadWeights(ckpt); // refuses bad input, naming each tensor
    const rawConfig = JSON.parse(Deno.readTextFileSync(join(path, "config.json")));
    return {
      weights,
      skipped: audit.skipped,
      rawConfig,
      files: readCopied(path),
      close: () => ckpt.close(),
    };
  } catch (e) {
    ckpt.close();
    throw e;
  }
}
