/**
 * The chat page (GET /) in headless Chromium via npm `playwright-core`: typing a message shows a
 * streamed reply, and the tokens/s and expert-cache figures from /stats; its max tokens field is
 * sent as max_tokens, and Stop ends a long reply (the server frees its session).
 * Chromium must be at /usr/bin/chromium (`apt-get install -y chromium`). Under CI=true a missing
 * browser fails the test; without CI it is skipped with the reason printed.
 */
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { startTestServer } from "./_test_model.ts";

const CHROMIUM = "/usr/bin/chromium";
const LAUNCH_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
/** Generous for a loaded 2-core machine; the reply itself takes milliseconds. */
const PAGE_TIMEOUT_MS = 30_000;

function chromiumPresent(): boolean {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
}

const present = chromiumPresent();
const inCi = Deno.env.get("CI") === "true";
if (!present && !inCi) {
  console.log(`chat_page_test skipped: ${CHROMIUM} is missing (apt-get install -y chromium)`);
}

/** A fresh Chromium over its own profile, closed (and the profile removed) by close(). */
async function launch() {
  const userDataDir = await Deno.makeTempDir({ prefix: "chat_page_chromium_" });
  const browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: LAUNCH_ARGS,
    timeout: PAGE_TIMEOUT_MS,
  });
  const page = browser.pages()[0] ?? await browser.newPage();
  page.setDefaultTimeout(PAGE_TIMEOUT_MS);
  return {
    page,
    close: async () => {
      await browser.close();
      await Deno.remove(userDataDir, { recursive: true });
    },
  };
}

Deno.test({
  name: "chat page sends its max tokens field as max_tokens, and Stop ends a long reply",
  ignore: !present && !inCi,
  async fn() {
    assert.ok(present, `${CHROMIUM} is missing; CI must install chromium`);
    // 20 ms a token: the 100,000 tokens asked for would take half an hour unless Stop works
    const server = await startTestServer({ maxContext: 200_000, stepDelayMs: 20 });
    const { page, close } = await launch();
    try {
      const bodies: Record<string, unknown>[] = [];
      page.on("request", (r) => {
        if (r.url().endsWith("/v1/chat/completions")) bodies.push(JSON.parse(r.postData()!));
      });
      await page.goto(server.url + "/");
      await page.fill("#temperature", "0");
      await page.fill("#max-tokens", "4");
      await page.fill("#input", "hello");
      await page.press("#input", "Enter");
      await page.locator(".msg.assistant[data-done=true]").waitFor();
      assert.equal(await page.locator(".msg.assistant").textContent(), "abcd");
      assert.equal(bodies[0].max_tokens, 4);
      assert.ok(await page.locator("#stop").isDisabled());

      await page.fill("#max-tokens", "100000");
      await page.fill("#input", "again");
      await page.press("#input", "Enter");
      const second = page.locator(".msg.assistant").nth(1);
      await page.waitForFunction(
        "document.querySelectorAll('.msg.assistant')[1]?.textContent.length >= 3",
      );
      await page.click("#stop");
      await page.locator(".msg.assistant[data-done=stopped]").waitFor();
      assert.equal(bodies[1].max_tokens, 100000);
      assert.match(await second.textContent() ?? "", /^abc/);
      assert.ok(await page.locator("#send").isEnabled());
      for (let i = 0; i < 500 && server.stats().liveSessions !== 0; i++) {
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.equal(server.stats().liveSessions, 0, "Stop freed the session on the server");
    } finally {
      await close();
      await server.close();
    }
  },
});

Deno.test({
  name: "chat page streams a reply to a typed message and shows tokens/s and cache hit rate",
  ignore: !present && !inCi,
  async fn() {
    assert.ok(present, `${CHROMIUM} is missing; CI must install chromium`);
    const server = await startTestServer({
      eosAfter: "j",
      cacheStats: () => ({ hits: 9, misses: 1 }),
    });
    const { page, close } = await launch();
    try {
      await page.goto(server.url + "/");
      assert.equal(await page.title(), "Qwen3-MoE chat");
      // count DOM updates of the conversation: a streamed reply grows piece by piece
      await page.evaluate(
        "window.updates = 0; new MutationObserver((m) => window.updates += m.length)" +
          ".observe(document.getElementById('log'), { subtree: true, childList: true })",
      );
      await page.fill("#temperature", "0"); // greedy: the bigram model's reply is known
      await page.fill("#max-tokens", "100"); // within the test model's context of 256
      await page.fill("#input", "hello");
      await page.press("#input", "Enter");
      const reply = page.locator(".msg.assistant[data-done=true]");
      await reply.waitFor();
      assert.equal(await reply.textContent(), "abcdefghij"); // then <|im_end|>
      assert.equal(await page.locator(".msg.user").textContent(), "hello");
      const updates = await page.evaluate("window.updates") as number;
      assert.ok(updates >= 2 + 10, `${updates} DOM updates: expected 2 bubbles + one per token`);
      await page.locator("#hit", { hasText: "90.0%" }).waitFor(); // 9 hits, 1 miss
      assert.match(await page.locator("#speed").textContent() ?? "", /tokens\/s: \d/);
      assert.equal(server.model.liveSessions, 0);
    } finally {
      await close();
      await server.close();
    }
  },
});
