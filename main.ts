/**
 * CLI entry: `deno run -A --unstable-webgpu main.ts <command> [flags]`.
 * Every command without --model uses the embedded default model. stdout carries results (JSON or
 * text); diagnostics go to stderr.
 */
import { info, UsageError } from "./src/cli/args.ts";
import { auditCommand } from "./src/cli/audit.ts";
import { logitsCommand } from "./src/cli/logits.ts";
import { generateCommand } from "./src/cli/generate.ts";
import { packCommand } from "./src/cli/pack.ts";
import { serveCommand } from "./src/server/cli.ts";

type Command = (argv: string[]) => Promise<number>;

const COMMANDS: Record<string, { run: Command; help: string }> = {
  audit: { run: auditCommand, help: "audit [--model DIR]    list every tensor used and skipped" },
  logits: {
    run: logitsCommand,
    help: "logits [--model DIR] --ids 3,17,42    JSON logits per position",
  },
  serve: {
    run: serveCommand,
    help: "serve [--model DIR] [--host H] [--port P] [--api-key K] [--expert-cache-mib M]",
  },
  pack: { run: packCommand, help: "pack --in HF_DIR --out PACKED_DIR [--force]" },
  generate: {
    run: generateCommand,
    help:
      "generate [--model DIR] (--ids 1,2 | --prompt TEXT) [--max-tokens N] [--temperature T] [--json]",
  },
};

function usage(): string {
  return "usage: main.ts <command> [flags]\n" +
    Object.values(COMMANDS).map((c) => "  " + c.help).join("\n");
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "help" || name === "--help") {
    console.log(usage());
    return name ? 0 : 2;
  }
  const command = COMMANDS[name];
  if (!command) {
    info(`unknown command "${name}"\n${usage()}`);
    return 2;
  }
  try {
    return await command.run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      info(`${name}: ${e.message}\n${usage()}`);
      return 2;
    }
    const err = e as Error;
    info(`${name} failed: ${err.name}: ${err.message}`);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
