//! Pay-per-crawl payments: Cloudflare's header dialect, recorded as IOUs.
//!
//! A pay-per-crawl crawler never signs an x402 payload. It signs its HTTP
//! request (RFC 9421, Web Bot Auth) with one price header covered:
//! `crawler-exact-price: USD 0.01` (pay exactly this) or
//! `crawler-max-price: USD 0.05` (pay at most this). That signature is the
//! commitment, and the ledger keeps its signature base as evidence
//! (`tally-ppc-v1`, `crate::evidence`):
//!
//! ```text
//! offset  size  field
//!      0    12  "tally-ppc-v1"
//!     12     2  m, u16 BE: length of the derived IOU's canonical bytes
//!     14     m  the derived IOU's canonical bytes
//!      .     1  scale: the decimals the signed price was read with (the asset's)
//!      .     4  b, u32 BE: length of the signature base
//!      .     b  the RFC 9421 signature base, exactly the bytes the signature covers
//! ```
//!
//! ## The derivation rule (pay-per-crawl → IOU)
//! The base must pass the rules every Web Bot Auth base passes (`tag="web-bot-auth"`, `keyid` the
//! payer key's thumbprint, `alg` ed25519 if present, `created < expires`, `@authority` and
//! `signature-agent` covered) and cover exactly one of the two price headers, whose value is
//! `<ASSET> <decimal amount>`. Then:
//!
//! | IOU field | from |
//! |---|---|
//! | asset, amount | the signed price: its asset, its amount in smallest units at `scale` (more decimals than `scale` is refused, never rounded) |
//! | payer_key | the key whose thumbprint is `keyid` |
//! | issued_at, expires_at | `created`, `expires` |
//! | nonce | `SHA-256("tally-ppc-nonce-v1" ‖ base)[..16]`: one signed request, one payment |
//! | network, payee, resource | **not signed**: the terms the resource server sold under ([`PayPerCrawlTerms`]) |
//!
//! What a pay-per-crawl signature proves, then, is narrower than an IOU's: the payer's key, the
//! host it signed for (`@authority`, kept in the base), the most it agreed to pay, and when. The
//! payee and the URL are the resource server's word (Tally's gateway names them exactly), which is
//! the trust Cloudflare's binding already places in its network. The charge recorded beside the IOU
//! is the route's price, at most the signed amount.

use sha2::{Digest, Sha256};

use crate::evidence::{EvidenceError, parse_base};
use crate::iou::{Iou, Nonce, PublicKeyBytes};

/// The price headers a pay-per-crawl signature covers (one of them).
pub const PRICE_HEADER_EXACT: &str = "crawler-exact-price";
pub const PRICE_HEADER_MAX: &str = "crawler-max-price";

/// What the signature does not cover: where and what the request bought, and the asset's scale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayPerCrawlTerms {
    pub network: String,
    pub payee: String,
    pub resource: String,
    /// The decimals of the signed price's asset.
    pub scale: u8,
}

/// Which header a base's price came from, and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedPrice {
    pub header: &'static str,
    pub asset: String,
    /// Smallest units at the terms' scale.
    pub amount: u64,
}

/// Reads the signed price of a pay-per-crawl base (exactly one price header covered).
pub fn signed_price(base: &str, payer_key: &PublicKeyBytes, scale: u8) -> Result<SignedPrice, EvidenceError> {
    let parsed = parse_base(base, payer_key)?;
    let header = match (parsed.covers(PRICE_HEADER_EXACT), parsed.covers(PRICE_HEADER_MAX)) {
        (true, false) => PRICE_HEADER_EXACT,
        (false, true) => PRICE_HEADER_MAX,
        _ => return Err(EvidenceError::Base("a pay-per-crawl base covers exactly one price header")),
    };
    let value = parsed.value_of(header)?;
    let (asset, amount) = value.split_once(' ').ok_or(EvidenceError::Base("a price is `<ASSET> <amount>`"))?;
    let units = crate::amount::parse_amount(amount, scale)
        .map_err(|_| EvidenceError::Base("the price is not an exact amount"))?;
    let amount = u64::try_from(units).map_err(|_| EvidenceError::Base("the price is too large"))?;
    Ok(SignedPrice { header, asset: asset.to_owned(), amount })
}

/// Applies the derivation rule in this module's documentation.
pub fn derive_pay_per_crawl_iou(
    base: &str,
    payer_key: &PublicKeyBytes,
    terms: &PayPerCrawlTerms,
) -> Result<Iou, EvidenceError> {
    let parsed = parse_base(base, payer_key)?;
    // The one place the signature says where the request went: the URL the
    // record names must be on the host the crawler signed for.
    let signed_authority = parsed.value_of("@authority")?;
    if resource_authority(&terms.resource).is_none_or(|named| !named.eq_ignore_ascii_case(signed_authority)) {
        return Err(EvidenceError::Base("the resource is not on the host the signature covers"));
    }
    let price = signed_price(base, payer_key, terms.scale)?;
    let iou = Iou {
        network: terms.network.clone(),
        payer_key: *payer_key,
        payee: terms.payee.clone(),
        asset: price.asset,
        amount: price.amount,
        nonce: nonce_for_base(base),
        issued_at_s: parsed.created_s,
        expires_at_s: parsed.expires_s,
        resource: terms.resource.clone(),
    };
    iou.check_shape()?;
    Ok(iou)
}

/// The authority (host and port) of an absolute `http(s)://` URL.
pub fn resource_authority(resource: &str) -> Option<&str> {
    let rest = resource.strip_prefix("https://").or_else(|| resource.strip_prefix("http://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|a| !a.is_empty())
}

fn nonce_for_base(base: &str) -> Nonce {
    let digest = Sha256::new().chain_update(b"tally-ppc-nonce-v1").chain_update(base.as_bytes()).finalize();
    digest[..16].try_into().expect("16 of 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{Commitment, EvidenceKind, jwk_thumbprint, parse_evidence};

    const KEY: PublicKeyBytes = [7; 32];

    fn base(header: &str, price: &str) -> String {
        let keyid = jwk_thumbprint(&KEY);
        format!(
            "\"@authority\": site.example\n\"signature-agent\": \"https://crawler.example\"\n\"{header}\": {price}\n\"@signature-params\": (\"@authority\" \"signature-agent\" \"{header}\");created=100;keyid=\"{keyid}\";alg=\"ed25519\";expires=160;tag=\"web-bot-auth\""
        )
    }

    fn terms() -> PayPerCrawlTerms {
        PayPerCrawlTerms {
            network: "tally:test".into(),
            payee: "site.example".into(),
            resource: "https://site.example/a".into(),
            scale: 6,
        }
    }

    #[test]
    fn the_signed_price_is_the_iou_amount() {
        let iou = derive_pay_per_crawl_iou(&base(PRICE_HEADER_MAX, "USD 0.05"), &KEY, &terms()).unwrap();
        assert_eq!((iou.asset.as_str(), iou.amount, iou.issued_at_s, iou.expires_at_s), ("USD", 50_000, 100, 160));
        assert_eq!(iou.payee, "site.example");
        let exact = derive_pay_per_crawl_iou(&base(PRICE_HEADER_EXACT, "USD 0.01"), &KEY, &terms()).unwrap();
        assert_eq!(exact.amount, 10_000);
        assert_ne!(exact.nonce, iou.nonce, "one signed request, one nonce");
    }

    #[test]
    fn a_base_that_does_not_sign_one_exact_price_yields_nothing() {
        let derive = |base: &str| derive_pay_per_crawl_iou(base, &KEY, &terms());
        assert!(derive(&base(PRICE_HEADER_MAX, "USD 0.0000001")).is_err(), "finer than the asset");
        assert!(derive(&base(PRICE_HEADER_MAX, "USD")).is_err());
        assert!(derive(&base(PRICE_HEADER_MAX, "USD -1")).is_err());
        assert!(derive(&base("payment-signature", "eyJ9")).is_err(), "no price header");
        assert!(derive_pay_per_crawl_iou(&base(PRICE_HEADER_MAX, "USD 1"), &[8; 32], &terms()).is_err(), "keyid");
        let elsewhere = PayPerCrawlTerms { resource: "https://other.example/a".into(), ..terms() };
        assert!(
            derive_pay_per_crawl_iou(&base(PRICE_HEADER_MAX, "USD 1"), &KEY, &elsewhere).is_err(),
            "a URL on another host than the signed @authority"
        );
    }

    #[test]
    fn evidence_round_trips_and_refuses_a_rewritten_amount() {
        let commitment =
            Commitment::pay_per_crawl(KEY, [1; 64], &base(PRICE_HEADER_MAX, "USD 0.05"), &terms()).unwrap();
        assert_eq!(commitment.kind(), EvidenceKind::PayPerCrawl);
        let parsed = parse_evidence(&commitment.evidence).unwrap();
        assert_eq!((parsed.kind, parsed.iou.amount, parsed.price_scale), (EvidenceKind::PayPerCrawl, 50_000, Some(6)));
        // A consistent rewrite at another scale (8 decimals, 100x the units) re-derives: the
        // signature cannot prove a scale, which is why the evidence says which one it used and
        // `ledger verify` compares it with the asset's registered scale.
        let inflated = Commitment::pay_per_crawl(
            KEY,
            [1; 64],
            &base(PRICE_HEADER_MAX, "USD 0.05"),
            &PayPerCrawlTerms { scale: 8, ..terms() },
        )
        .unwrap();
        let reread = parse_evidence(&inflated.evidence).unwrap();
        assert_eq!((reread.iou.amount, reread.price_scale), (5_000_000, Some(8)));
        assert_eq!(parsed.signed_message(), Some(commitment.signed_message()));
        // The stored scale is part of the evidence: a record read at another scale is not derived.
        let mut rescaled = commitment.evidence.clone();
        let scale_at = 14 + commitment.signed.iou.signing_bytes().len();
        rescaled[scale_at] = 2;
        assert!(parse_evidence(&rescaled).is_err());
        // A record claiming another payee than it was derived under still parses (payee is unsigned),
        // but its amount cannot be raised: the IOU bytes must be what the base yields.
        let forged = Commitment::pay_per_crawl(KEY, [1; 64], &base(PRICE_HEADER_MAX, "USD 0.06"), &terms()).unwrap();
        let mut spliced = forged.evidence.clone();
        spliced[14..scale_at].copy_from_slice(&commitment.signed.iou.signing_bytes());
        assert!(parse_evidence(&spliced).is_err(), "an IOU that is not the base's");
    }
}
