/**
 * A readable table of the loader's audit (`main.ts audit --model DIR`): the model config, every
 * used tensor grouped as global / per layer (attention, router, experts), every skipped tensor
 * with its reason, then totals.
 */

import type { AuditEntry, AuditReport } from "./weights.ts";

const KIB = 1024;
const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** 1536 -> "1.50 KiB". */
export function formatBytes(n: number): string {
  let v = n, u = 0;
  while (v >= KIB && u < UNITS.length - 1) {
    v /= KIB;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(2)} ${UNITS[u]}`;
}

function basename(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

function table(entries: AuditEntry[]): string[] {
  const rows = entries.map((e) => [
    e.name,
    e.role,
    `[${e.shape.join(", ")}]`,
    e.dtype,
    basename(e.file),
    formatBytes(e.bytes),
  ]);
  const widths = [0, 1, 2, 3, 4].map((i) => Math.max(0, ...rows.map((r) => r[i].length)));
  return rows.map((r) =>
    "  " + r.slice(0, 5).map((c, i) => c.padEnd(widths[i])).join("  ") + "  " + r[5].padStart(10)
  );
}

const sum = (xs: AuditEntry[]) => xs.reduce((a, x) => a + x.bytes, 0);

/** The whole audit as text, one tensor per line. */
export function formatAudit(report: AuditReport): string {
  const c = report.config;
  const out: string[] = [];
  out.push(
    `model ${report.dir} (${c.modelType}${c.tensorPrefix ? `, prefix ${c.tensorPrefix}` : ""})`,
  );
  out.push(
    `  V=${c.vocabSize} D=${c.hiddenSize} L=${c.numLayers} Hq=${c.numHeads} Hkv=${c.numKvHeads} ` +
      `Dh=${c.headDim} E=${c.numExperts} K=${c.topK} I=${c.moeIntermediateSize} ` +
      `tied=${c.tieWordEmbeddings} eos=[${c.eosTokenIds}]`,
  );
  out.push("files:");
  for (const f of report.files) {
    out.push(`  ${basename(f.path)}  ${formatBytes(f.bytes)}  (${f.mode})`);
  }

  const global = report.used.filter((e) => e.layer === undefined);
  out.push("", `used: global (${formatBytes(sum(global))})`, ...table(global));
  for (let l = 0; l < c.numLayers; l++) {
    const layer = report.used.filter((e) => e.layer === l);
    const experts = layer.filter((e) => e.role.startsWith("expert"));
    out.push(
      `used: layer ${l} (${formatBytes(sum(layer))}; experts ${formatBytes(sum(experts))})`,
      ...table(layer),
    );
  }

  out.push("", `skipped (${report.skipped.length} tensors, ${formatBytes(report.skippedBytes)})`);
  out.push(...(report.skipped.length ? table(report.skipped) : ["  none"]));

  out.push(
    "",
    `total: ${report.used.length} used tensors ${formatBytes(report.usedBytes)}, ` +
      `${report.skipped.length} skipped ${formatBytes(report.skippedBytes)}, ` +
      `checkpoint ${formatBytes(report.totalBytes)}`,
  );
  return out.join("\n");
}
