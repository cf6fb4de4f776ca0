// A console session that ends while its page is open: against a gateway whose sessions
// idle out after 2 seconds, sign in, wait, act; the API refuses the expired cookie and the
// page returns to the sign-in form saying why. Started by tests/integration/browser.rs:
//   CONSOLE_URL    the admin server
//   CONSOLE_TOKEN  an editor's admin token
//   CONSOLE_SHOTS  a directory for screenshots
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const { CONSOLE_URL: base, CONSOLE_TOKEN: token, CONSOLE_SHOTS: shots } = process.env;
for (const [name, value] of Object.entries({ base, token, shots })) {
  if (!value) throw new Error(`missing ${name}`);
}
mkdirSync(shots, { recursive: true });

function check(condition, what) {
  if (!condition) throw new Error(`FAILED: ${what}`);
  console.log(`ok: ${what}`);
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
try {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${base}/`);
  await page.locator("#token").fill(token);
  await page.keyboard.press("Enter");
  await page.locator("nav").waitFor({ state: "visible" });
  check(true, "signed in");
  await page.waitForTimeout(3000);
  const [answer] = await Promise.all([
    page.waitForResponse((r) => r.url().includes("/v1/policies")),
    page.locator("nav a[href='#/policies']").click(),
  ]);
  check(answer.status() === 401, `after 3 s idle, the API refuses the session (${answer.status()})`);
  const body = await answer.json();
  check(body.error.message.includes("expired"), `and says it expired (${body.error.message})`);
  await page.locator("#token").waitFor({ state: "visible" });
  const shown = await page.locator("#sign-in-error").textContent();
  check(shown.includes("session has ended"), `the page is back at the sign-in form, saying why (${shown})`);
  check(!(await page.locator("nav").isVisible()), "with no navigation left");
  await page.screenshot({ path: `${shots}/expired.png`, fullPage: true });
} finally {
  await browser.close();
}
