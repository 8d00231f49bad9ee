/**
 * The simulated escrow: LeaseManager's and ProviderRegistry's money rules, in the same integer
 * arithmetic (amounts in nano-dollars, times in whole seconds as block timestamps are), so that what
 * the simulation says a tenant pays and a provider earns is what the contracts would move. Each
 * method names the contract function it mirrors. Every transfer goes through one ledger, whose total
 * is what was minted: `check()` proves nothing was made or lost.
 */

/** Nano-dollars per dollar: a price of $0.35/h is 97,222 per second, like a token's base units. */
export const UNITS_PER_USD = 1_000_000_000n;

export const usd = (amount: number): bigint => BigInt(Math.round(amount * Number(UNITS_PER_USD)));
export const toUsd = (amount: bigint): number => Number(amount) / Number(UNITS_PER_USD);

/** `Lease.Status`, as far as money goes. */
const Status = { Active: 0, Closing: 1, Closed: 2, Completed: 3, Slashed: 4 } as const;
type Status = (typeof Status)[keyof typeof Status];

interface LeaseRecord {
  provider: number;
  status: Status;
  pricePerSecond: bigint;
  deposit: bigint;
  collateral: bigint;
  settledUntil: number;
}

/** Accounts of the ledger besides the providers' (which are their indexes). */
const TENANTS = -1;
const TREASURY = -2;
const ESCROW = -3;
const REGISTRY = -4;
/** Whoever submits a slash that is not the tenant's own (a keeper, the next provider). */
export const KEEPER = -5;

export interface SlashPayout {
  tenant: bigint;
  caller: bigint;
  treasury: bigint;
}

export class Escrow {
  readonly #tenantShareBps: bigint;
  readonly #callerShareBps: bigint;
  readonly #leases: LeaseRecord[] = [];
  /** Balances of the fixed accounts (by −index) and of each provider's wallet: no map on the hot path. */
  readonly #fixed = [0n, 0n, 0n, 0n, 0n, 0n];
  readonly #wallets: bigint[];
  /** Stake each provider holds in the registry, and how much of it is locked as collateral. */
  readonly #stake: bigint[];
  readonly #locked: bigint[];
  readonly #claimable: bigint[];
  #minted = 0n;
  #mintedToTenants = 0n;

  /** What each provider was paid (claimable or claimed), and lost to slashes. */
  readonly earned: bigint[];
  readonly slashed: bigint[];
  /** What tenants were paid from slashes (the tenant's share, and the caller's when they slashed). */
  compensation = 0n;

  constructor({
    providers,
    tenantShareBps,
    callerShareBps,
  }: {
    providers: number;
    tenantShareBps: number;
    callerShareBps: number;
  }) {
    this.#tenantShareBps = BigInt(tenantShareBps);
    this.#callerShareBps = BigInt(callerShareBps);
    this.#wallets = Array.from({ length: providers }, () => 0n);
    this.#stake = Array.from({ length: providers }, () => 0n);
    this.#locked = Array.from({ length: providers }, () => 0n);
    this.#claimable = Array.from({ length: providers }, () => 0n);
    this.earned = Array.from({ length: providers }, () => 0n);
    this.slashed = Array.from({ length: providers }, () => 0n);
  }

  #balance(account: number): bigint {
    return account < 0 ? this.#fixed[-account]! : this.#wallets[account]!;
  }

  #add(account: number, amount: bigint): void {
    if (account < 0) this.#fixed[-account]! += amount;
    else this.#wallets[account]! += amount;
  }

  #transfer(from: number, to: number, amount: bigint): void {
    const balance = this.#balance(from);
    if (balance < amount) throw new Error(`simulated escrow: account ${from} holds ${balance}, not ${amount}`);
    this.#add(from, -amount);
    this.#add(to, amount);
  }

  #mint(to: number, amount: bigint): void {
    this.#minted += amount;
    this.#add(to, amount);
  }

  /** `ProviderRegistry.lockCollateral`: locks free stake; a provider short of it stakes more first (`stake`). */
  #lockCollateral(provider: number, collateral: bigint): void {
    const free = this.#stake[provider]! - this.#locked[provider]!;
    if (free < collateral) {
      const more = collateral - free;
      this.#mint(provider, more);
      this.#transfer(provider, REGISTRY, more);
      this.#stake[provider]! += more;
    }
    this.#locked[provider]! += collateral;
  }

  /** `ProviderRegistry.releaseCollateral`. */
  #releaseCollateral(provider: number, collateral: bigint): void {
    this.#locked[provider]! -= collateral;
  }

  /**
   * `LeaseManager.openLease` / `openLeaseFor`: locks the quote's collateral and pulls the deposit
   * (the tenant's tokens are minted as it needs them). Returns the lease's id.
   */
  open(provider: number, now: number, pricePerSecond: bigint, deposit: bigint, collateral: bigint): number {
    this.#lockCollateral(provider, collateral);
    this.#mint(TENANTS, deposit);
    this.#mintedToTenants += deposit;
    this.#transfer(TENANTS, ESCROW, deposit);
    this.#leases.push({ provider, status: Status.Active, pricePerSecond, deposit, collateral, settledUntil: now });
    return this.#leases.length - 1;
  }

  /** `LeaseManager._settleFinal`: the provider earns to `until`, the rest of the deposit is the tenant's. */
  #settleFinal(r: LeaseRecord, until: number): bigint {
    let earned = 0n;
    if (until > r.settledUntil) {
      earned = BigInt(until - r.settledUntil) * r.pricePerSecond;
      if (earned > r.deposit) throw new Error("simulated escrow: a lease outran its deposit");
      r.settledUntil = until;
      this.#claimable[r.provider]! += earned;
      this.earned[r.provider]! += earned;
    }
    const refund = r.deposit - earned;
    r.deposit = 0n;
    return refund;
  }

  /** `LeaseManager.finish`: paid to now, collateral released, the rest refunded. */
  finish(id: number, now: number): void {
    const r = this.#leases[id]!;
    r.status = Status.Completed;
    const refund = this.#settleFinal(r, now);
    this.#releaseCollateral(r.provider, r.collateral);
    this.#transfer(ESCROW, TENANTS, refund);
  }

  /**
   * `LeaseManager._close` (the tenant's `close`, or `openLeaseFor` ending an active predecessor):
   * paid to the provider's last on-chain heartbeat, the rest refunded; the collateral waits.
   */
  close(id: number, lastHeartbeat: number): void {
    const r = this.#leases[id]!;
    r.status = Status.Closing;
    const refund = this.#settleFinal(r, lastHeartbeat);
    this.#transfer(ESCROW, TENANTS, refund);
  }

  /** `LeaseManager.heartbeat` on a closing lease within its deadline: closed, collateral released. */
  acknowledgeClose(id: number): void {
    const r = this.#leases[id]!;
    r.status = Status.Closed;
    this.#releaseCollateral(r.provider, r.collateral);
  }

  /**
   * `LeaseManager._slash` (`slashMissedHeartbeat`, or `openLeaseFor` ending a slashable predecessor):
   * an active lease is paid to its last heartbeat first; the collateral goes to the tenant's share,
   * the caller's share (the tenant takes both when it slashes itself) and the treasury.
   */
  slash(id: number, lastHeartbeat: number, caller: "tenant" | typeof KEEPER): SlashPayout {
    const r = this.#leases[id]!;
    if (r.status === Status.Active) this.#transfer(ESCROW, TENANTS, this.#settleFinal(r, lastHeartbeat));
    r.status = Status.Slashed;
    const collateral = r.collateral;
    const tenant = (collateral * this.#tenantShareBps) / 10_000n;
    const callerShare = (collateral * this.#callerShareBps) / 10_000n;
    const treasury = collateral - tenant - callerShare;
    this.#locked[r.provider]! -= collateral;
    this.#stake[r.provider]! -= collateral;
    this.slashed[r.provider]! += collateral;
    this.#transfer(REGISTRY, TENANTS, tenant);
    this.#transfer(REGISTRY, caller === "tenant" ? TENANTS : KEEPER, callerShare);
    this.#transfer(REGISTRY, TREASURY, treasury);
    this.compensation += tenant + (caller === "tenant" ? callerShare : 0n);
    return { tenant, caller: callerShare, treasury };
  }

  /** `LeaseManager.claim`: what a provider's leases earned leaves the escrow for its wallet. */
  claim(provider: number): void {
    const amount = this.#claimable[provider]!;
    this.#claimable[provider] = 0n;
    this.#transfer(ESCROW, provider, amount);
  }

  /**
   * Money conservation: the ledger holds what was minted, the escrow holds exactly the deposits of
   * live leases and what providers have not claimed, and the registry exactly the providers' stake.
   * Returns a list of what does not hold (empty when all do).
   */
  check(): string[] {
    const problems: string[] = [];
    let total = 0n;
    for (const balance of [...this.#fixed, ...this.#wallets]) total += balance;
    if (total !== this.#minted) problems.push(`the ledger holds ${total}, but ${this.#minted} was minted`);
    let owed = 0n;
    for (const r of this.#leases) owed += r.deposit;
    for (const c of this.#claimable) owed += c;
    const escrow = this.#balance(ESCROW);
    if (escrow !== owed) problems.push(`the escrow holds ${escrow} and owes ${owed}`);
    const staked = this.#stake.reduce((sum, s) => sum + s, 0n);
    const registry = this.#balance(REGISTRY);
    if (registry !== staked) problems.push(`the registry holds ${registry} and owes ${staked} of stake`);
    return problems;
  }

  /** What tenants spent through the escrow: deposits less refunds and slash payouts. */
  get tenantNet(): bigint {
    return this.#mintedToTenants - this.#balance(TENANTS);
  }
}
