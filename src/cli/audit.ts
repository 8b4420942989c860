/**
 * `main.ts audit [--model DIR]`: every tensor the model needs (shape, dtype, source file, bytes)
 * and every checkpoint tensor skipped. A packed model is verified first, byte for byte (manifest,
 * file sizes, base tensor, expert record and copied file checksums): any problem is listed on
 * stderr, naming the file and tensor, and the command exits 1. A checkpoint fails, naming the
 * tensor, on anything missing, mis-shaped or of an unsupported dtype.
 */
import { type CommandSpec, info, parseFlags } from "./args.ts";
import { DEFAULT_MODEL_DIR, openModelDir } from "../model_dir.ts";
import { looksPacked, openPacked } from "../packed_weights.ts";
import { verifyPacked } from "../pack/verify.ts";
import { formatAudit, formatBytes } from "../audit.ts";
import { writeStdout } from "./stdout.ts";

export const AUDIT_SPEC: CommandSpec = {
  name: "audit",
  summary: "lists every tensor used and skipped, after verifying every byte; exit 1 on any problem",
  usage: "[--model DIR]",
  flags: [{ name: "model", arg: "DIR", help: "the model (default: the embedded one)" }],
};

export async function auditCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, AUDIT_SPEC);
  const dir = (flags.model as string | undefined) ?? DEFAULT_MODEL_DIR;
  if (!looksPacked(dir)) {
    const model = openModelDir(dir);
    try {
      await writeStdout(formatAudit(model.audit) + "\n");
      return 0;
    } finally {
      model.close();
    }
  }
  const report = await verifyPacked(dir);
  if (report.problems.length > 0) {
    for (const p of report.problems) info(`audit: ${p}`);
    info(`audit: ${report.problems.length} problem(s) in ${dir}`);
    return 1;
  }
  const model = await openPacked(dir);
  try {
    const m = report.manifest!;
    await writeStdout(
      formatAudit(model.audit) + "\n" +
        `verified: manifest, ${Object.keys(m.base.tensors).length} base tensors, ` +
        `${m.experts.records.length} expert records, ${m.copied.length} copied files ` +
        `(${formatBytes(report.bytesChecked)}, ${m.experts.checksum})\n`,
    );
    return 0;
  } finally {
    model.close();
  }
}
