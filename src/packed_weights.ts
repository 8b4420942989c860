/**
 * Opens a packed model directory (src/pack/format.ts) as ModelWeights: non-expert tensors are
 * zero-copy views into the mapped base.bin, and `layers[l].expert(e)` hands out views into the
 * expert store's record (mapped experts.bin, checksum-verified on first use). The audit has the
 * loader's shape, so `audit` and the server report packed and checkpoint models alike.
 *
 * Nothing unverified reaches a caller: the manifest is checked (fields and its own checksum),
 * base.bin's size and every base tensor's checksum, and every copied file's, before openPacked
 * returns; expert records are verified on their first read. Each failure is a named error that
 * names the file and the tensor or field (ManifestError, PackedFileError, TensorChecksumError,
 * FileChecksumError, ExpertStoreError, ExpertChecksumError).
 */

import { parseConfig } from "./config.ts";
import { ExpertStore, type ExpertStoreOptions } from "./experts/store.ts";
import { mapFile, type MappedFile } from "./mmap.ts";
import {
  BASE_FILE,
  createRecordHasher,
  EXPERTS_FILE,
  MANIFEST_FILE,
  type PackManifest,
  partsOf,
} from "./pack/format.ts";
import { checkFileSize, verifyBaseTensor, verifyCopiedFile } from "./pack/integrity.ts";
import { isPackedDir, looksPacked, ManifestError, readManifest, REPACK } from "./pack/manifest.ts";
import type {
  ExpertWeights,
  LayerWeights,
  ModelConfig,
  ModelWeights,
  TensorView,
} from "./types.ts";
import {
  type AuditEntry,
  type AuditReport,
  EXPERT_TENSORS,
  GLOBAL_TENSORS,
  LAYER_TENSORS,
  tensorName,
  type TensorSpec,
} from "./weights.ts";

export { isPackedDir, looksPacked };

/** An opened packed model. */
export interface PackedModel {
  dir: string;
  config: ModelConfig;
  weights: ModelWeights;
  audit: AuditReport;
  experts: ExpertStore;
  manifest: PackManifest;
  /** Unmaps base.bin and experts.bin; no view handed out may be used afterwards. */
  close(): void;
}

const PART_KEYS = ["gate", "up", "down"] as const;

/**
 * Opens dir (a packed model), verifying the manifest, base.bin and the copied files (see the
 * module comment); throws a named error naming the file and tensor or field when it is not sound.
 */
export async function openPacked(
  dir: string,
  opts: ExpertStoreOptions = {},
): Promise<PackedModel> {
  const manifest = await readManifest(dir);
  const manifestPath = `${dir}/${MANIFEST_FILE}`;
  const c = checkAgainstConfig(manifest, manifestPath);
  const x = manifest.experts;
  const basePath = `${dir}/${BASE_FILE}`;
  checkFileSize(basePath, manifest.base.bytes);
  const hasher = await createRecordHasher();
  for (const f of manifest.copied) verifyCopiedFile(hasher, dir, f);
  const base = mapFile(basePath);
  let experts: ExpertStore | null = null;
  try {
    for (const [name, t] of Object.entries(manifest.base.tensors)) {
      verifyBaseTensor(
        hasher,
        name,
        t,
        base.bytes.subarray(t.offset, t.offset + t.bytes),
        basePath,
      );
    }
    const expertsPath = `${dir}/${EXPERTS_FILE}`;
    experts = await ExpertStore.open(expertsPath, x, opts);
    const weights = buildWeights(c, manifest, base, basePath, experts, expertsPath);
    const audit = buildAudit(dir, c, manifest, base, basePath, experts, expertsPath);
    const store = experts;
    return {
      dir,
      config: c,
      weights,
      audit,
      experts: store,
      manifest,
      close() {
        store.close();
        base.close();
      },
    };
  } catch (e) {
    experts?.close();
    base.close();
    throw e;
  }
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** The tensors the runtime takes from base.bin, by checkpoint name, with their spec. */
function neededBaseTensors(c: ModelConfig): { name: string; spec: TensorSpec }[] {
  const out: { name: string; spec: TensorSpec }[] = [];
  const add = (spec: TensorSpec, layer?: number) =>
    out.push({ name: tensorName(spec.template, c.tensorPrefix, layer), spec });
  add(GLOBAL_TENSORS.embed);
  for (let l = 0; l < c.numLayers; l++) {
    for (const key of Object.keys(LAYER_TENSORS) as (keyof typeof LAYER_TENSORS)[]) {
      add(LAYER_TENSORS[key], l);
    }
  }
  add(GLOBAL_TENSORS.finalNorm);
  if (!c.tieWordEmbeddings) add(GLOBAL_TENSORS.lmHead);
  return out;
}

/**
 * The manifest's config, checked against its tensors: expert record counts, and the shape of
 * every base tensor and expert part the runtime needs (the tensor table of src/weights.ts).
 * Throws ManifestError naming manifest.json and every tensor at fault.
 */
export function checkAgainstConfig(m: PackManifest, manifestPath: string): ModelConfig {
  const c = parseConfig(m.config, manifestPath);
  const x = m.experts;
  const problems: string[] = [];
  if (x.numLayers !== c.numLayers || x.numExperts !== c.numExperts) {
    problems.push(
      `${x.numLayers} x ${x.numExperts} expert records but the config has ` +
        `${c.numLayers} layers x ${c.numExperts} experts`,
    );
  }
  for (const { name, spec } of neededBaseTensors(c)) {
    const t = m.base.tensors[name];
    const want = spec.shape(c);
    if (t === undefined || !sameShape(t.shape, want)) {
      problems.push(
        `base tensor ${name} is ${t ? `[${t.shape}]` : "missing"}, expected ` +
          `${spec.legend} = [${want}]`,
      );
    }
  }
  for (
    const [where, parts] of [
      ["parts", x.parts],
      ...(x.layerParts ?? []).map((p, l) => [`layerParts[${l}]`, p] as const),
    ] as const
  ) {
    for (const k of PART_KEYS) {
      const want = EXPERT_TENSORS[k].shape(c);
      if (!sameShape(parts[k].shape, want)) {
        problems.push(
          `experts.${where}.${k} is [${parts[k].shape}], expected ` +
            `${EXPERT_TENSORS[k].legend} = [${want}]`,
        );
      }
    }
  }
  if (problems.length > 0) {
    throw new ManifestError(`${manifestPath}: ${problems.join("; ")}; ${REPACK}`);
  }
  return c;
}

/** Views of the manifest's tensors (whose shapes checkAgainstConfig has checked). */
function buildWeights(
  c: ModelConfig,
  m: PackManifest,
  base: MappedFile,
  basePath: string,
  store: ExpertStore,
  expertsPath: string,
): ModelWeights {
  const view = (s: TensorSpec, layer?: number): TensorView => {
    const name = tensorName(s.template, c.tensorPrefix, layer);
    const t = m.base.tensors[name];
    return {
      name,
      dtype: t.dtype,
      shape: t.shape,
      bytes: base.bytes.subarray(t.offset, t.offset + t.bytes),
      file: basePath,
      offset: t.offset,
    };
  };
  const layers: LayerWeights[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const parts = partsOf(m.experts, l);
    const t = {} as Record<keyof typeof LAYER_TENSORS, TensorView>;
    for (const key of Object.keys(LAYER_TENSORS) as (keyof typeof LAYER_TENSORS)[]) {
      t[key] = view(LAYER_TENSORS[key], l);
    }
    layers.push({
      ...t,
      expert(e: number): ExpertWeights {
        const bytes = store.record(l, e); // range-checked and checksum-verified
        const offset = m.experts.records[l * c.numExperts + e].offset;
        const part = (k: (typeof PART_KEYS)[number]): TensorView => ({
          name: tensorName(EXPERT_TENSORS[k].template, c.tensorPrefix, l, e),
          dtype: parts[k].dtype,
          shape: parts[k].shape,
          bytes: bytes.subarray(parts[k].offset, parts[k].offset + parts[k].bytes),
          file: expertsPath,
          offset: offset + parts[k].offset,
        });
        return { gate: part("gate"), up: part("up"), down: part("down") };
      },
    });
  }
  const embed = view(GLOBAL_TENSORS.embed);
  return {
    config: c,
    embed,
    layers,
    finalNorm: view(GLOBAL_TENSORS.finalNorm),
    lmHead: c.tieWordEmbeddings ? embed : view(GLOBAL_TENSORS.lmHead),
  };
}

function buildAudit(
  dir: string,
  c: ModelConfig,
  m: PackManifest,
  base: MappedFile,
  basePath: string,
  store: ExpertStore,
  expertsPath: string,
): AuditReport {
  const used: AuditEntry[] = [];
  for (const [name, t] of Object.entries(m.base.tensors)) {
    const entry: AuditEntry = {
      name,
      role: t.role,
      shape: t.shape,
      dtype: t.dtype,
      file: basePath,
      bytes: t.bytes,
    };
    if (t.layer !== undefined) entry.layer = t.layer;
    used.push(entry);
  }
  for (const r of m.experts.records) {
    for (const k of PART_KEYS) {
      const p = partsOf(m.experts, r.layer)[k];
      used.push({
        name: tensorName(EXPERT_TENSORS[k].template, c.tensorPrefix, r.layer, r.expert),
        role: EXPERT_TENSORS[k].role,
        shape: p.shape,
        dtype: p.dtype,
        file: expertsPath,
        bytes: p.bytes,
        layer: r.layer,
      });
    }
  }
  const sum = (xs: AuditEntry[]) => xs.reduce((a, e) => a + e.bytes, 0);
  const usedBytes = sum(used), skippedBytes = sum(m.skipped);
  return {
    dir,
    config: c,
    used,
    skipped: m.skipped,
    usedBytes,
    skippedBytes,
    totalBytes: usedBytes + skippedBytes,
    files: [
      { path: basePath, bytes: base.size, mode: base.mode },
      { path: expertsPath, bytes: m.experts.bytes, mode: store.mode },
    ],
  };
}
