import { IOU_FORMAT, U64_MAX } from "./constants.js";
import { bytesToHex, hexToBytes, verifyEd25519, type Ed25519KeyPair } from "./ed25519.js";

/** A Tally IOU (`docs/iou-format.md`, section 3), with binary fields as bytes. */
export interface Iou {
  /** 1..=64 ASCII bytes of `A-Z a-z 0-9 : . _ -`, e.g. `tally:mainnet`. */
  network: string;
  /** The payer's 32-byte Ed25519 public key. */
  payerKey: Uint8Array;
  /** 1..=64 ASCII bytes of `A-Z a-z 0-9 . _ -`. */
  payee: string;
  /** 1..=12 ASCII bytes of `A-Z 0-9`. */
  asset: string;
  /** 1..=2^64-1 smallest units of the asset. */
  amount: bigint;
  /** 16 bytes, fresh for every IOU. */
  nonce: Uint8Array;
  /** Unix seconds. */
  issuedAt: number;
  /** Unix seconds, after `issuedAt`. */
  expiresAt: number;
  /** 0..=1024 bytes once UTF-8 encoded; signed exactly as given. */
  resource: string;
}

/** The JSON form of an IOU inside an x402 payload (`docs/x402-binding.md`, section 1). */
export interface IouJson {
  network: string;
  payerKey: string;
  payee: string;
  asset: string;
  amount: string;
  nonce: string;
  issuedAt: number;
  expiresAt: number;
  resource: string;
}

/** `paymentPayload.payload` for a Tally IOU. */
export interface TallyIouPayload {
  format: typeof IOU_FORMAT;
  iou: IouJson;
  signature: string;
}

const DOMAIN_TAG = new TextEncoder().encode("tally-iou-v1");
const NETWORK_RE = /^[A-Za-z0-9:._-]{1,64}$/;
const ASSET_RE = /^[A-Z0-9]{1,12}$/;
const PAYEE_RE = /^[A-Za-z0-9._-]{1,64}$/;
const RESOURCE_MAX_BYTES = 1024;
const CANONICAL_AMOUNT_RE = /^(0|[1-9][0-9]*)$/;

/** True when `code` is a valid Tally asset code (`A-Z 0-9`, 1 to 12 bytes). */
export function isValidAssetCode(code: string): boolean {
  return ASSET_RE.test(code);
}

/** True when `payee` is a valid Tally payee id. */
export function isValidPayee(payee: string): boolean {
  return PAYEE_RE.test(payee);
}

/** True when `network` is a valid Tally network id. */
export function isValidNetwork(network: string): boolean {
  return NETWORK_RE.test(network);
}

/**
 * Parses a canonical decimal amount string (digits only, no sign, no leading zero)
 * into a bigint within 1..=2^64-1; throws otherwise. Tally refuses any other spelling.
 */
export function parseAmount(amount: string, what = "amount"): bigint {
  if (typeof amount !== "string" || !CANONICAL_AMOUNT_RE.test(amount)) {
    throw new Error(`${what} must be a canonical decimal string of smallest units, got ${JSON.stringify(amount)}`);
  }
  const value = BigInt(amount);
  if (value < 1n || value > U64_MAX) {
    throw new Error(`${what} must be between 1 and 2^64-1, got ${amount}`);
  }
  return value;
}

function checkUnixSeconds(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new Error(`${what} must be a non-negative integer number of Unix seconds`);
  }
}

/** Checks every field against `docs/iou-format.md` section 3; throws on the first violation. */
export function validateIou(iou: Iou): void {
  if (!NETWORK_RE.test(iou.network)) {
    throw new Error(`network must be 1..=64 bytes of [A-Za-z0-9:._-], got ${JSON.stringify(iou.network)}`);
  }
  if (!(iou.payerKey instanceof Uint8Array) || iou.payerKey.length !== 32) {
    throw new Error("payerKey must be 32 bytes");
  }
  if (!PAYEE_RE.test(iou.payee)) {
    throw new Error(`payee must be 1..=64 bytes of [A-Za-z0-9._-], got ${JSON.stringify(iou.payee)}`);
  }
  if (!ASSET_RE.test(iou.asset)) {
    throw new Error(`asset must be 1..=12 bytes of [A-Z0-9], got ${JSON.stringify(iou.asset)}`);
  }
  if (typeof iou.amount !== "bigint" || iou.amount < 1n || iou.amount > U64_MAX) {
    throw new Error("amount must be a bigint in 1..=2^64-1");
  }
  if (!(iou.nonce instanceof Uint8Array) || iou.nonce.length !== 16) {
    throw new Error("nonce must be 16 bytes");
  }
  checkUnixSeconds(iou.issuedAt, "issuedAt");
  checkUnixSeconds(iou.expiresAt, "expiresAt");
  if (iou.expiresAt <= iou.issuedAt) {
    throw new Error("expiresAt must be after issuedAt");
  }
  if (typeof iou.resource !== "string" || Buffer.byteLength(iou.resource, "utf8") > RESOURCE_MAX_BYTES) {
    throw new Error(`resource must be at most ${RESOURCE_MAX_BYTES} bytes of UTF-8`);
  }
}

function u64(value: bigint): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, value, false);
  return out;
}

function shortAscii(text: string): Uint8Array {
  const raw = new TextEncoder().encode(text);
  const out = new Uint8Array(1 + raw.length);
  out[0] = raw.length;
  out.set(raw, 1);
  return out;
}

/**
 * The canonical signing bytes of an IOU (`docs/iou-format.md`, section 2): what the
 * payer signs and the ledger stores. Validates the fields first.
 */
export function iouSigningBytes(iou: Iou): Uint8Array {
  validateIou(iou);
  const resource = new TextEncoder().encode(iou.resource);
  const resourceLen = new Uint8Array(2);
  new DataView(resourceLen.buffer).setUint16(0, resource.length, false);
  const parts = [
    DOMAIN_TAG,
    iou.payerKey,
    iou.nonce,
    u64(iou.amount),
    u64(BigInt(iou.issuedAt)),
    u64(BigInt(iou.expiresAt)),
    shortAscii(iou.network),
    shortAscii(iou.asset),
    shortAscii(iou.payee),
    resourceLen,
    resource,
  ];
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** Signs an IOU with `keyPair`; returns the 64-byte Ed25519 signature. */
export function signIou(iou: Iou, keyPair: Ed25519KeyPair): Uint8Array {
  if (bytesToHex(iou.payerKey) !== bytesToHex(keyPair.publicKey)) {
    throw new Error("the IOU's payerKey is not the signing key's public key");
  }
  return keyPair.sign(iouSigningBytes(iou));
}

/** Verifies an IOU's signature (RFC 8032 verification, as any Ed25519 library does). */
export function verifyIou(iou: Iou, signature: Uint8Array): boolean {
  return verifyEd25519(iou.payerKey, iouSigningBytes(iou), signature);
}

/** The JSON form of an IOU (hex binary fields, decimal-string amount). */
export function iouToJson(iou: Iou): IouJson {
  validateIou(iou);
  return {
    network: iou.network,
    payerKey: bytesToHex(iou.payerKey),
    payee: iou.payee,
    asset: iou.asset,
    amount: iou.amount.toString(),
    nonce: bytesToHex(iou.nonce),
    issuedAt: iou.issuedAt,
    expiresAt: iou.expiresAt,
    resource: iou.resource,
  };
}

/** Parses the JSON form of an IOU; throws when a field is malformed. */
export function iouFromJson(json: IouJson): Iou {
  const iou: Iou = {
    network: json.network,
    payerKey: hexToBytes(json.payerKey, "payerKey"),
    payee: json.payee,
    asset: json.asset,
    amount: parseAmount(json.amount),
    nonce: hexToBytes(json.nonce, "nonce"),
    issuedAt: json.issuedAt,
    expiresAt: json.expiresAt,
    resource: json.resource,
  };
  validateIou(iou);
  return iou;
}

/** Builds the `tally-iou-v1` x402 payload for a signed IOU. */
export function tallyIouPayload(iou: Iou, signature: Uint8Array): TallyIouPayload {
  if (signature.length !== 64) {
    throw new Error("signature must be 64 bytes");
  }
  return { format: IOU_FORMAT, iou: iouToJson(iou), signature: bytesToHex(signature) };
}
