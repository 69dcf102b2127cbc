// Price parsing and asset lookup of the server and client schemes (no network).
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { decimalToSmallestUnits, smallestUnitsToDecimal } from "@tally-x402/batch-settlement";
import { BatchSettlementTallyScheme as ClientScheme } from "@tally-x402/batch-settlement/client";
import { BatchSettlementTallyScheme as ServerScheme } from "@tally-x402/batch-settlement/server";

const NET = "tally:test" as const;

describe("server parsePrice", () => {
  const scheme = new ServerScheme({
    assets: [
      { code: "USD", decimals: 6, usdPegged: true },
      { code: "EUR", decimals: 2 },
      { code: "JPY", decimals: 0 },
    ],
  });
  const cases: Array<[string | number | { amount: string; asset: string }, { amount: string; asset: string }]> = [
    ["$0.01", { amount: "10000", asset: "USD" }],
    ["$0.000001", { amount: "1", asset: "USD" }],
    ["0.0015", { amount: "1500", asset: "USD" }],
    ["$1", { amount: "1000000", asset: "USD" }],
    ["12.50 EUR", { amount: "1250", asset: "EUR" }],
    ["3 jpy", { amount: "3", asset: "JPY" }],
    ["0.10 USD", { amount: "100000", asset: "USD" }],
    [0.25, { amount: "250000", asset: "USD" }],
    ["18446744073709.551615", { amount: "18446744073709551615", asset: "USD" }],
    [{ amount: "42", asset: "EUR" }, { amount: "42", asset: "EUR" }],
  ];
  for (const [price, expected] of cases) {
    it(`parses ${JSON.stringify(price)}`, async () => {
      assert.deepEqual(await scheme.parsePrice(price, NET), expected);
    });
  }
  const refused: Array<string | number | { amount: string; asset: string }> = [
    "$0.0000001", // finer than one micro-dollar: refused, not rounded
    "0.001 EUR",
    "$0",
    "-1",
    "1e-3",
    1e-7,
    "$0.01 EUR", // "$" is dollars
    "5 GBP", // not in the table
    "18446744073709.551616", // above u64
    { amount: "01", asset: "USD" },
    { amount: "1.5", asset: "USD" },
    { amount: "0", asset: "USD" },
    { amount: "1", asset: "usd" },
  ];
  for (const price of refused) {
    it(`refuses ${JSON.stringify(price)}`, async () => {
      await assert.rejects(scheme.parsePrice(price, NET));
    });
  }
  it("tries registered money parsers first", async () => {
    const s = new ServerScheme().registerMoneyParser((amount) =>
      Promise.resolve(amount === "7" ? { amount: "7", asset: "USD" } : null),
    );
    assert.deepEqual(await s.parsePrice("7", NET), { amount: "7", asset: "USD" });
    assert.deepEqual(await s.parsePrice("8", NET), { amount: "8000000", asset: "USD" });
  });
  it("reports asset decimals for settlement overrides", () => {
    assert.equal(scheme.getAssetDecimals("EUR", NET), 2);
    assert.equal(scheme.getAssetDecimals("GBP", NET), undefined);
  });
});

describe("decimal conversion", () => {
  it("is exact integer arithmetic", () => {
    assert.equal(decimalToSmallestUnits("0.1", 18), 100000000000000000n);
    assert.equal(decimalToSmallestUnits("0.30", 1), 3n);
    assert.equal(smallestUnitsToDecimal(1500n, 6), "0.0015");
    assert.equal(smallestUnitsToDecimal(25000000n, 6), "25");
  });
});

describe("client default assets (SDK spend controls)", () => {
  const scheme = new ClientScheme({
    signer: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    assets: [
      { code: "USD", decimals: 6, usdPegged: true },
      { code: "EUR", decimals: 2 },
    ],
  });
  it("reports USD-pegged assets as default assets on tally networks only", () => {
    assert.deepEqual(scheme.findDefaultAsset("USD", NET), { asset: "USD", decimals: 6, symbol: "USD" });
    assert.equal(scheme.findDefaultAsset("EUR", NET), undefined);
    assert.equal(scheme.findDefaultAsset("USD", "eip155:8453"), undefined);
  });
});
