// The test market lives in deploy/ so that benchmarks use it too.
export { privateKeyOf } from "../../deploy/devnet.ts";
export {
  startMarket,
  type Market,
  type ProviderHandle,
  type StartMarketOptions,
  type Tenant,
} from "../../deploy/market.ts";
