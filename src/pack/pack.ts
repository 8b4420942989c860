/**
 * Packs a Hugging Face checkpoint into the packed format (format.ts). The checkpoint is validated
 * by the loader first (every missing or misshaped tensor is refused by name), then streamed tensor
 * by tensor from its memory-mapped shards into a hidden sibling temp directory, which is renamed
 * onto outDir only when complete: an interrupted pack leaves no directory that loads. The heap
 * never holds more than a padding buffer; a checkpoint larger than RAM packs.
 */

import { basename, dirname, join } from "node:path";
import type { ExpertWeights, ModelWeights, TensorView } from "../types.ts";
import { EXPERT_TENSORS, LAYER_TENSORS } from "../weights.ts";
import { openPackInput } from "./input.ts";
import { Quantizer, type QuantOptions } from "./quantize.ts";
import {
  alignUp,
  BASE_ALIGN,
  BASE_FILE,
  type BaseTensorEntry,
  CHECKSUM_ALGORITHM,
  type CopiedFile,
  createRecordHasher,
  type ExpertRecord,
  EXPERTS_FILE,
  FORMAT_NAME,
  FORMAT_VERSION,
  type PackManifest,
  RECORD_ALIGN,
  recordBytesOf,
  type RecordPart,
  type RecordParts,
  type UnsealedManifest,
} from "./format.ts";
import { isPackedDir, looksPacked, writeManifest } from "./manifest.ts";
import { type ProgressFn, terminalProgress } from "./progress.ts";

/** Thrown when a pack cannot start or its input cannot be packed. */
export class PackError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PackError";
  }
}

export interface PackOptions {
  /** Called after each tensor or record is written; throwing aborts and cleans up. */
  onProgress?: ProgressFn;
  /** Replace an existing outDir (only once the new one is complete). */
  force?: boolean;
  /** Store experts (and with `base` the projections and lm_head) in GGML quantized types. */
  quant?: QuantOptions;
}

export interface PackResult {
  outDir: string;
  manifest: PackManifest;
  /** Tensor bytes written (padding excluded). */
  baseBytes: number;
  expertBytes: number;
  seconds: number;
}

/** Marks temp dirs: ".NAME.packing-PID" beside outDir. */
const TEMP_TAG = ".packing-";
/** Zeros for alignment padding (larger than both alignments). */
const ZEROS = new Uint8Array(RECORD_ALIGN);

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

function isEmptyDir(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory && [...Deno.readDirSync(path)].length === 0;
  } catch {
    return false;
  }
}

/** A packed model, possibly with a damaged manifest (then its data files are there too). */
function isReplaceable(dir: string): boolean {
  return isPackedDir(dir) ||
    (looksPacked(dir) && exists(join(dir, BASE_FILE)) && exists(join(dir, EXPERTS_FILE)));
}

function pidAlive(pid: number): boolean {
  return pid === Deno.pid || exists(`/proc/${pid}`);
}

/** Removes temp dirs of earlier packs to the same outDir whose process is gone. */
function cleanStaleTemps(outDir: string): void {
  const parent = dirname(outDir), prefix = `.${basename(outDir)}${TEMP_TAG}`;
  for (const e of Deno.readDirSync(parent)) {
    if (!e.name.startsWith(prefix)) continue;
    const pid = Number(e.name.slice(prefix.length));
    if (Number.isSafeInteger(pid) && !pidAlive(pid)) {
      Deno.removeSync(join(parent, e.name), { recursive: true });
    }
  }
}

/** Sequential file writer that tracks its position and pads to alignments. */
class Writer {
  private f: Deno.FsFile;
  pos = 0;
  constructor(readonly path: string) {
    this.f = Deno.openSync(path, { write: true, createNew: true });
  }
  write(data: Uint8Array): void {
    let done = 0;
    while (done < data.length) done += this.f.writeSync(data.subarray(done));
    this.pos += data.length;
  }
  padTo(align: number): void {
    const n = alignUp(this.pos, align) - this.pos;
    if (n > 0) this.write(ZEROS.subarray(0, n));
  }
  /** Flushes to disk (the rename that publishes the pack must not outrun the data). */
  finish(): void {
    this.f.syncDataSync();
    this.f.close();
  }
  close(): void {
    try {
      this.f.close();
    } catch {
      // already closed by finish()
    }
  }
}

/** The non-expert tensors in file order, with their audit role. A tied lm_head is not listed. */
function baseTensors(w: ModelWeights): { view: TensorView; role: string; layer?: number }[] {
  const out: { view: TensorView; role: string; layer?: number }[] = [
    { view: w.embed, role: "embed" },
  ];
  w.layers.forEach((layer, l) => {
    for (const key of Object.keys(LAYER_TENSORS) as (keyof typeof LAYER_TENSORS)[]) {
      out.push({ view: layer[key], role: LAYER_TENSORS[key].role, layer: l });
    }
  });
  out.push({ view: w.finalNorm, role: "final_norm" });
  if (!w.config.tieWordEmbeddings) out.push({ view: w.lmHead, role: "lm_head" });
  return out;
}

function partOf(t: TensorView, offset: number): RecordPart {
  return { offset, bytes: t.bytes.length, shape: t.shape, dtype: t.dtype };
}

/** gate | up | down parts of an expert as stored. */
function partsFor(x: ExpertWeights): RecordParts {
  return {
    gate: partOf(x.gate, 0),
    up: partOf(x.up, x.gate.bytes.length),
    down: partOf(x.down, x.gate.bytes.length + x.up.bytes.length),
  };
}

function sameParts(a: RecordParts, b: RecordParts): boolean {
  return (["gate", "up", "down"] as const).every((k) =>
    a[k].dtype === b[k].dtype && a[k].bytes === b[k].bytes && a[k].offset === b[k].offset
  );
}

/** Packs the checkpoint in inDir into outDir (see the module doc). */
export async function pack(
  inDir: string,
  outDir: string,
  opts: PackOptions = {},
): Promise<PackResult> {
  const t0 = performance.now();
  if (exists(outDir)) {
    if (!opts.force) {
      throw new PackError(`${outDir} already exists; pass --force to replace it, or pick another`);
    }
    if (Deno.realPathSync(outDir) === Deno.realPathSync(inDir)) {
      throw new PackError(`--out ${outDir} is the input checkpoint; pick another directory`);
    }
    if (!isReplaceable(outDir) && !isEmptyDir(outDir)) {
      throw new PackError(
        `${outDir} exists and is not a packed model; --force only replaces packed models, ` +
          `so remove it yourself or pick another directory`,
      );
    }
  }
  const input = await openPackInput(inDir);
  let tmp: string | null = null;
  try {
    const { weights, rawConfig } = input;
    const c = weights.config;
    Deno.mkdirSync(dirname(outDir), { recursive: true });
    cleanStaleTemps(outDir);
    tmp = join(dirname(outDir), `.${basename(outDir)}${TEMP_TAG}${Deno.pid}`);
    if (exists(tmp)) Deno.removeSync(tmp, { recursive: true }); // left by a reused pid
    Deno.mkdirSync(tmp);

    const quant = new Quantizer(opts.quant ?? {}, c.tieWordEmbeddings);
    const stored = (x: ExpertWeights): ExpertWeights => ({
      gate: quant.apply(x.gate, EXPERT_TENSORS.gate.role, "gate"),
      up: quant.apply(x.up, EXPERT_TENSORS.up.role, "up"),
      down: quant.apply(x.down, EXPERT_TENSORS.down.role, "down"),
    });
    const base = baseTensors(weights);
    // each layer's parts from its expert 0 (GGUF files may store layers in different types)
    const layerParts = weights.layers.map((layer) => partsFor(stored(layer.expert(0))));
    const parts = layerParts[0];
    const uniform = layerParts.every((p) => sameParts(p, parts));
    const baseTotal = base.reduce((a, b) => a + quant.storedBytes(b.view, b.role), 0);
    const expertTotal = layerParts.reduce((a, p) => a + recordBytesOf(p), 0) * c.numExperts;
    const totalBytes = baseTotal + expertTotal;
    const report = opts.onProgress ?? (() => {});

    const hasher = await createRecordHasher();

    // base.bin
    const tensors: Record<string, BaseTensorEntry> = {};
    const bw = new Writer(join(tmp, BASE_FILE));
    try {
      let done = 0;
      for (const { view: source, role, layer } of base) {
        const view = quant.apply(source, role);
        bw.padTo(BASE_ALIGN);
        tensors[view.name] = {
          offset: bw.pos,
          bytes: view.bytes.length,
          shape: view.shape,
          dtype: view.dtype,
          role,
          ...(layer === undefined ? {} : { layer }),
          checksum: hasher.digest([view.bytes]),
        };
        bw.write(view.bytes);
        done += view.bytes.length;
        report({ phase: "base", doneBytes: done, totalBytes });
      }
      bw.finish();
    } finally {
      bw.close();
    }

    // experts.bin
    const records: ExpertRecord[] = [];
    const xw = new Writer(join(tmp, EXPERTS_FILE));
    try {
      let done = baseTotal;
      for (let l = 0; l < c.numLayers; l++) {
        const lp = layerParts[l], recordBytes = recordBytesOf(lp);
        for (let e = 0; e < c.numExperts; e++) {
          const x = stored(weights.layers[l].expert(e));
          for (const k of ["gate", "up", "down"] as const) {
            const t = x[k], p = lp[k];
            if (t.dtype !== p.dtype || t.bytes.length !== p.bytes) {
              throw new PackError(
                `tensor ${t.name} is ${t.dtype} (${t.bytes.length} B) but layer ${l} expert 0's ` +
                  `${k} is ${p.dtype} (${p.bytes} B); convert the checkpoint to one dtype per ` +
                  `layer's experts`,
              );
            }
          }
          xw.padTo(RECORD_ALIGN);
          const offset = xw.pos;
          const checksum = hasher.digest([x.gate.bytes, x.up.bytes, x.down.bytes]);
          xw.write(x.gate.bytes);
          xw.write(x.up.bytes);
          xw.write(x.down.bytes);
          records.push({ layer: l, expert: e, offset, length: recordBytes, checksum });
          done += recordBytes;
          report({ phase: "experts", doneBytes: done, totalBytes });
        }
      }
      xw.padTo(RECORD_ALIGN); // the last record ends on a page too
      xw.finish();
    } finally {
      xw.close();
    }

    const copied: CopiedFile[] = [];
    for (const [name, bytes] of input.files) {
      Deno.writeFileSync(join(tmp, name), bytes);
      copied.push({ name, bytes: bytes.length, checksum: hasher.digest([bytes]) });
    }

    const unsealed: UnsealedManifest = {
      format: FORMAT_NAME,
      version: FORMAT_VERSION,
      config: rawConfig,
      source: inDir,
      base: {
        file: BASE_FILE,
        bytes: bw.pos,
        alignment: BASE_ALIGN,
        checksum: CHECKSUM_ALGORITHM,
        tensors,
      },
      experts: {
        file: EXPERTS_FILE,
        bytes: xw.pos,
        alignment: RECORD_ALIGN,
        checksum: CHECKSUM_ALGORITHM,
        numLayers: c.numLayers,
        numExperts: c.numExperts,
        parts,
        ...(uniform ? {} : { layerParts }),
        records,
      },
      skipped: input.skipped,
      copied,
      ...(quant.active ? { quantization: quant.record() } : {}),
    };
    // last: a dir without it is not a packed model
    const manifest: PackManifest = await writeManifest(tmp, unsealed);
    publish(tmp, outDir);
    tmp = null;
    return {
      outDir,
      manifest,
      baseBytes: baseTotal,
      expertBytes: expertTotal,
      seconds: (performance.now() - t0) / 1000,
    };
  } finally {
    input.close();
    if (tmp !== null) Deno.removeSync(tmp, { recursive: true });
  }
}

/** Renames the finished temp dir onto outDir; an old outDir (force) is removed only after. */
function publish(tmp: string, outDir: string): void {
  if (!exists(outDir)) {
    Deno.renameSync(tmp, outDir);
    return;
  }
  const old = join(dirname(outDir), `.${basename(outDir)}.replaced-${Deno.pid}`);
  Deno.renameSync(outDir, old);
  Deno.renameSync(tmp, outDir);
  Deno.removeSync(old, { recursive: true });
}

/** `main.ts pack --in HF_DIR --out PACKED_DIR [--force]`: packs with terminal progress. */
export async function runPackCommand(
  args: { in: string; out: string; force?: boolean; quant?: QuantOptions },
): Promise<PackResult> {
  const progress = terminalProgress();
  let result: PackResult;
  try {
    result = await pack(args.in, args.out, {
      force: args.force,
      quant: args.quant,
      onProgress: progress?.onProgress,
    });
  } finally {
    progress?.finish();
  }
  const x = result.manifest.experts;
  console.log(
    `packed ${args.in} -> ${args.out}: base ${(result.baseBytes / 1e6).toFixed(1)} MB, ` +
      `experts ${(result.expertBytes / 1e6).toFixed(1)} MB (${x.numLayers} layers x ` +
      `${x.numExperts} experts), ${result.seconds.toFixed(1)} s`,
  );
  for (const f of result.manifest.quantization?.fallbacks ?? []) {
    console.log(`  ${f.tensor}: ${f.used} instead of ${f.wanted} (${f.reason})`);
  }
  return result;
}
