/**
 * `main.ts generate [--model DIR] --ids 3,17,42 --max-tokens 16 --temperature 0 [--json]`
 * prints {"ids":[...generated ids...]} (with --json) or the ids as text; with --prompt TEXT (a
 * model dir with tokenizer.json) it prints the generated text. Generation stops after
 * --max-tokens or at an end-of-sequence id from config.json (the EOS id is included, as in
 * Hugging Face's generate()).
 */
import { numberFlag, parseFlags, parseIds, UsageError } from "./args.ts";
import type { GpuModel } from "../gpu/model.ts";
import { openRuntime, RUNTIME_BOOLEAN_FLAGS, RUNTIME_STRING_FLAGS } from "./runtime.ts";
import { greedyToken } from "../greedy.ts";

export async function generateCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(
    argv,
    [...RUNTIME_STRING_FLAGS, "ids", "prompt", "max-tokens", "temperature"],
    ["json", ...RUNTIME_BOOLEAN_FLAGS],
  );
  const maxTokens = numberFlag(flags, "max-tokens", 16, (n) => Number.isInteger(n) && n >= 1);
  const temperature = numberFlag(flags, "temperature", 0, (n) => n >= 0);
  if (temperature !== 0) {
    throw new UsageError("--temperature other than 0 is not implemented in this command yet");
  }
  if (flags.prompt !== undefined) {
    throw new UsageError("--prompt needs the tokenizer, which this build does not have yet");
  }
  const ids = parseIds(flags.ids);
  const rt = await openRuntime(flags, ids.length + maxTokens);
  try {
    const out = await generateGreedy(rt.model, ids, maxTokens);
    console.log(flags.json ? JSON.stringify({ ids: out }) : out.join(","));
    return 0;
  } finally {
    rt.close();
  }
}

/** Greedy decoding: prefill the prompt in one pass, then one token per step. */
export async function generateGreedy(
  model: GpuModel,
  prompt: number[],
  maxTokens: number,
): Promise<number[]> {
  const eos = new Set(model.config.eosTokenIds);
  const session = model.newSession();
  try {
    const out: number[] = [];
    let [logits] = await session.forward(prompt, { lastOnly: true });
    while (out.length < maxTokens) {
      const next = greedyToken(logits);
      out.push(next);
      if (eos.has(next) || out.length === maxTokens) break;
      [logits] = await session.forward([next], { lastOnly: true });
    }
    return out;
  } finally {
    session.free();
  }
}
