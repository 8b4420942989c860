/**
 * `main.ts logits [--model DIR] --ids 3,17,42`: one JSON object on stdout,
 * {"ids":[...],"logits":[[...V floats of position 0...], ...]}, from the normal prefill path.
 */
import { type CommandSpec, parseFlags, parseIds } from "./args.ts";
import { openRuntime, RUNTIME_FLAGS, runtimeOptions } from "./runtime.ts";
import { checkVocab } from "./generate.ts";
import { writeStdout } from "./stdout.ts";

/** Context of the session when --max-context is absent (longer prompts get their own length). */
const DEFAULT_LOGITS_CONTEXT = 256;

export const LOGITS_SPEC: CommandSpec = {
  name: "logits",
  summary: "prints one JSON row of logits per prompt position",
  usage: "[--model DIR] --ids 3,17,42 [flags]",
  flags: [
    { name: "ids", arg: "IDS", help: "prompt token ids, comma-separated decimal integers" },
    ...RUNTIME_FLAGS,
  ],
};

export async function logitsCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, LOGITS_SPEC);
  const ids = parseIds(flags.ids);
  const context = Math.max(ids.length, DEFAULT_LOGITS_CONTEXT);
  runtimeOptions(flags, context); // every flag checked before the model loads
  const rt = await openRuntime(flags, context);
  try {
    checkVocab(ids, rt.model.config.vocabSize);
    const session = rt.model.newSession();
    const rows = await session.forward(ids);
    session.free();
    rt.model.gpu.check(); // a GPU error during the pass: no numbers printed (GpuError, exit 1)
    const body = rows.map((r) => "[" + Array.from(r).join(",") + "]").join(",");
    await writeStdout(`{"ids":${JSON.stringify(ids)},"logits":[${body}]}\n`);
    return 0;
  } finally {
    rt.close();
  }
}
