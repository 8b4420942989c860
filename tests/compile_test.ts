/**
 * `deno task compile` embeds what the binary needs (kernels, the default model, the chat page) and
 * only the runtime's npm packages (deno.compile.json). Running the binary needs the denort runtime,
 * which cannot be downloaded here; this checks the compile step with the Deno binary standing in
 * for denort (DENORT_BIN), which exercises everything but the final start-up.
 */
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url).pathname;

Deno.test("deno compile embeds kernels, the default model, the chat page and the engine worker, without test-only packages", async () => {
  const out = await Deno.makeTempDir({ prefix: "compile_" });
  try {
    const task = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks.compile as string;
    const args = task.split(" ").slice(1).map((a) => a === "dist/moe-runtime" ? `${out}/bin` : a);
    const r = await new Deno.Command(Deno.execPath(), {
      args,
      cwd: ROOT,
      env: { DENORT_BIN: Deno.execPath(), NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const log = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
    assert.equal(r.code, 0, log);
    for (const part of ["kernels", "weights", "web", "engine", "hono", "jinja", "hash-wasm"]) {
      assert.match(log, new RegExp(part), `${part} is embedded`);
    }
    for (const testOnly of ["onnxruntime-web", "playwright-core", "openai/", "tokenizer-qwen3"]) {
      assert.doesNotMatch(log, new RegExp(testOnly), `${testOnly} is not embedded`);
    }
    // the engine worker is reached only through new URL(..., import.meta.url): --include puts it in
    const binary = await Deno.readFile(`${out}/bin`);
    const marker = new TextEncoder().encode("the engine worker got a job before its model opened");
    assert.ok(indexOf(binary, marker) >= 0, "src/engine/worker.ts is embedded");
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

/** First index of `needle` in `hay`, or -1. */
function indexOf(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = hay.indexOf(needle[0]); i >= 0; i = hay.indexOf(needle[0], i + 1)) {
    for (let j = 1; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
