//! Key directories (JWKS) for Web Bot Auth.
//!
//! A crawler publishes its keys at `/.well-known/http-message-signatures-directory` as a JSON Web Key
//! Set. Tally keeps only the Ed25519 `OKP` keys and names each by its RFC 7638 JWK thumbprint, which
//! is the `keyid` a Web Bot Auth `Signature-Input` carries.
//!
//! The thumbprint is computed by `web_bot_auth::keyring::Thumbprintable` (Cloudflare's crate). The set
//! itself is parsed here rather than through `web_bot_auth::keyring::JSONWebKeySet`, because that type
//! refuses the whole set as soon as one key has a `kty` it does not know (or an `EC` key lacks `y`),
//! while a directory may legitimately carry other keys next to the Ed25519 ones.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use web_bot_auth::keyring::Thumbprintable;

/// Largest JWKS document accepted, in bytes.
pub const JWKS_BYTES_MAX: usize = 64 * 1024;
/// Most entries accepted in `keys` (of any type).
pub const JWKS_KEYS_MAX: usize = 64;
/// Length of an Ed25519 public key.
pub const ED25519_PUBLIC_KEY_BYTES: usize = 32;

/// One Ed25519 key from a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryKey {
    /// RFC 7638 JWK thumbprint (base64url, no padding): the Web Bot Auth `keyid`.
    pub thumbprint: String,
    /// The raw Ed25519 public key.
    pub public_key: [u8; 32],
}

/// Why a directory was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("key directory is {len} bytes, more than {max}")]
    TooLarge { len: usize, max: usize },
    #[error("key directory is not valid JSON: {0}")]
    Json(String),
    #[error("key directory has no `keys` array")]
    NoKeysArray,
    #[error("key directory has {count} keys, more than {max}")]
    TooManyKeys { count: usize, max: usize },
    #[error("key {index}: Ed25519 key has a bad `x`: {reason}")]
    BadKey { index: usize, reason: &'static str },
}

impl JwksError {
    /// x402 / Cloudflare reason code for a directory that cannot be used: the signature agent's
    /// keys are not known.
    pub fn reason_code(&self) -> &'static str {
        "signature_agent_unknown"
    }
}

/// RFC 7638 JWK thumbprint of an Ed25519 key: base64url (no padding) of SHA-256 over
/// `{"crv":"Ed25519","kty":"OKP","x":"<base64url key>"}`.
pub fn thumbprint(public_key: &[u8; 32]) -> String {
    Thumbprintable::OKP { crv: "Ed25519".to_owned(), x: URL_SAFE_NO_PAD.encode(public_key) }.b64_thumbprint()
}

/// Parse a JWKS, keeping only Ed25519 `OKP` keys (others, including private members, are ignored;
/// only `kty`, `crv` and `x` are read). Duplicate keys are returned once, in first-seen order.
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<DirectoryKey>, JwksError> {
    if bytes.len() > JWKS_BYTES_MAX {
        return Err(JwksError::TooLarge { len: bytes.len(), max: JWKS_BYTES_MAX });
    }
    let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| JwksError::Json(e.to_string()))?;
    let keys = doc.get("keys").and_then(serde_json::Value::as_array).ok_or(JwksError::NoKeysArray)?;
    if keys.len() > JWKS_KEYS_MAX {
        return Err(JwksError::TooManyKeys { count: keys.len(), max: JWKS_KEYS_MAX });
    }
    let mut out: Vec<DirectoryKey> = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let field = |name: &str| key.get(name).and_then(serde_json::Value::as_str);
        if field("kty") != Some("OKP") || field("crv") != Some("Ed25519") {
            continue;
        }
        let x = field("x").ok_or(JwksError::BadKey { index, reason: "missing or not a string" })?;
        // A 32-byte key is 43 base64url characters; refuse anything longer before decoding.
        if x.len() != 43 {
            return Err(JwksError::BadKey { index, reason: "not 32 bytes" });
        }
        let decoded =
            URL_SAFE_NO_PAD.decode(x).map_err(|_| JwksError::BadKey { index, reason: "not canonical base64url" })?;
        let public_key: [u8; 32] =
            decoded.try_into().map_err(|_| JwksError::BadKey { index, reason: "not 32 bytes" })?;
        if out.iter().any(|k| k.public_key == public_key) {
            continue;
        }
        out.push(DirectoryKey { thumbprint: thumbprint(&public_key), public_key });
    }
    Ok(out)
}

/// Serialize a directory of Ed25519 keys (each with `kid` = its thumbprint), as served at
/// `/.well-known/http-message-signatures-directory`.
pub fn jwks_for(keys: &[[u8; 32]]) -> String {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| {
            serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "kid": thumbprint(k),
                "x": URL_SAFE_NO_PAD.encode(k),
            })
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8037 Appendix A.2/A.3.
    const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const RFC8037_THUMBPRINT: &str = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";

    fn rfc8037_key() -> [u8; 32] {
        URL_SAFE_NO_PAD.decode(RFC8037_X).unwrap().try_into().unwrap()
    }

    #[test]
    fn rfc8037_thumbprint() {
        assert_eq!(thumbprint(&rfc8037_key()), RFC8037_THUMBPRINT);
    }

    proptest::proptest! {
        /// The ledger indexes keys by tally-core's thumbprint (no web-bot-auth dependency down
        /// there); it must agree with Cloudflare's crate on every key.
        #[test]
        fn core_thumbprint_agrees_with_web_bot_auth(key in proptest::prelude::any::<[u8; 32]>()) {
            proptest::prop_assert_eq!(tally_core::evidence::jwk_thumbprint(&key), thumbprint(&key));
        }
    }

    #[test]
    fn parses_and_filters() {
        let doc = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"a"}},{{"kty":"OKP","crv":"X25519","x":"{RFC8037_X}"}},
            {{"kty":"OKP","crv":"Ed25519","x":"{RFC8037_X}","d":"secret"}},{{"kty":"OKP","crv":"Ed25519","x":"{RFC8037_X}"}}]}}"#
        );
        let keys = parse_jwks(doc.as_bytes()).unwrap();
        assert_eq!(keys, vec![DirectoryKey { thumbprint: RFC8037_THUMBPRINT.into(), public_key: rfc8037_key() }]);
    }

    #[test]
    fn round_trips() {
        let keys = [rfc8037_key(), [7u8; 32]];
        let parsed = parse_jwks(jwks_for(&keys).as_bytes()).unwrap();
        assert_eq!(parsed.iter().map(|k| k.public_key).collect::<Vec<_>>(), keys);
        assert_eq!(parsed[0].thumbprint, RFC8037_THUMBPRINT);
    }

    #[test]
    fn refuses_bad_input() {
        assert!(matches!(parse_jwks(b"not json"), Err(JwksError::Json(_))));
        assert_eq!(parse_jwks(b"{}"), Err(JwksError::NoKeysArray));
        assert!(matches!(parse_jwks(&vec![b' '; JWKS_BYTES_MAX + 1]), Err(JwksError::TooLarge { .. })));
        let many = format!(r#"{{"keys":[{}]}}"#, vec!["{}"; JWKS_KEYS_MAX + 1].join(","));
        assert!(matches!(parse_jwks(many.as_bytes()), Err(JwksError::TooManyKeys { .. })));
        for x in
            ["\"AAAA\"", "1", &format!("\"{}=\"", &RFC8037_X[..42]), "\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURp\""]
        {
            let doc = format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":{x}}}]}}"#);
            assert!(matches!(parse_jwks(doc.as_bytes()), Err(JwksError::BadKey { index: 0, .. })), "{x}");
        }
    }
}
