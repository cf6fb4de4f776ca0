// Measures the console's policies page with many policies: navigation to the page until the
// first page of rows is drawn, and a search keystroke until the narrowed list is drawn.
// Started by `cargo test --test integration browser::policies_page_bench -- --ignored
// --nocapture`, which runs the gateway with CONSOLE_POLICIES policies in its store.
import { chromium } from "playwright-core";

const { CONSOLE_URL: base, CONSOLE_TOKEN: token, CONSOLE_POLICIES: count } = process.env;
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${base}/`);
  await page.locator("#token").fill(token);
  await page.locator("#sign-in-form button").click();
  await page.locator("nav").waitFor({ state: "visible" });
  const loads = [];
  const searches = [];
  for (let round = 0; round < 5; round += 1) {
    await page.goto(`${base}/#/overview`);
    await page.locator("h1", { hasText: "Overview" }).waitFor();
    let started = Date.now();
    await page.goto(`${base}/#/policies`);
    await page.locator("text=of " + count + " policies").waitFor({ timeout: 120000 });
    loads.push(Date.now() - started);
    const rows = await page.locator("tbody tr").count();
    if (rows !== 100) throw new Error(`a page holds ${rows} rows, not 100`);
    started = Date.now();
    await page.locator("#policy-search").fill(`bench-${String(round * 7).padStart(5, "0")}`);
    await page.waitForFunction(() => document.querySelectorAll("tbody tr").length === 1);
    searches.push(Date.now() - started);
  }
  const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log(`policies=${count} load_ms=${loads.join(",")} (median ${median(loads)}) search_ms=${searches.join(",")} (median ${median(searches)})`);
} finally {
  await browser.close();
}
