import { chromium, type Browser, type Page } from "playwright-core";

import { spawnScript, until, type Spawned } from "./processes.ts";

/** `baton explorer` started by a test, and the pages it serves in Debian's chromium. */
export interface ExplorerUnderTest {
  url: string;
  process: Spawned;
  browser: Browser;
  /** Waits until the explorer's index holds block `head` (and everything before it). */
  caughtUp(head: bigint | number): Promise<void>;
  /** Opens `pathname` in a new page and waits until the page has drawn itself. */
  open(pathname: string, viewport?: { width: number; height: number; isMobile?: boolean }): Promise<Page>;
  stop(): Promise<void>;
}

/**
 * Starts `baton explorer` on `rpcUrl`'s deployment, indexing into the SQLite file `db` and polling
 * every 200 ms, and chromium (Debian's, never a downloaded one) to look at its pages.
 */
export async function startExplorerUnderTest({
  rpcUrl,
  deploymentFile,
  db,
}: {
  rpcUrl: string;
  deploymentFile: string;
  db: string;
}): Promise<ExplorerUnderTest> {
  const child = spawnScript("cli/baton.ts", [
    "explorer",
    "--port",
    "0",
    "--poll-ms",
    "200",
    "--db",
    db,
    "--rpc-url",
    rpcUrl,
    "--deployment",
    deploymentFile,
  ]);
  let browser: Browser | undefined;
  try {
    const url = /(http:\/\/\S+)/.exec(await child.waitFor(/^explorer: http/, 60_000))![1]!;
    browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
    const opened = browser;
    return {
      url,
      process: child,
      browser,
      caughtUp: (head) =>
        until(
          async () => ((await (await fetch(`${url}/api/network`)).json()) as { asOf: number | null }).asOf! >= head,
          60_000,
          `the explorer indexing block ${head}`,
        ),
      async open(pathname, { width, height, isMobile } = { width: 1100, height: 900 }) {
        const page = await opened.newPage({ viewport: { width, height }, ...(isMobile ? { isMobile } : {}) });
        await page.goto(`${url}${pathname}`);
        await page.waitForSelector("body[data-ready]", { timeout: 60_000 });
        return page;
      },
      async stop() {
        await opened.close();
        await child.stop();
      },
    };
  } catch (error) {
    await browser?.close();
    await child.stop();
    throw error;
  }
}
