import {
  createPrivateKey,
  createPublicKey,
  randomBytes,
  sign as nodeSign,
  verify as nodeVerify,
  type KeyObject,
} from "node:crypto";

// DER prefixes that wrap a raw 32-byte Ed25519 seed (PKCS#8) or public key (SPKI),
// so Node's built-in crypto can use raw RFC 8032 keys.
const PKCS8_ED25519_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI_ED25519_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

/** An Ed25519 key pair made from a raw 32-byte RFC 8032 seed. */
export interface Ed25519KeyPair {
  /** The 32-byte secret seed. */
  readonly seed: Uint8Array;
  /** The 32-byte compressed public key (the IOU's `payer_key`). */
  readonly publicKey: Uint8Array;
  /** Signs `message` with pure Ed25519 (RFC 8032, no pre-hash, no context): 64 bytes. */
  sign(message: Uint8Array): Uint8Array;
}

function toBytes(input: Uint8Array | string, what: string, length: number): Uint8Array {
  const bytes = typeof input === "string" ? hexToBytes(input, what) : input;
  if (bytes.length !== length) {
    throw new Error(`${what} must be ${length} bytes, got ${bytes.length}`);
  }
  return Uint8Array.from(bytes);
}

/**
 * Builds a key pair from a 32-byte seed (raw bytes or 64 hex digits). A 64-byte
 * libsodium/NaCl "secret key" is `seed || public key`: pass its first 32 bytes.
 */
export function keyPairFromSeed(seedInput: Uint8Array | string): Ed25519KeyPair {
  const seed = toBytes(seedInput, "Ed25519 seed", 32);
  const privateKey: KeyObject = createPrivateKey({
    key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]),
    format: "der",
    type: "pkcs8",
  });
  const spki = createPublicKey(privateKey).export({ format: "der", type: "spki" });
  const publicKey = Uint8Array.from(spki.subarray(SPKI_ED25519_PREFIX.length));
  return {
    seed,
    publicKey,
    sign(message: Uint8Array): Uint8Array {
      return Uint8Array.from(nodeSign(null, message, privateKey));
    },
  };
}

/** A fresh key pair from 32 cryptographically secure random bytes. */
export function generateKeyPair(): Ed25519KeyPair {
  return keyPairFromSeed(Uint8Array.from(randomBytes(32)));
}

/** Verifies an Ed25519 signature with Node's crypto (RFC 8032 verification). */
export function verifyEd25519(
  publicKey: Uint8Array,
  message: Uint8Array,
  signature: Uint8Array,
): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) {
    return false;
  }
  const key = createPublicKey({
    key: Buffer.concat([SPKI_ED25519_PREFIX, publicKey]),
    format: "der",
    type: "spki",
  });
  return nodeVerify(null, message, key, signature);
}

/** Lower-case hex of `bytes`. */
export function bytesToHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

/** Parses hex (either case, even length) into bytes; throws on anything else. */
export function hexToBytes(hex: string, what = "hex"): Uint8Array {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new Error(`${what} is not valid hex`);
  }
  return Uint8Array.from(Buffer.from(hex, "hex"));
}
