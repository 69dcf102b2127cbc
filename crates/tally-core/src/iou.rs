//! The IOU and its canonical signing bytes.
//!
//! An IOU is a payer's promise: "the holder of this Ed25519 key owes `payee`
//! `amount` smallest units of `asset`, for `resource`, on Tally network
//! `network`". The payer signs the **canonical signing bytes** below with
//! plain Ed25519 (RFC 8032, no pre-hash). The layout is fixed, big-endian,
//! length-prefixed, and documented byte by byte with test vectors in
//! `docs/iou-format.md`; a client in any language can sign from that
//! document alone.
//!
//! ```text
//! offset  size  field
//!      0    12  domain tag, ASCII "tally-iou-v1"
//!     12    32  payer public key (Ed25519, compressed)
//!     44    16  nonce
//!     60     8  amount, u64 big-endian, smallest units of the asset
//!     68     8  issued_at, u64 big-endian, Unix seconds
//!     76     8  expires_at, u64 big-endian, Unix seconds
//!     84     1  n = length of network (1..=64)
//!     85     n  network, ASCII [A-Za-z0-9:._-]
//!      .     1  a = length of asset code (1..=12)
//!      .     a  asset code, ASCII [A-Z0-9]
//!      .     1  p = length of payee id (1..=64)
//!      .     p  payee id, ASCII [A-Za-z0-9._-]
//!      .     2  r = length of resource, u16 big-endian (0..=1024)
//!      .     r  resource, UTF-8 (URL or opaque id; may be empty)
//! ```
//!
//! The domain tag keeps an IOU signature from ever being valid as any other
//! message a payer's key signs; the network keeps an IOU for one Tally
//! deployment from being replayed at another.

use serde::{Deserialize, Serialize};

use crate::account::is_valid_account_id;
use crate::amount::check_asset_code;
use crate::outcome::Outcome;

/// The domain-separation tag that opens every IOU's signing bytes.
pub const DOMAIN_TAG: &[u8; 12] = b"tally-iou-v1";
/// Longest network id, in bytes.
pub const NETWORK_LEN_MAX: usize = 64;
/// Longest resource reference, in bytes.
pub const RESOURCE_LEN_MAX: usize = 1024;
/// Length of the fixed-size head of the signing bytes (tag to expires_at).
pub const FIXED_HEAD_LEN: usize = 84;
/// Longest possible signing bytes: the fixed head plus every variable field
/// at its maximum.
pub const SIGNING_BYTES_LEN_MAX: usize = FIXED_HEAD_LEN
    + 1
    + NETWORK_LEN_MAX
    + 1
    + crate::amount::ASSET_CODE_LEN_MAX
    + 1
    + crate::account::ACCOUNT_ID_LEN_MAX
    + 2
    + RESOURCE_LEN_MAX;

/// A compressed Ed25519 public key.
pub type PublicKeyBytes = [u8; 32];
/// An Ed25519 signature (R || s).
pub type SignatureBytes = [u8; 64];
/// A payer-chosen, per-key unique value; `(payer key, nonce)` is accepted
/// at most once.
pub type Nonce = [u8; 16];

/// The content of an IOU, everything the signature covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Iou {
    pub network: String,
    pub payer_key: PublicKeyBytes,
    pub payee: String,
    pub asset: String,
    pub amount: u64,
    pub nonce: Nonce,
    pub issued_at_s: u64,
    pub expires_at_s: u64,
    pub resource: String,
}

/// An IOU with the payer's signature over its signing bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedIou {
    pub iou: Iou,
    pub signature: SignatureBytes,
}

/// Why bytes or fields do not form a well-shaped IOU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IouError {
    #[error("network must be 1..={NETWORK_LEN_MAX} bytes of [A-Za-z0-9:._-]")]
    BadNetwork,
    #[error("asset code must be 1..=12 bytes of [A-Z0-9]")]
    BadAsset,
    #[error("payee id must be 1..=64 bytes of [A-Za-z0-9._-]")]
    BadPayee,
    #[error("resource must be at most {RESOURCE_LEN_MAX} bytes of UTF-8")]
    BadResource,
    #[error("signing bytes are truncated")]
    Truncated,
    #[error("signing bytes do not start with the domain tag")]
    BadDomainTag,
    #[error("signing bytes have {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("field {0} is not valid UTF-8")]
    NotUtf8(&'static str),
}

fn is_valid_network(network: &str) -> bool {
    !network.is_empty()
        && network.len() <= NETWORK_LEN_MAX
        && network.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'))
}

impl Iou {
    /// Checks every field's length and alphabet. An IOU that passes has
    /// well-defined signing bytes of at most [`SIGNING_BYTES_LEN_MAX`].
    pub fn check_shape(&self) -> Result<(), IouError> {
        if !is_valid_network(&self.network) {
            return Err(IouError::BadNetwork);
        }
        if check_asset_code(&self.asset).is_err() {
            return Err(IouError::BadAsset);
        }
        if !is_valid_account_id(&self.payee) {
            return Err(IouError::BadPayee);
        }
        if self.resource.len() > RESOURCE_LEN_MAX {
            return Err(IouError::BadResource);
        }
        Ok(())
    }

    /// Appends the canonical signing bytes to `out`.
    ///
    /// Precondition: [`Iou::check_shape`] passed (asserted: the length
    /// prefixes would silently truncate otherwise).
    pub fn write_signing_bytes(&self, out: &mut Vec<u8>) {
        assert!(self.check_shape().is_ok(), "signing bytes of a malformed IOU");
        let start = out.len();
        out.extend_from_slice(DOMAIN_TAG);
        out.extend_from_slice(&self.payer_key);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.amount.to_be_bytes());
        out.extend_from_slice(&self.issued_at_s.to_be_bytes());
        out.extend_from_slice(&self.expires_at_s.to_be_bytes());
        debug_assert_eq!(out.len() - start, FIXED_HEAD_LEN);
        for short in [&self.network, &self.asset, &self.payee] {
            out.push(short.len() as u8);
            out.extend_from_slice(short.as_bytes());
        }
        out.extend_from_slice(&(self.resource.len() as u16).to_be_bytes());
        out.extend_from_slice(self.resource.as_bytes());
        debug_assert!(out.len() - start <= SIGNING_BYTES_LEN_MAX);
    }

    /// The canonical signing bytes, in a fresh buffer.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_HEAD_LEN + 96 + self.resource.len());
        self.write_signing_bytes(&mut out);
        out
    }

    /// Parses canonical signing bytes back into an IOU. The inverse of
    /// [`Iou::signing_bytes`]: the ledger stores these bytes, not a second
    /// encoding, so what is hashed and signed is exactly what is kept.
    pub fn from_signing_bytes(bytes: &[u8]) -> Result<Iou, IouError> {
        let mut reader = Reader { bytes, at: 0 };
        if reader.take(DOMAIN_TAG.len())? != DOMAIN_TAG {
            return Err(IouError::BadDomainTag);
        }
        let payer_key: PublicKeyBytes = reader.array()?;
        let nonce: Nonce = reader.array()?;
        let amount = u64::from_be_bytes(reader.array()?);
        let issued_at_s = u64::from_be_bytes(reader.array()?);
        let expires_at_s = u64::from_be_bytes(reader.array()?);
        let network = reader.short_string("network")?;
        let asset = reader.short_string("asset")?;
        let payee = reader.short_string("payee")?;
        let resource_len = u16::from_be_bytes(reader.array()?) as usize;
        let resource = String::from_utf8(reader.take(resource_len)?.to_vec()).map_err(|_| IouError::BadResource)?;
        if reader.at != bytes.len() {
            return Err(IouError::TrailingBytes(bytes.len() - reader.at));
        }
        let iou = Iou { network, payer_key, payee, asset, amount, nonce, issued_at_s, expires_at_s, resource };
        iou.check_shape()?;
        Ok(iou)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], IouError> {
        let end = self.at.checked_add(len).ok_or(IouError::Truncated)?;
        let slice = self.bytes.get(self.at..end).ok_or(IouError::Truncated)?;
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], IouError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn short_string(&mut self, field: &'static str) -> Result<String, IouError> {
        let len = usize::from(self.take(1)?[0]);
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| IouError::NotUtf8(field))
    }
}

/// The validity-window policy: how far the engine trusts IOU timestamps.
///
/// An IOU is valid at time `now` when
/// `issued_at <= now + clock_skew_max_s`, `now < expires_at`, and
/// `issued_at < expires_at <= issued_at + validity_max_s`.
/// Together these bound how long an IOU can ever be accepted, and so how
/// long the replay index must remember its nonce:
/// until `expires_at` (plus a safety margin, see the ledger's pruning).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidityPolicy {
    pub clock_skew_max_s: u64,
    pub validity_max_s: u64,
}

impl Default for ValidityPolicy {
    fn default() -> Self {
        // 30 s of skew (the freshness window x402's Web Bot Auth uses) and
        // one day of validity: a crawler may pre-sign a day of IOUs.
        ValidityPolicy { clock_skew_max_s: 30, validity_max_s: 86_400 }
    }
}

impl ValidityPolicy {
    /// Checks an IOU's timestamps against `now_s` (Unix seconds).
    pub fn check(&self, iou: &Iou, now_s: u64) -> Result<(), Outcome> {
        if iou.expires_at_s <= iou.issued_at_s || iou.expires_at_s - iou.issued_at_s > self.validity_max_s {
            return Err(Outcome::ValidityTooLong);
        }
        if iou.issued_at_s > now_s.saturating_add(self.clock_skew_max_s) {
            return Err(Outcome::NotYetValid);
        }
        if iou.expires_at_s <= now_s {
            return Err(Outcome::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> Iou {
        Iou {
            network: "tally:local".into(),
            payer_key: [7; 32],
            payee: "news.example".into(),
            asset: "USD".into(),
            amount: 1_000,
            nonce: [9; 16],
            issued_at_s: 1_700_000_000,
            expires_at_s: 1_700_000_600,
            resource: "https://news.example/a/1".into(),
        }
    }

    #[test]
    fn layout_offsets_match_the_document() {
        let bytes = sample().signing_bytes();
        assert_eq!(&bytes[0..12], b"tally-iou-v1");
        assert_eq!(&bytes[12..44], &[7; 32]);
        assert_eq!(&bytes[44..60], &[9; 16]);
        assert_eq!(&bytes[60..68], &1_000u64.to_be_bytes());
        assert_eq!(bytes[84] as usize, "tally:local".len());
        assert_eq!(bytes.len(), 84 + 1 + 11 + 1 + 3 + 1 + 12 + 2 + 24);
    }

    #[test]
    fn shape_checks() {
        let mut iou = sample();
        iou.asset = "usd".into();
        assert_eq!(iou.check_shape(), Err(IouError::BadAsset));
        let mut iou = sample();
        iou.payee = "".into();
        assert_eq!(iou.check_shape(), Err(IouError::BadPayee));
        let mut iou = sample();
        iou.network = "a b".into();
        assert_eq!(iou.check_shape(), Err(IouError::BadNetwork));
        let mut iou = sample();
        iou.resource = "x".repeat(RESOURCE_LEN_MAX + 1);
        assert_eq!(iou.check_shape(), Err(IouError::BadResource));
    }

    #[test]
    fn parser_rejects_damage() {
        let bytes = sample().signing_bytes();
        assert_eq!(Iou::from_signing_bytes(&bytes[..bytes.len() - 1]), Err(IouError::Truncated));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Iou::from_signing_bytes(&longer), Err(IouError::TrailingBytes(1)));
        let mut tagged = bytes;
        tagged[0] ^= 1;
        assert_eq!(Iou::from_signing_bytes(&tagged), Err(IouError::BadDomainTag));
    }

    #[test]
    fn validity_window() {
        let policy = ValidityPolicy { clock_skew_max_s: 30, validity_max_s: 3_600 };
        let iou = sample(); // issued 1_700_000_000, expires +600
        assert_eq!(policy.check(&iou, 1_700_000_000), Ok(()));
        assert_eq!(policy.check(&iou, 1_699_999_970), Ok(()));
        assert_eq!(policy.check(&iou, 1_699_999_969), Err(Outcome::NotYetValid));
        assert_eq!(policy.check(&iou, 1_700_000_600), Err(Outcome::Expired));
        let mut long = sample();
        long.expires_at_s = long.issued_at_s + 3_601;
        assert_eq!(policy.check(&long, 1_700_000_000), Err(Outcome::ValidityTooLong));
        let mut inverted = sample();
        inverted.expires_at_s = inverted.issued_at_s;
        assert_eq!(policy.check(&inverted, 1_700_000_000), Err(Outcome::ValidityTooLong));
    }

    fn arb_iou() -> impl Strategy<Value = Iou> {
        (
            "[a-z]{3,8}:[A-Za-z0-9_.-]{1,32}",
            any::<[u8; 32]>(),
            "[A-Za-z0-9._-]{1,64}",
            "[A-Z0-9]{1,12}",
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<u64>(),
            "\\PC{0,100}",
        )
            .prop_map(|(network, payer_key, payee, asset, amount, nonce, issued, expires, resource)| Iou {
                network,
                payer_key,
                payee,
                asset,
                amount,
                nonce,
                issued_at_s: issued,
                expires_at_s: expires,
                resource,
            })
    }

    proptest! {
        #[test]
        fn signing_bytes_round_trip(iou in arb_iou()) {
            let bytes = iou.signing_bytes();
            prop_assert!(bytes.len() <= SIGNING_BYTES_LEN_MAX);
            prop_assert_eq!(Iou::from_signing_bytes(&bytes), Ok(iou));
        }

        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Iou::from_signing_bytes(&bytes);
        }
    }
}
