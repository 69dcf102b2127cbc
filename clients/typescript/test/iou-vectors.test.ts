// The test vectors of docs/iou-format.md (section 10), byte for byte, plus the field
// refusals of section 11 and the payload shape of docs/x402-binding.md section 1.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";

import {
  bytesToHex,
  hexToBytes,
  iouFromJson,
  iouSigningBytes,
  iouToJson,
  keyPairFromSeed,
  nonceFromPaymentId,
  signIou,
  tallyIouPayload,
  verifyIou,
  type Iou,
} from "@tally-x402/batch-settlement";

interface Vector {
  name: string;
  seed: string;
  payerKey: string;
  network: string;
  payee: string;
  asset: string;
  amount: bigint;
  nonce: string;
  issuedAt: number;
  expiresAt: number;
  resource: string;
  resourceHex: string;
  signingBytes: string;
  signature: string;
}

const VECTORS: Vector[] = [
  {
    name: "vector 1: minimal",
    seed: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    payerKey: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    network: "tally:test",
    payee: "pub-1",
    asset: "USD",
    amount: 1n,
    nonce: "000102030405060708090a0b0c0d0e0f",
    issuedAt: 1700000000,
    expiresAt: 1700000060,
    resource: "",
    resourceHex: "",
    signingBytes:
      "74616c6c792d696f752d7631d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a000102030405060708090a0b0c0d0e0f0000000000000001000000006553f100000000006553f13c0a74616c6c793a7465737403555344057075622d310000",
    signature:
      "82cd6114d40b9fa1324dc411e8ccce833451a8789f838cb17c53f526883def26f97b18aeb33587282bab8f5f0f5e0f7f46a0300a63dffa77ad33ad9ffb264308",
  },
  {
    name: "vector 2: a crawler paying for a page",
    seed: "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
    payerKey: "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
    network: "tally:mainnet",
    payee: "news.example",
    asset: "USDC",
    amount: 100n,
    nonce: "8f3a5c1e0b7d4962a1e8c3f05d2b9e47",
    issuedAt: 1735689600,
    expiresAt: 1735689900,
    resource: "https://news.example/2025/01/01/markets.html?page=2",
    resourceHex:
      "68747470733a2f2f6e6577732e6578616d706c652f323032352f30312f30312f6d61726b6574732e68746d6c3f706167653d32",
    signingBytes:
      "74616c6c792d696f752d76313d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c8f3a5c1e0b7d4962a1e8c3f05d2b9e470000000000000064000000006774858000000000677486ac0d74616c6c793a6d61696e6e657404555344430c6e6577732e6578616d706c65003368747470733a2f2f6e6577732e6578616d706c652f323032352f30312f30312f6d61726b6574732e68746d6c3f706167653d32",
    signature:
      "5a6fe55f63c69df97ae3cf5c132dce60c2981a340a7106fda48fab1db245433aeb1c6551a40b42ebe5b6e000b265d69026112d2adb763da204b2ce0cd3e05c07",
  },
  {
    name: "vector 3: edge values",
    seed: "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
    payerKey: "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
    network: "tally:staging.eu-west-1:edge_case-network.v1:ABCDEFGHIJKLMNOPQRS",
    payee: "publisher_with.a-very-long.account-id_that-is-exactly-64-bytes.x",
    asset: "ABCDEFGHIJ12",
    amount: 18446744073709551615n,
    nonce: "ffffffffffffffffffffffffffffffff",
    issuedAt: 1767225600,
    expiresAt: 1767312000,
    resource: "https://例え.jp/記事/🦀?q=café",
    resourceHex:
      "68747470733a2f2fe4be8be381882e6a702fe8a898e4ba8b2ff09fa6803f713d636166c3a9",
    signingBytes:
      "74616c6c792d696f752d7631fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025ffffffffffffffffffffffffffffffffffffffffffffffff000000006955b9000000000069570a804074616c6c793a73746167696e672e65752d776573742d313a656467655f636173652d6e6574776f726b2e76313a4142434445464748494a4b4c4d4e4f505152530c4142434445464748494a3132407075626c69736865725f776974682e612d766572792d6c6f6e672e6163636f756e742d69645f746861742d69732d65786163746c792d36342d62797465732e78002568747470733a2f2fe4be8be381882e6a702fe8a898e4ba8b2ff09fa6803f713d636166c3a9",
    signature:
      "3260a1b8ec530673accbec841bd146f375f6934ec0b4767d408f40b70fa1c345466b40539758784f516041dcf2ee0643acc5c01b209c969a6eb3dcd333b31609",
  },
];

function iouOf(v: Vector): Iou {
  return {
    network: v.network,
    payerKey: hexToBytes(v.payerKey),
    payee: v.payee,
    asset: v.asset,
    amount: v.amount,
    nonce: hexToBytes(v.nonce),
    issuedAt: v.issuedAt,
    expiresAt: v.expiresAt,
    resource: v.resource,
  };
}

describe("IOU test vectors (docs/iou-format.md section 10)", () => {
  for (const v of VECTORS) {
    it(v.name, () => {
      const keyPair = keyPairFromSeed(v.seed);
      assert.equal(bytesToHex(keyPair.publicKey), v.payerKey, "public key derived from the seed");
      assert.equal(Buffer.from(v.resource, "utf8").toString("hex"), v.resourceHex, "resource_hex");
      const iou = iouOf(v);
      const bytes = iouSigningBytes(iou);
      assert.equal(bytesToHex(bytes), v.signingBytes, "signing_bytes");
      const signature = signIou(iou, keyPair);
      assert.equal(bytesToHex(signature), v.signature, "signature");
      assert.ok(verifyIou(iou, signature));
      const tampered = Uint8Array.from(signature);
      tampered[0] = tampered[0]! ^ 1;
      assert.ok(!verifyIou(iou, tampered));
      // The JSON form round-trips to the same signing bytes.
      assert.equal(bytesToHex(iouSigningBytes(iouFromJson(iouToJson(iou)))), v.signingBytes);
    });
  }

  it("vector 2's layout matches the worked example (section 9): 169 bytes, resource at 118", () => {
    const bytes = iouSigningBytes(iouOf(VECTORS[1]!));
    assert.equal(bytes.length, 169);
    assert.equal(bytesToHex(bytes.subarray(84, 85)), "0d");
    assert.equal(bytesToHex(bytes.subarray(116, 118)), "0033");
  });
});

// Log record hashes and commitment ids (section 8 and the end of section 10),
// computed here from the vectors' signing bytes and signatures.
function recordHash(args: {
  tag: "tally-log-v1" | "tally-log-v2";
  prev: string;
  seq: bigint;
  epoch: bigint;
  acceptedAtMs: bigint;
  charge?: bigint;
  signature: string;
  evidence: string;
}): string {
  const u64 = (n: bigint) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(n);
    return b;
  };
  const h = createHash("sha256")
    .update(args.tag, "ascii")
    .update(Buffer.from(args.prev, "hex"))
    .update(u64(args.seq))
    .update(u64(args.epoch))
    .update(u64(args.acceptedAtMs));
  if (args.charge !== undefined) h.update(u64(args.charge));
  return h.update(Buffer.from(args.signature, "hex")).update(Buffer.from(args.evidence, "hex")).digest("hex");
}

describe("log record hashes (docs/iou-format.md sections 8 and 10)", () => {
  const zero = "00".repeat(32);
  const [v1, v2] = VECTORS as [Vector, Vector, Vector];
  it("format 1", () => {
    const r1 = recordHash({ tag: "tally-log-v1", prev: zero, seq: 1n, epoch: 1n, acceptedAtMs: 1700000000123n, signature: v1.signature, evidence: v1.signingBytes });
    assert.equal(r1, "4b8e2714f67428053267db73f0e21c57ca1c9977c75ffd8eb797541520bbaa32");
    const r2 = recordHash({ tag: "tally-log-v1", prev: r1, seq: 2n, epoch: 1n, acceptedAtMs: 1735689601234n, signature: v2.signature, evidence: v2.signingBytes });
    assert.equal(r2, "c8e258fb06e35fcd15070c7ddb7ca6b4e832dc116d7fbd96489ec9813af8e8c8");
    assert.equal(`2:${r2}`, "2:c8e258fb06e35fcd15070c7ddb7ca6b4e832dc116d7fbd96489ec9813af8e8c8");
  });
  it("format 2 (with the charge; vector 2 charged 60 of 100)", () => {
    const r1 = recordHash({ tag: "tally-log-v2", prev: zero, seq: 1n, epoch: 1n, acceptedAtMs: 1700000000123n, charge: 1n, signature: v1.signature, evidence: v1.signingBytes });
    assert.equal(`1:${r1}`, "1:6f228a2b199023a961cee6f084d59bbb476114a2fa875ed33e8af0227aef0ca9");
    const r2 = recordHash({ tag: "tally-log-v2", prev: r1, seq: 2n, epoch: 1n, acceptedAtMs: 1735689601234n, charge: 60n, signature: v2.signature, evidence: v2.signingBytes });
    assert.equal(`2:${r2}`, "2:29d0f08fabba3d6ad009df01f2d790a74c8041341d2c0ac80b059ea6f10e3cf8");
  });
});

describe("batch vector (docs/iou-format.md section 13)", () => {
  it("leaves, root, statement and signature", () => {
    const v1 = VECTORS[0]!;
    const keyPair = keyPairFromSeed(v1.seed);
    const base = iouOf(v1);
    const ious: Iou[] = [1n, 2n, 3n].map((amount, i) => {
      const nonce = Uint8Array.from(base.nonce);
      if (i > 0) nonce[15] = 0x0f + i;
      return { ...base, amount, nonce };
    });
    const sha = (...parts: Uint8Array[]) => {
      const h = createHash("sha256");
      for (const p of parts) h.update(p);
      return Uint8Array.from(h.digest());
    };
    const leaves = ious.map((iou) => sha(Uint8Array.of(0), iouSigningBytes(iou)));
    assert.deepEqual(leaves.map(bytesToHex), [
      "745649550a8769c42c8fde6026b5bdf1f9fb3172b8895dbb017b432b09d287e0",
      "d9a25d37010a7e96aa621832b2d94cef529cd4bec4e1ed4a253164ca2b8ed2ac",
      "6dac0a66d5a192e0743d55cd16c64d1ea91c027839c1f586f29ede9565753a68",
    ]);
    const node01 = sha(Uint8Array.of(1), leaves[0]!, leaves[1]!);
    assert.equal(bytesToHex(node01), "0a18ca8bdadcca9beb0098af338e851a863c209f4da573c1f34fd8e6657f03f9");
    const root = sha(Uint8Array.of(1), node01, leaves[2]!);
    assert.equal(bytesToHex(root), "e9fc6ff37d8783a344c6ae79f4659a1a79b7b2ac4542b876bab49bfc3f35e4ee");
    const statement = Buffer.concat([
      Buffer.from("tally-bat-v1", "ascii"),
      keyPair.publicKey,
      Buffer.from("0000000000000001", "hex"),
      Buffer.from("00000003", "hex"),
      root,
    ]);
    assert.equal(statement.length, 88);
    assert.equal(
      statement.toString("hex"),
      "74616c6c792d6261742d7631d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a000000000000000100000003e9fc6ff37d8783a344c6ae79f4659a1a79b7b2ac4542b876bab49bfc3f35e4ee",
    );
    assert.equal(
      bytesToHex(keyPair.sign(statement)),
      "559d984c25507073ac7bd638c8493aa545c2ee2b000187dad2e7e769b8c449834d8aeecf5b6aba80cd10816914f0ea3c27d10cd45def688dcb3da01035475201",
    );
  });
});

describe("field checks (docs/iou-format.md section 11)", () => {
  const base = iouOf(VECTORS[0]!);
  const refused: Array<[string, Partial<Iou>]> = [
    ["a 65-byte network", { network: "t".repeat(65) }],
    ["an empty network", { network: "" }],
    ["a network character outside its alphabet", { network: "tally test" }],
    ["a 65-byte payee", { payee: "p".repeat(65) }],
    ["an empty payee", { payee: "" }],
    ["a payee with ':'", { payee: "pub:1" }],
    ["a 13-byte asset", { asset: "ABCDEFGHIJKLM" }],
    ["a lower-case asset", { asset: "usd" }],
    ["an empty asset", { asset: "" }],
    ["a 1025-byte resource", { resource: "r".repeat(1025) }],
    ["a 1025-byte UTF-8 resource of 513 characters", { resource: "é".repeat(513) }],
    ["amount 0", { amount: 0n }],
    ["amount 2^64", { amount: 1n << 64n }],
    ["a 15-byte nonce", { nonce: new Uint8Array(15) }],
    ["expiresAt == issuedAt", { expiresAt: base.issuedAt }],
  ];
  for (const [name, change] of refused) {
    it(`refuses ${name}`, () => {
      assert.throws(() => iouSigningBytes({ ...base, ...change }));
    });
  }
  it("accepts a 1024-byte resource and 64-byte network and payee", () => {
    const bytes = iouSigningBytes({ ...base, resource: "r".repeat(1024), network: "n".repeat(64), payee: "p".repeat(64) });
    assert.equal(bytes.length, 84 + 65 + 4 + 65 + 2 + 1024);
  });
});

describe("x402 payload (docs/x402-binding.md sections 1 and 4)", () => {
  it("has the documented shape, hex fields and a decimal-string amount", () => {
    const v = VECTORS[1]!;
    const payload = tallyIouPayload(iouOf(v), hexToBytes(v.signature));
    assert.deepEqual(payload, {
      format: "tally-iou-v1",
      iou: {
        network: v.network,
        payerKey: v.payerKey,
        payee: v.payee,
        asset: v.asset,
        amount: "100",
        nonce: v.nonce,
        issuedAt: v.issuedAt,
        expiresAt: v.expiresAt,
        resource: v.resource,
      },
      signature: v.signature,
    });
  });
  it("derives the nonce of a payment identifier as SHA-256(tag || id)[..16]", () => {
    const id = "pay_0123456789abcdef0123456789abcdef";
    const expected = createHash("sha256").update("tally-payment-id-v1").update(id).digest().subarray(0, 16);
    assert.equal(bytesToHex(nonceFromPaymentId(id)), expected.toString("hex"));
    assert.throws(() => nonceFromPaymentId("short"));
    assert.throws(() => nonceFromPaymentId("has space in it 0123456789"));
  });
});
