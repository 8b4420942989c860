/** `main.ts pack --in HF_DIR --out PACKED_DIR [--force]`: the runtime's packed format. */
import { parseFlags, UsageError } from "./args.ts";
import { runPackCommand } from "../pack/pack.ts";

export async function packCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, ["in", "out"], ["force"]);
  if (typeof flags.in !== "string" || typeof flags.out !== "string") {
    throw new UsageError("pack needs --in HF_DIR and --out PACKED_DIR");
  }
  await runPackCommand({ in: flags.in, out: flags.out, force: !!flags.force });
  return 0;
}
