/** `main.ts pack --in HF_DIR --out PACKED_DIR [--force]`: the runtime's packed format. */
import { type CommandSpec, parseFlags, UsageError } from "./args.ts";
import { runPackCommand } from "../pack/pack.ts";

export const PACK_SPEC: CommandSpec = {
  name: "pack",
  summary: "converts a Hugging Face checkpoint to the runtime's packed format",
  usage: "--in HF_DIR --out PACKED_DIR [--force]",
  flags: [
    { name: "in", arg: "HF_DIR", help: "the checkpoint directory (config.json, safetensors)" },
    { name: "out", arg: "PACKED_DIR", help: "where the packed model goes" },
    { name: "force", help: "replace PACKED_DIR if it exists" },
  ],
};

export async function packCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, PACK_SPEC);
  if (typeof flags.in !== "string" || typeof flags.out !== "string") {
    throw new UsageError("pack needs --in HF_DIR and --out PACKED_DIR");
  }
  await runPackCommand({ in: flags.in, out: flags.out, force: !!flags.force });
  return 0;
}
