// End to end against a real `tally serve`: the official @x402/fetch client with this
// package's client scheme, paying through the official @x402/express and @x402/hono
// middlewares with this package's server scheme, Tally as the HTTP facilitator.
import assert from "node:assert/strict";
import { createPublicKey, randomBytes, verify as nodeVerify } from "node:crypto";
import { after, before, describe, it } from "node:test";

import { x402Client } from "@x402/core/client";
import { x402Facilitator } from "@x402/core/facilitator";
import { decodePaymentRequiredHeader, decodePaymentResponseHeader, encodePaymentSignatureHeader } from "@x402/core/http";
import type { PaymentPayload, PaymentRequired, SettleResponse } from "@x402/core/types";
import { declarePaymentIdentifierExtension } from "@x402/extensions/payment-identifier";
import { wrapFetchWithPayment } from "@x402/fetch";
import { helpers as wbaHelpers, jwkToKeyID } from "web-bot-auth";

import { bytesToHex, generateKeyPair, nonceFromPaymentId, type Ed25519KeyPair, type TallyIouPayload } from "@tally-x402/batch-settlement";
import {
  BatchSettlementTallyScheme as ClientScheme,
  jwkThumbprint,
  registerBatchSettlementTallyScheme,
  wrapFetchWithWebBotAuth,
  type TallyClientConfig,
} from "@tally-x402/batch-settlement/client";
import { registerBatchSettlementTallyScheme as registerFacilitatorScheme } from "@tally-x402/batch-settlement/facilitator";

import { startExpress, startHono, type RouteSpec, type RunningServer } from "./support/servers.js";
import { Tally } from "./support/tally.js";

const NETWORK = "tally:test";
const AGENT = "https://crawler.example";

let tally: Tally;
const rich = generateKeyPair(); // crawler-1: limit USD 25.00
const poor = generateKeyPair(); // crawler-poor: limit USD 0.00015 (150 units)

before(async () => {
  tally = await Tally.start();
  await tally.cli("asset", "register", "USD", "--scale", "6");
  await tally.cli("payer", "register", "crawler-1", "--key", bytesToHex(rich.publicKey), "--limit", "USD=25.00");
  await tally.cli("payer", "register", "crawler-poor", "--key", bytesToHex(poor.publicKey), "--limit", "USD=0.00015");
  for (const payee of ["site.example", "hono.example", "metered.example", "wba.example"]) {
    await tally.cli("payee", "register", payee, "--name", payee);
  }
});

after(async () => {
  await tally?.stop();
});

/** An SDK x402Client with this package's scheme, wrapped by the SDK's fetch wrapper. */
function payer(keyPair: Ed25519KeyPair, options: Partial<TallyClientConfig> & { webBotAuth?: boolean } = {}) {
  const { webBotAuth, ...config } = options;
  const client = new x402Client();
  registerBatchSettlementTallyScheme(client, { signer: keyPair, ...config });
  const payloads: PaymentPayload[] = [];
  client.onAfterPaymentCreation((ctx) => {
    payloads.push(ctx.paymentPayload);
    return Promise.resolve();
  });
  const inner = webBotAuth ? wrapFetchWithWebBotAuth(fetch, { signer: keyPair, signatureAgent: AGENT }) : fetch;
  return { client, payloads, fetch: wrapFetchWithPayment(inner, client) };
}

function receiptOf(response: Response): SettleResponse {
  const header = response.headers.get("PAYMENT-RESPONSE");
  assert.ok(header, `no PAYMENT-RESPONSE header (status ${response.status})`);
  return decodePaymentResponseHeader(header);
}

function paymentRequiredOf(response: Response): PaymentRequired {
  const header = response.headers.get("PAYMENT-REQUIRED");
  assert.ok(header, `no PAYMENT-REQUIRED header (status ${response.status})`);
  return decodePaymentRequiredHeader(header);
}

function iouOf(payload: PaymentPayload): TallyIouPayload["iou"] {
  return (payload.payload as unknown as TallyIouPayload).iou;
}

/** The shared checks of the Express and Hono suites. */
function fixedPriceSuite(name: string, start: typeof startExpress, payTo: string) {
  describe(`${name}: fixed price`, () => {
    let site: RunningServer;
    const routes: RouteSpec[] = [
      { path: "/article", payTo, price: "$0.001" },
      { path: "/upfront", payTo, price: "$0.002", extra: { paymentFlow: "upfront" } },
      {
        path: "/with-id",
        payTo,
        price: "$0.0005",
        extensions: { "payment-identifier": declarePaymentIdentifierExtension(false) },
      },
    ];
    before(async () => {
      site = await start(tally.facilitatorUrl, routes);
    });
    after(async () => {
      await site?.close();
    });

    it("answers an unpaid request with 402 and a tally:test batch-settlement offer bound to the URL", async () => {
      const response = await fetch(`${site.baseUrl}/article`);
      assert.equal(response.status, 402);
      const required = paymentRequiredOf(response);
      assert.equal(required.x402Version, 2);
      assert.equal(required.accepts.length, 1);
      const offer = required.accepts[0]!;
      assert.equal(offer.scheme, "batch-settlement");
      assert.equal(offer.network, NETWORK);
      assert.equal(offer.asset, "USD");
      assert.equal(offer.amount, "1000");
      assert.equal(offer.payTo, payTo);
      assert.equal(offer.extra.resource, `${site.baseUrl}/article`);
      assert.equal(required.resource.url, `${site.baseUrl}/article`);
      assert.equal(site.served.length, 0);
    });

    it("an unmodified SDK client cannot pay a tally:* offer", async () => {
      const bare = wrapFetchWithPayment(fetch, new x402Client());
      await assert.rejects(bare(`${site.baseUrl}/article`), /No (client|network\/scheme) registered/);
    });

    it("pays twice with fresh nonces; the ledger holds exactly the accepted payments", async () => {
      const before = await tally.totals({ payee: payTo });
      const { fetch: pay, payloads } = payer(rich);
      const receipts: SettleResponse[] = [];
      for (let i = 0; i < 2; i++) {
        const response = await pay(`${site.baseUrl}/article`);
        assert.equal(response.status, 200, await response.clone().text());
        assert.equal(((await response.json()) as { content: string }).content, "the paid content");
        const receipt = receiptOf(response);
        assert.equal(receipt.success, true);
        assert.equal(receipt.network, NETWORK);
        assert.equal(receipt.payer, "crawler-1");
        assert.match(receipt.transaction, /^\d+:[0-9a-f]{64}$/);
        receipts.push(receipt);
      }
      assert.equal(payloads.length, 2);
      const [first, second] = payloads.map(iouOf) as [TallyIouPayload["iou"], TallyIouPayload["iou"]];
      assert.notEqual(first.nonce, second.nonce);
      assert.equal(first.resource, `${site.baseUrl}/article`);
      assert.equal(first.payerKey, bytesToHex(rich.publicKey));
      assert.notEqual(receipts[0]!.transaction, receipts[1]!.transaction);

      // The same PAYMENT-SIGNATURE again buys nothing and is charged nothing.
      const replay = await fetch(`${site.baseUrl}/article`, {
        headers: { "PAYMENT-SIGNATURE": encodePaymentSignatureHeader(payloads[0]!) },
      });
      assert.equal(replay.status, 402);
      assert.equal(site.served.filter((s) => s.path === "/article").length, 2);

      const after = await tally.totals({ payee: payTo });
      assert.equal(after.ious - before.ious, 2);
      const seen = receipts.reduce((n, r) => n + BigInt(r.amount ?? "0"), 0n);
      assert.equal(seen, 2000n);
      assert.equal(after.units - before.units, seen);
    });

    it("pays with the upfront flow (settle before the handler)", async () => {
      const before = await tally.totals({ payee: payTo });
      const { fetch: pay } = payer(rich);
      const response = await pay(`${site.baseUrl}/upfront`);
      assert.equal(response.status, 200, await response.clone().text());
      const receipt = receiptOf(response);
      assert.equal(receipt.success, true);
      assert.equal(receipt.amount, "2000");
      const after = await tally.totals({ payee: payTo });
      assert.equal(after.ious - before.ious, 1);
      assert.equal(after.units - before.units, 2000n);
    });

    it("echoes a payment identifier and derives the IOU nonce from it", async () => {
      const before = await tally.totals({ payee: payTo });
      const { fetch: pay, payloads } = payer(rich);
      const response = await pay(`${site.baseUrl}/with-id`);
      assert.equal(response.status, 200, await response.clone().text());
      assert.equal(receiptOf(response).success, true);
      const ext = payloads[0]!.extensions?.["payment-identifier"] as { info: { id: string; required: boolean } };
      assert.equal(ext.info.required, false);
      assert.match(ext.info.id, /^pay_[0-9a-f]{32}$/);
      assert.equal(iouOf(payloads[0]!).nonce, bytesToHex(nonceFromPaymentId(ext.info.id)));
      const after = await tally.totals({ payee: payTo });
      assert.equal(after.ious - before.ious, 1);
      assert.equal(after.units - before.units, 500n);
    });
  });
}

fixedPriceSuite("express", startExpress, "site.example");
fixedPriceSuite("hono", startHono, "hono.example");

describe("dynamic pricing: the route charges less than its offer", () => {
  for (const [name, start] of [["express", startExpress], ["hono", startHono]] as const) {
    it(`${name}: records the lower charge`, async () => {
      const site = await start(tally.facilitatorUrl, [
        { path: "/metered", payTo: "metered.example", price: "$0.001", charge: "400" },
      ]);
      try {
        const before = await tally.totals({ payee: "metered.example" });
        const { fetch: pay, payloads } = payer(rich);
        const response = await pay(`${site.baseUrl}/metered`);
        assert.equal(response.status, 200, await response.clone().text());
        const receipt = receiptOf(response);
        assert.equal(receipt.success, true);
        assert.equal(receipt.amount, "400");
        assert.equal(iouOf(payloads[0]!).amount, "1000", "the IOU commits the offer");
        const after = await tally.totals({ payee: "metered.example" });
        assert.equal(after.ious - before.ious, 1);
        assert.equal(after.units - before.units, 400n);
      } finally {
        await site.close();
      }
    });
  }
});

describe("client behaviour", () => {
  it("without extra.resource, the IOU is bound to the PaymentRequired resource url", async () => {
    const site = await startExpress(tally.facilitatorUrl, [{ path: "/unbound", payTo: "site.example", price: "$0.0002" }], {
      bindResource: false,
    });
    try {
      const offer = paymentRequiredOf(await fetch(`${site.baseUrl}/unbound`)).accepts[0]!;
      assert.equal(offer.extra.resource, undefined);
      const { fetch: pay, payloads } = payer(rich);
      const response = await pay(`${site.baseUrl}/unbound`);
      assert.equal(response.status, 200, await response.clone().text());
      assert.equal(receiptOf(response).amount, "200");
      assert.equal(iouOf(payloads[0]!).resource, `${site.baseUrl}/unbound`);
    } finally {
      await site.close();
    }
  });

  it("the SDK's USD spend cap ($1 by default) applies to USD offers", async () => {
    const site = await startExpress(tally.facilitatorUrl, [{ path: "/pricey", payTo: "site.example", price: "$2" }]);
    try {
      const before = await tally.totals({ payee: "site.example" });
      const { fetch: pay } = payer(rich);
      await assert.rejects(pay(`${site.baseUrl}/pricey`), /spendControls/);
      const raised = new x402Client().setSpendControls({ maxAmountPerPayment: "$5" });
      registerBatchSettlementTallyScheme(raised, { signer: rich });
      const response = await wrapFetchWithPayment(fetch, raised)(`${site.baseUrl}/pricey`);
      assert.equal(response.status, 200, await response.clone().text());
      assert.equal(receiptOf(response).amount, "2000000");
      const after = await tally.totals({ payee: "site.example" });
      assert.equal(after.units - before.units, 2000000n);
      assert.equal(site.served.length, 1);
    } finally {
      await site.close();
    }
  });
});

describe("credit limit", () => {
  it("refuses a payer over its limit (insufficient_funds); nothing is served or recorded", async () => {
    const expressSite = await startExpress(tally.facilitatorUrl, [{ path: "/cheap", payTo: "site.example", price: "$0.0001" }]);
    const honoSite = await startHono(tally.facilitatorUrl, [
      { path: "/cheap-upfront", payTo: "hono.example", price: "$0.0001", extra: { paymentFlow: "upfront" } },
    ]);
    try {
      const { fetch: pay } = payer(poor);
      const ok = await pay(`${expressSite.baseUrl}/cheap`);
      assert.equal(ok.status, 200, await ok.clone().text());
      assert.equal(receiptOf(ok).amount, "100");

      // 100 + 100 > 150: /verify (authorization flow) refuses before the handler runs.
      const refused = await pay(`${expressSite.baseUrl}/cheap`);
      assert.equal(refused.status, 402);
      assert.equal(paymentRequiredOf(refused).error, "insufficient_funds");
      assert.equal(expressSite.served.length, 1);

      // The upfront flow: /settle refuses, the handler never runs.
      const refusedUpfront = await pay(`${honoSite.baseUrl}/cheap-upfront`);
      assert.equal(refusedUpfront.status, 402);
      const settle = receiptOf(refusedUpfront);
      assert.equal(settle.success, false);
      assert.equal(settle.errorReason, "insufficient_funds");
      assert.equal(honoSite.served.length, 0);

      const ledger = await tally.totals({ payer: "crawler-poor" });
      assert.deepEqual(ledger, { ious: 1, units: 100n });
    } finally {
      await expressSite.close();
      await honoSite.close();
    }
  });
});

/** Parses `sig1=(...);k=v;...` into its label, components and parameters. */
function parseSignatureInput(value: string) {
  const match = /^([a-z0-9_-]+)=\(([^)]*)\)(.*)$/.exec(value);
  assert.ok(match, `unexpected Signature-Input ${value}`);
  const components = [...match[2]!.matchAll(/"([^"]+)"/g)].map((m) => m[1]!);
  const params: Record<string, string> = {};
  for (const m of match[3]!.matchAll(/;([a-z]+)=("([^"]*)"|\d+)/g)) {
    params[m[1]!] = m[3] ?? m[2]!;
  }
  return { label: match[1]!, components, params, signatureParams: value.slice(match[1]!.length + 1) };
}

/** Verifies a Web Bot Auth signature from scratch: RFC 9421 signature base + node crypto. */
function verifyWebBotAuth(headers: Record<string, string>, publicKey: Uint8Array): ReturnType<typeof parseSignatureInput> {
  const input = parseSignatureInput(headers["signature-input"]!);
  const values: Record<string, string> = {
    "@authority": headers.host!.toLowerCase(),
    "signature-agent": headers["signature-agent"]!,
    "payment-signature": headers["payment-signature"]!,
  };
  const base = [
    ...input.components.map((c) => `"${c}": ${values[c]}`),
    `"@signature-params": ${input.signatureParams}`,
  ].join("\n");
  const sig = /^([a-z0-9_-]+)=:([A-Za-z0-9+/=]+):$/.exec(headers.signature!);
  assert.ok(sig && sig[1] === input.label, "Signature header label");
  const key = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(publicKey).toString("base64url") }, format: "jwk" });
  assert.ok(nodeVerify(null, Buffer.from(base, "utf8"), key, Buffer.from(sig[2]!, "base64")), "signature verifies over the base");
  return input;
}

describe("Web Bot Auth", () => {
  let site: RunningServer;
  before(async () => {
    site = await startExpress(tally.facilitatorUrl, [
      { path: "/wba", payTo: "wba.example", price: "$0.0003" },
      { path: "/wba-direct", payTo: "wba.example", price: "$0.0005" },
    ]);
  });
  after(async () => {
    await site?.close();
  });

  it("keyid is the RFC 7638 thumbprint (checked by jsonwebkey-thumbprint)", async () => {
    const jwk = { kty: "OKP", crv: "Ed25519", x: Buffer.from(rich.publicKey).toString("base64url") };
    assert.equal(jwkThumbprint(rich.publicKey), await jwkToKeyID(jwk, wbaHelpers.WEBCRYPTO_SHA256, wbaHelpers.BASE64URL_DECODE));
  });

  it("a WBA-signed IOU payment succeeds through Tally, and its signature verifies independently", async () => {
    const before = await tally.totals({ payee: "wba.example" });
    const { fetch: pay } = payer(rich, { webBotAuth: true });
    const response = await pay(`${site.baseUrl}/wba`);
    assert.equal(response.status, 200, await response.clone().text());
    assert.equal(receiptOf(response).success, true);
    const seen = site.served.find((s) => s.path === "/wba");
    assert.ok(seen, "the handler ran");
    assert.equal(seen.headers["signature-agent"], `"${AGENT}"`);
    const input = verifyWebBotAuth(seen.headers, rich.publicKey);
    assert.deepEqual(input.components, ["@authority", "signature-agent", "payment-signature"]);
    assert.equal(input.params.tag, "web-bot-auth");
    assert.equal(input.params.alg, "ed25519");
    assert.equal(input.params.keyid, jwkThumbprint(rich.publicKey));
    const validity = Number(input.params.expires) - Number(input.params.created);
    assert.ok(validity > 0 && validity <= 300);
    const after = await tally.totals({ payee: "wba.example" });
    assert.equal(after.ious - before.ious, 1);
    assert.equal(after.units - before.units, 300n);
  });

  it("a web-bot-auth format payment (the HTTP signature is the commitment) settles at Tally's facilitator", async () => {
    const before = await tally.totals({ payee: "wba.example" });
    const url = `${site.baseUrl}/wba-direct`;
    const required = paymentRequiredOf(await fetch(url));
    const client = new x402Client();
    registerBatchSettlementTallyScheme(client, { signer: rich, format: "web-bot-auth" });
    const payload = await client.createPaymentPayload(required);
    assert.deepEqual(payload.payload, { amount: "500", asset: "USD" });
    const paymentSignature = encodePaymentSignatureHeader(payload);

    // Sign the paid request as a crawler would, and take its headers as the resource
    // server receives them (Tally's PaywallLayer forwards exactly these).
    let signed: Request | undefined;
    const capture = wrapFetchWithWebBotAuth(
      (input) => {
        signed = input as Request;
        return Promise.resolve(new Response(null, { status: 204 }));
      },
      { signer: rich, signatureAgent: AGENT },
    );
    await capture(url, { headers: { "PAYMENT-SIGNATURE": paymentSignature } });
    assert.ok(signed);
    const headers = {
      host: new URL(url).host,
      "payment-signature": paymentSignature,
      signature: signed.headers.get("signature")!,
      "signature-input": signed.headers.get("signature-input")!,
      "signature-agent": signed.headers.get("signature-agent")!,
    };
    verifyWebBotAuth(headers, rich.publicKey);

    const body = {
      x402Version: 2,
      paymentPayload: {
        ...payload,
        payload: {
          format: "web-bot-auth",
          authority: headers.host,
          signatureAgent: headers["signature-agent"],
          signatureInput: headers["signature-input"],
          signature: headers.signature,
          paymentSignature,
        },
      },
      paymentRequirements: required.accepts[0],
    };
    for (const route of ["verify", "settle"]) {
      const answer = await fetch(`${tally.facilitatorUrl}/${route}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const json = (await answer.json()) as { isValid?: boolean; success?: boolean; amount?: string };
      assert.equal(answer.status, 200, JSON.stringify(json));
      assert.equal(route === "verify" ? json.isValid : json.success, true, JSON.stringify(json));
    }
    const after = await tally.totals({ payee: "wba.example" });
    assert.equal(after.ious - before.ious, 1);
    assert.equal(after.units - before.units, 500n);
  });
});

describe("facilitator scheme (an SDK x402Facilitator forwarding tally:* to Tally)", () => {
  it("verifies and settles an IOU, and maps a refusal to a verdict", async () => {
    const facilitator = new x402Facilitator();
    registerFacilitatorScheme(facilitator, { url: tally.facilitatorUrl, networks: [NETWORK] });
    const supported = facilitator.getSupported();
    assert.ok(supported.kinds.some((k) => k.scheme === "batch-settlement" && k.network === NETWORK));

    const resource = `https://site.example/facilitated/${randomBytes(4).toString("hex")}`;
    const offer = {
      scheme: "batch-settlement",
      network: NETWORK,
      asset: "USD",
      amount: "700",
      payTo: "site.example",
      maxTimeoutSeconds: 300,
      extra: { resource },
    } as const;
    const client = new x402Client();
    client.register("tally:*", new ClientScheme({ signer: rich }));
    const payload = await client.createPaymentPayload({ x402Version: 2, resource: { url: resource }, accepts: [offer] });
    const verdict = await facilitator.verify(payload, offer);
    assert.equal(verdict.isValid, true, JSON.stringify(verdict));
    const settled = await facilitator.settle(payload, offer);
    assert.equal(settled.success, true, JSON.stringify(settled));
    assert.equal(settled.amount, "700");
    const again = await facilitator.settle(payload, offer);
    assert.equal(again.success, false);
    // A refusal Tally answers with HTTP 400 (a required payment identifier missing)
    // comes back as a verdict, not an exception.
    const needsId = await facilitator.verify(
      { ...payload, extensions: { "payment-identifier": { info: { required: true } } } },
      offer,
    );
    assert.equal(needsId.isValid, false);
    assert.equal(typeof needsId.invalidReason, "string");
    const otherPrice = await facilitator.verify(payload, { ...offer, amount: "800" });
    assert.equal(otherPrice.isValid, false);
  });
});
