/**
 * A worker thread that runs one simulated market at a time for `runMarkets`: the runs of a report
 * are independent, so a machine's cores share them.
 */
import { parentPort } from "node:worker_threads";

import { simulateMarket, type MarketRun } from "./market.ts";
import type { Scenario } from "./scenario.ts";

parentPort!.on("message", ({ id, scenario, run }: { id: number; scenario: Scenario; run: MarketRun }) => {
  const result = simulateMarket(scenario, run);
  parentPort!.postMessage({ id, result }, [result.slowdowns.buffer, result.completionHours.buffer] as ArrayBuffer[]);
});
