/**
 * `main.ts logits [--model DIR] --ids 3,17,42`: one JSON object on stdout,
 * {"ids":[...],"logits":[[...V floats of position 0...], ...]}, from the normal prefill path.
 */
import { parseFlags, parseIds } from "./args.ts";
import { openRuntime, RUNTIME_BOOLEAN_FLAGS, RUNTIME_STRING_FLAGS } from "./runtime.ts";
import { writeStdout } from "./stdout.ts";

export async function logitsCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, [...RUNTIME_STRING_FLAGS, "ids"], RUNTIME_BOOLEAN_FLAGS);
  const ids = parseIds(flags.ids);
  const rt = await openRuntime(flags, Math.max(ids.length, 256));
  try {
    const session = rt.model.newSession();
    const rows = await session.forward(ids);
    session.free();
    const body = rows.map((r) => "[" + Array.from(r).join(",") + "]").join(",");
    await writeStdout(`{"ids":${JSON.stringify(ids)},"logits":[${body}]}\n`);
    return 0;
  } finally {
    rt.close();
  }
}
