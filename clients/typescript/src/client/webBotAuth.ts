import { createHash } from "node:crypto";

import { signatureHeaders, type Signer } from "web-bot-auth";

import { keyPairFromSeed, type Ed25519KeyPair } from "../ed25519.js";

/** The RFC 9421 components a Tally Web Bot Auth signature covers, in order. */
export const WEB_BOT_AUTH_COMPONENTS = ["@authority", "signature-agent", "payment-signature"] as const;

/** Tally's limit on `expires - created` of a Web Bot Auth signature (seconds). */
export const WEB_BOT_AUTH_VALIDITY_MAX_SECONDS = 300;

/** Options of {@link wrapFetchWithWebBotAuth}. */
export interface WebBotAuthOptions {
  /** The crawler's Ed25519 key (a key pair, or its 32-byte seed as bytes or hex). */
  signer: Ed25519KeyPair | Uint8Array | string;
  /**
   * The crawler's signature agent, e.g. `https://crawler.example`. Sent as the
   * `Signature-Agent` header, as an RFC 8941 string (quoted) unless it already is one.
   */
  signatureAgent: string;
  /** `expires - created` in seconds (default 60; Tally accepts at most 300). */
  validitySeconds?: number;
  /**
   * Also sign requests that carry no `PAYMENT-SIGNATURE` (covering `@authority` and
   * `signature-agent` only). Default true, so the crawler identifies itself on its
   * first, unpaid request too.
   */
  signUnpaidRequests?: boolean;
  /** The signature label (default `sig1`). */
  label?: string;
  /** The clock, Unix seconds (for tests). */
  now?: () => number;
}

function base64url(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("base64url");
}

/** The public JWK (RFC 8037 OKP) of an Ed25519 public key. */
export function ed25519PublicJwk(publicKey: Uint8Array): { kty: "OKP"; crv: "Ed25519"; x: string } {
  if (publicKey.length !== 32) {
    throw new Error("an Ed25519 public key is 32 bytes");
  }
  return { kty: "OKP", crv: "Ed25519", x: base64url(publicKey) };
}

/**
 * The RFC 7638 JWK thumbprint of an Ed25519 public key: base64url(SHA-256) of its
 * canonical JWK `{"crv":"Ed25519","kty":"OKP","x":…}`. This is the Web Bot Auth
 * `keyid`, by which Tally finds the registered key.
 */
export function jwkThumbprint(publicKey: Uint8Array): string {
  const jwk = ed25519PublicJwk(publicKey);
  const canonical = `{"crv":"${jwk.crv}","kty":"${jwk.kty}","x":"${jwk.x}"}`;
  return base64url(createHash("sha256").update(canonical, "utf8").digest());
}

/** The `Signature-Agent` header value for an agent URL (an RFC 8941 string). */
export function signatureAgentHeader(agent: string): string {
  if (agent.startsWith('"')) {
    return agent;
  }
  if (/["\\]/.test(agent) || !/^[\x20-\x7e]+$/.test(agent)) {
    throw new Error("a signature agent must be printable ASCII without quotes or backslashes");
  }
  return `"${agent}"`;
}

/** A `web-bot-auth` signer for an Ed25519 key pair (RFC 9421 `ed25519`, keyid = JWK thumbprint). */
export function webBotAuthSigner(keyPair: Ed25519KeyPair): Signer {
  return {
    alg: "ed25519",
    keyid: jwkThumbprint(keyPair.publicKey),
    sign: (data: string) => Promise.resolve(keyPair.sign(new TextEncoder().encode(data))),
  };
}

/**
 * Wraps `fetch` so every request it sends carries Web Bot Auth headers (RFC 9421,
 * Ed25519, `tag="web-bot-auth"`): `Signature-Agent`, `Signature-Input` and `Signature`,
 * covering `@authority`, `signature-agent` and, on a paid request, `payment-signature`.
 *
 * Pass the wrapped fetch to the SDK's `wrapFetchWithPayment`, which sends its paid
 * retry through it, so the retry's signature covers the `PAYMENT-SIGNATURE` header:
 *
 * ```ts
 * const pay = wrapFetchWithPayment(wrapFetchWithWebBotAuth(fetch, { signer, signatureAgent }), client);
 * ```
 */
export function wrapFetchWithWebBotAuth(
  fetchImpl: typeof globalThis.fetch,
  options: WebBotAuthOptions,
): typeof globalThis.fetch {
  const keyPair =
    options.signer instanceof Uint8Array || typeof options.signer === "string"
      ? keyPairFromSeed(options.signer)
      : options.signer;
  const signer = webBotAuthSigner(keyPair);
  const validity = options.validitySeconds ?? 60;
  if (!Number.isInteger(validity) || validity < 1 || validity > WEB_BOT_AUTH_VALIDITY_MAX_SECONDS) {
    throw new Error(`validitySeconds must be an integer in 1..=${WEB_BOT_AUTH_VALIDITY_MAX_SECONDS}`);
  }
  const agentHeader = signatureAgentHeader(options.signatureAgent);
  const signUnpaid = options.signUnpaidRequests ?? true;
  const label = options.label ?? "sig1";
  const now = options.now ?? (() => Math.floor(Date.now() / 1000));

  return async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const request = new Request(input, init);
    const paid = request.headers.has("payment-signature");
    if (!paid && !signUnpaid) {
      return fetchImpl(request);
    }
    request.headers.set("Signature-Agent", agentHeader);
    const created = now();
    const headers = await signatureHeaders(request, signer, {
      created: new Date(created * 1000),
      expires: new Date((created + validity) * 1000),
      key: label,
      components: paid ? [...WEB_BOT_AUTH_COMPONENTS] : ["@authority", "signature-agent"],
    });
    request.headers.set("Signature-Input", headers["Signature-Input"]);
    request.headers.set("Signature", headers.Signature);
    return fetchImpl(request);
  };
}
