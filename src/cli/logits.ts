/**
 * `main.ts logits [--model DIR] --ids 3,17,42`: one JSON object on stdout,
 * {"ids":[...],"logits":[[...V floats of position 0...], ...]}, from the normal prefill path.
 */
import { info, numberFlag, parseFlags, parseIds } from "./args.ts";
import { openModelDir } from "../model_dir.ts";
import { GpuModel } from "../gpu/model.ts";

export async function logitsCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, ["model", "ids", "max-context"]);
  const ids = parseIds(flags.ids);
  const opened = openModelDir(flags.model as string | undefined);
  try {
    const maxContext = numberFlag(
      flags,
      "max-context",
      Math.max(ids.length, 256),
      Number.isInteger,
    );
    const model = await GpuModel.open(opened.weights, { maxContext });
    info(`logits: ${opened.dir}, ${ids.length} tokens on ${model.gpu.adapterInfo.description}`);
    const session = model.newSession();
    const rows = await session.forward(ids);
    session.free();
    const body = rows.map((r) => "[" + Array.from(r).join(",") + "]").join(",");
    await writeStdout(`{"ids":${JSON.stringify(ids)},"logits":[${body}]}\n`);
    model.destroy();
    return 0;
  } finally {
    opened.close();
  }
}

async function writeStdout(text: string): Promise<void> {
  const bytes = new TextEncoder().encode(text);
  let written = 0;
  while (written < bytes.length) written += await Deno.stdout.write(bytes.subarray(written));
}
