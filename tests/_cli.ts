/** Test helper: runs main.ts as a subprocess, exactly as a user would. */

export const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** `deno run -A --unstable-webgpu main.ts ...args` with extra env; its exit code and output. */
export async function cli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-webgpu", MAIN, ...args],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
