/** `main.ts pack --in MODEL --out PACKED_DIR [--quant TYPE] [--quant-base TYPE] [--force]`. */
import { type CommandSpec, parseFlags, UsageError } from "./args.ts";
import { runPackCommand } from "../pack/pack.ts";
import type { QuantOptions } from "../pack/quantize.ts";
import { QUANT_TYPES, type QuantType } from "../quant/formats.ts";

/** --quant values: GGML's type names in lower case. */
const QUANT_FLAG_VALUES = ["q8_0", "q4_0", "q4_k"] as const;
const TYPE_OF: Record<string, QuantType> = Object.fromEntries(
  QUANT_TYPES.map((t) => [t.toLowerCase(), t]),
);

export const PACK_SPEC: CommandSpec = {
  name: "pack",
  summary: "converts a Hugging Face or GGUF checkpoint to the runtime's packed format",
  usage: "--in MODEL --out PACKED_DIR [--quant TYPE] [--quant-base TYPE] [--force]",
  flags: [
    {
      name: "in",
      arg: "MODEL",
      help: "a Hugging Face checkpoint directory, a GGUF file, or a packed model to re-pack",
    },
    { name: "out", arg: "PACKED_DIR", help: "where the packed model goes" },
    {
      name: "quant",
      arg: "TYPE",
      help: `store the experts in a GGML type: ${QUANT_FLAG_VALUES.join(", ")} (also q5_0, q6_k)`,
    },
    {
      name: "quant-base",
      arg: "TYPE",
      help: "store q/k/v/o and lm_head in a GGML type too (norms and routers stay float)",
    },
    { name: "force", help: "replace PACKED_DIR if it exists" },
  ],
};

function quantFlag(flags: Record<string, unknown>, name: string): QuantType | undefined {
  const v = flags[name];
  if (v === undefined) return undefined;
  const t = typeof v === "string" ? TYPE_OF[v.toLowerCase()] : undefined;
  if (t === undefined) {
    throw new UsageError(
      `--${name} ${v}: not a type; use one of ${
        QUANT_TYPES.map((t) => t.toLowerCase()).join(", ")
      }`,
    );
  }
  return t;
}

export async function packCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, PACK_SPEC);
  if (typeof flags.in !== "string" || typeof flags.out !== "string") {
    throw new UsageError("pack needs --in MODEL and --out PACKED_DIR");
  }
  const quant: QuantOptions = {
    experts: quantFlag(flags, "quant"),
    base: quantFlag(flags, "quant-base"),
  };
  await runPackCommand({ in: flags.in, out: flags.out, force: !!flags.force, quant });
  return 0;
}
