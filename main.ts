/**
 * CLI entry: `deno run -A --unstable-webgpu main.ts <command> [flags]`; `main.ts <command> --help`
 * lists a command's flags. Every command without --model uses the embedded default model. stdout
 * carries results (JSON or text); diagnostics go to stderr. Flags are checked before anything
 * loads: a bad one exits 2 with the command's usage.
 */
import { HelpRequested, info, UsageError } from "./src/cli/args.ts";
import { auditCommand } from "./src/cli/audit.ts";
import { LOGITS_SPEC, logitsCommand } from "./src/cli/logits.ts";
import { GENERATE_SPEC, generateCommand } from "./src/cli/generate.ts";
import { PACK_SPEC, packCommand } from "./src/cli/pack.ts";
import { SERVE_SPEC, serveCommand } from "./src/server/cli.ts";
import { VERIFY_SPEC, verifyCommand } from "./src/cli/verify.ts";

type Command = (argv: string[]) => Promise<number>;

// deno-fmt-ignore
const COMMANDS: Record<string, { run: Command; usage: string; summary: string }> = {
  audit:    { run: auditCommand,    usage: "[--model DIR]", summary: "lists every tensor used and skipped" },
  logits:   { run: logitsCommand,   usage: LOGITS_SPEC.usage,   summary: LOGITS_SPEC.summary },
  generate: { run: generateCommand, usage: GENERATE_SPEC.usage, summary: GENERATE_SPEC.summary },
  serve:    { run: serveCommand,    usage: SERVE_SPEC.usage,    summary: SERVE_SPEC.summary },
  pack:     { run: packCommand,     usage: PACK_SPEC.usage,     summary: PACK_SPEC.summary },
  verify:   { run: verifyCommand,   usage: VERIFY_SPEC.usage,   summary: VERIFY_SPEC.summary },
};

function usage(): string {
  return "usage: main.ts <command> [flags]   (main.ts <command> --help lists its flags)\n" +
    Object.entries(COMMANDS).map(([name, c]) => `  ${name} ${c.usage}\n      ${c.summary}`)
      .join("\n");
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "help" || name === "--help" || name === "-h") {
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
    if (e instanceof HelpRequested) {
      console.log(e.text.replace("main.ts COMMAND", `main.ts ${name}`));
      return 0;
    }
    if (e instanceof UsageError) {
      info(`${name}: ${e.message}\nusage: main.ts ${name} ${command.usage}  (--help: every flag)`);
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
