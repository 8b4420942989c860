/**
 * `main.ts verify [--model DIR]`: checks every byte of a packed model against its manifest (the
 * manifest's own checksum and fields, file sizes, every base tensor, every expert record, every
 * copied file) and prints each region's result; exits 1 on any problem, naming file and tensor,
 * record or field. A Hugging Face checkpoint directory gets the checks its format allows (headers,
 * tensor table): safetensors files carry no checksums.
 *
 * Also runs on its own: `deno run -A src/cli/verify.ts --model DIR`.
 */
import { type CommandSpec, HelpRequested, info, parseFlags, UsageError } from "./args.ts";
import { DEFAULT_MODEL_DIR, openModelDir } from "../model_dir.ts";
import { looksPacked } from "../packed_weights.ts";
import { verifyPacked } from "../pack/verify.ts";
import { formatBytes } from "../audit.ts";
import { writeStdout } from "./stdout.ts";

export const VERIFY_SPEC: CommandSpec = {
  name: "verify",
  summary: "checks every byte of a packed model against its manifest; exit 1 on any problem",
  usage: "[--model DIR]",
  flags: [{ name: "model", arg: "DIR", help: "the model (default: the embedded one)" }],
};

export async function verifyCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, VERIFY_SPEC);
  const dir = (flags.model as string | undefined) ?? DEFAULT_MODEL_DIR;
  if (!looksPacked(dir)) {
    const model = openModelDir(dir); // throws naming the file and tensor at fault
    try {
      const a = model.audit;
      await writeStdout(
        `verify ${dir}: Hugging Face checkpoint, ${a.used.length + a.skipped.length} tensors in ` +
          `${a.files.length} file(s): headers, offsets and shapes ok (safetensors files carry ` +
          `no checksums; \`main.ts pack\` adds them)\n`,
      );
      return 0;
    } finally {
      model.close();
    }
  }
  const t0 = performance.now();
  const r = await verifyPacked(dir);
  const lines = [`verify ${dir}`];
  for (const p of r.passed) lines.push(`  ok    ${p}`);
  for (const p of r.problems) lines.push(`  FAIL  ${p}`);
  const s = ((performance.now() - t0) / 1000).toFixed(1);
  lines.push(
    r.problems.length === 0
      ? `every byte matches the manifest (${formatBytes(r.bytesChecked)} checked in ${s} s)`
      : `${r.problems.length} problem(s); re-run \`main.ts pack --force\` from the checkpoint`,
  );
  await writeStdout(lines.join("\n") + "\n");
  if (r.problems.length === 0) return 0;
  info(`verify: ${r.problems.length} problem(s) in ${dir}`);
  return 1;
}

if (import.meta.main) {
  let code: number;
  try {
    code = await verifyCommand(Deno.args);
  } catch (e) {
    const err = e as Error;
    if (e instanceof HelpRequested) console.log(e.text);
    else info(`verify failed: ${err.name}: ${err.message}`);
    code = e instanceof HelpRequested ? 0 : e instanceof UsageError ? 2 : 1;
  }
  Deno.exit(code);
}
