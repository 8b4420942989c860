/**
 * `main.ts audit [--model DIR]`: every tensor the model needs (shape, dtype, source file, bytes)
 * and every checkpoint tensor skipped. Loading fails, naming the tensor, on anything missing,
 * mis-shaped or of an unsupported dtype: the command then exits non-zero.
 */
import { parseFlags } from "./args.ts";
import { DEFAULT_MODEL_DIR, openModelDir } from "../model_dir.ts";
import { isPackedDir, openPacked } from "../packed_weights.ts";
import { formatAudit } from "../audit.ts";
import { writeStdout } from "./stdout.ts";

export async function auditCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, ["model"]);
  const dir = (flags.model as string | undefined) ?? DEFAULT_MODEL_DIR;
  const model = isPackedDir(dir) ? await openPacked(dir) : openModelDir(dir);
  try {
    await writeStdout(formatAudit(model.audit) + "\n");
    return 0;
  } finally {
    model.close();
  }
}
