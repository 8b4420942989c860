/** `main.ts audit [--model DIR]`: every tensor the model needs and every checkpoint tensor skipped. */
import { parseFlags } from "./args.ts";
import { openModelDir } from "../model_dir.ts";
import { formatAudit } from "../audit.ts";

export function auditCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, ["model"]);
  const model = openModelDir(flags.model as string | undefined);
  try {
    console.log(formatAudit(model.audit));
    return Promise.resolve(0);
  } finally {
    model.close();
  }
}
