//! Web Bot Auth (RFC 9421) verification and signing, and key directories.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer as _, SigningKey};
use proptest::prelude::*;
use tally_x402::jwks::{jwks_for, parse_jwks, thumbprint};
use tally_x402::webbotauth::*;

// ---- RFC 9421 Appendix B.1.4 (test-key-ed25519) and B.2.6 -------------------------------------

const RFC_PUBLIC_X: &str = "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs";
const RFC_PRIVATE_D: &str = "n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU";
const RFC_B26_INPUT: &str = r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#;
const RFC_B26_SIGNATURE: &str =
    "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";
const RFC_B26_BASE: &str = "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\
\"@authority\": example.com\n\"content-type\": application/json\n\"content-length\": 18\n\
\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\")\
;created=1618884473;keyid=\"test-key-ed25519\"";

fn key32(b64url: &str) -> [u8; 32] {
    URL_SAFE_NO_PAD.decode(b64url).unwrap().try_into().unwrap()
}

fn rfc_components() -> Vec<(&'static str, &'static str)> {
    vec![
        ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("@method", "POST"),
        ("@path", "/foo"),
        ("@authority", "example.com"),
        ("content-type", "application/json"),
        ("content-length", "18"),
    ]
}

#[test]
fn rfc9421_b26_signature_base_matches_the_rfc() {
    let params = RFC_B26_INPUT.strip_prefix("sig-b26=").unwrap();
    assert_eq!(signature_base(&rfc_components(), params).unwrap(), RFC_B26_BASE);
}

#[test]
fn rfc9421_b26_verifies() {
    let pk = key32(RFC_PUBLIC_X);
    verify_http_message_signature(&rfc_components(), RFC_B26_INPUT, RFC_B26_SIGNATURE, "sig-b26", &pk).unwrap();
}

#[test]
fn rfc9421_b26_signing_reproduces_the_rfc_signature() {
    let sk = SigningKey::from_bytes(&key32(RFC_PRIVATE_D));
    assert_eq!(sk.verifying_key().to_bytes(), key32(RFC_PUBLIC_X));
    let sig = sk.sign(RFC_B26_BASE.as_bytes()).to_bytes();
    assert_eq!(format!("sig-b26=:{}:", STANDARD.encode(sig)), RFC_B26_SIGNATURE);
}

#[test]
fn rfc9421_b26_tampered_fails() {
    let pk = key32(RFC_PUBLIC_X);
    let mut components = rfc_components();
    components[2].1 = "/bar";
    let e = verify_http_message_signature(&components, RFC_B26_INPUT, RFC_B26_SIGNATURE, "sig-b26", &pk).unwrap_err();
    assert_eq!(e.reason_code(), "invalid_signature", "{e}");
    let mut other = pk;
    other[0] ^= 1;
    assert!(
        verify_http_message_signature(&rfc_components(), RFC_B26_INPUT, RFC_B26_SIGNATURE, "sig-b26", &other).is_err()
    );
    // A covered component without a value.
    let e = verify_http_message_signature(&rfc_components()[1..], RFC_B26_INPUT, RFC_B26_SIGNATURE, "sig-b26", &pk)
        .unwrap_err();
    assert!(matches!(e, WebBotAuthError::MissingComponentValue(ref c) if c == "\"date\""), "{e}");
    // Unknown label.
    assert!(verify_http_message_signature(&rfc_components(), RFC_B26_INPUT, RFC_B26_SIGNATURE, "sig1", &pk).is_err());
}

#[test]
fn rfc9421_b26_is_not_web_bot_auth() {
    let parts = SignedRequestParts {
        authority: "example.com".into(),
        signature_agent: Some(AGENT.into()),
        signature_input: RFC_B26_INPUT.into(),
        signature: RFC_B26_SIGNATURE.into(),
        payment_signature: payment(),
    };
    let e = verify_web_bot_auth(&parts, &policy(1618884473), |_| Some(key32(RFC_PUBLIC_X))).unwrap_err();
    assert_eq!(e, WebBotAuthError::NotWebBotAuth);
    assert_eq!(e.reason_code(), "invalid_signature");
}

// ---- Web Bot Auth round trips ----------------------------------------------------------------

const NOW: u64 = 1_750_000_000;
const AUTHORITY: &str = "publisher.example";
const AGENT: &str = "\"https://crawler.example\"";

fn crawler() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32])
}

fn payment() -> String {
    STANDARD.encode(br#"{"x402Version":2,"payload":{"amount":"5","asset":"USD"}}"#)
}

fn policy(now_s: u64) -> VerifyPolicy {
    VerifyPolicy { now_s, skew_max_s: 30, validity_max_s: 300 }
}

fn signed(created_s: u64, expires_s: u64) -> SignedRequestParts {
    let h = sign_web_bot_auth(&crawler(), AUTHORITY, AGENT, &payment(), created_s, expires_s, Some("n-1")).unwrap();
    SignedRequestParts {
        authority: AUTHORITY.into(),
        signature_agent: Some(AGENT.into()),
        signature_input: h.signature_input,
        signature: h.signature,
        payment_signature: payment(),
    }
}

fn directory(keyid: &str) -> Option<[u8; 32]> {
    let keys = parse_jwks(jwks_for(&[[9u8; 32], crawler().verifying_key().to_bytes()]).as_bytes()).unwrap();
    keys.into_iter().find(|k| k.thumbprint == keyid).map(|k| k.public_key)
}

fn verify(parts: &SignedRequestParts) -> Result<VerifiedSignature, WebBotAuthError> {
    verify_web_bot_auth(parts, &policy(NOW), directory)
}

fn code(parts: &SignedRequestParts) -> &'static str {
    let e = verify(parts).expect_err("must fail");
    e.reason_code()
}

#[test]
fn sign_then_verify() {
    let parts = signed(NOW, NOW + 60);
    let thumb = thumbprint(&crawler().verifying_key().to_bytes());
    assert_eq!(
        parts.signature_input,
        format!(
            r#"sig1=("@authority" "signature-agent" "payment-signature");created={NOW};keyid="{thumb}";alg="ed25519";expires={};nonce="n-1";tag="web-bot-auth""#,
            NOW + 60
        )
    );
    let v = verify(&parts).unwrap();
    assert_eq!(
        v,
        VerifiedSignature {
            keyid: thumb,
            public_key: crawler().verifying_key().to_bytes(),
            created_s: NOW,
            expires_s: NOW + 60,
            signature_agent: Some(AGENT.into()),
            label: "sig1".into(),
        }
    );
    // Without a nonce, and within skew on both ends.
    let h = sign_web_bot_auth(&crawler(), AUTHORITY, AGENT, &payment(), NOW + 30, NOW + 40, None).unwrap();
    let parts = SignedRequestParts { signature_input: h.signature_input, signature: h.signature, ..parts };
    verify(&parts).unwrap();
    verify_web_bot_auth(&parts, &policy(NOW + 70), directory).unwrap();
}

#[test]
fn signature_agent_dictionary_member_is_supported() {
    // Newer drafts: `Signature-Agent: sig1="https://..."`, covered as `"signature-agent";key="sig1"`.
    let agent = "sig1=\"https://crawler.example\"";
    let thumb = thumbprint(&crawler().verifying_key().to_bytes());
    let params = format!(
        r#"("@authority" "signature-agent";key="sig1" "payment-signature");created={NOW};expires={};keyid="{thumb}";tag="web-bot-auth""#,
        NOW + 60
    );
    let base = format!(
        "\"@authority\": {AUTHORITY}\n\"signature-agent\";key=\"sig1\": \"https://crawler.example\"\n\"payment-signature\": {}\n\"@signature-params\": {params}",
        payment()
    );
    let sig = crawler().sign(base.as_bytes()).to_bytes();
    let parts = SignedRequestParts {
        authority: AUTHORITY.into(),
        signature_agent: Some(agent.into()),
        signature_input: format!("sig1={params}"),
        signature: format!("sig1=:{}:", STANDARD.encode(sig)),
        payment_signature: payment(),
    };
    verify(&parts).unwrap();
}

#[test]
fn picks_the_web_bot_auth_label_among_several() {
    let parts = signed(NOW, NOW + 60);
    let parts = SignedRequestParts {
        signature_input: format!(r#"other=("@authority");created=1;tag="x", {}"#, parts.signature_input),
        signature: format!("other=:AAAA:, {}", parts.signature),
        ..parts
    };
    assert_eq!(verify(&parts).unwrap().label, "sig1");
}

#[test]
fn tampered_components_fail() {
    let good = signed(NOW, NOW + 60);
    let p = SignedRequestParts { authority: "evil.example".into(), ..good.clone() };
    assert_eq!(code(&p), "invalid_signature");
    let p = SignedRequestParts { payment_signature: STANDARD.encode(b"{\"amount\":\"1\"}"), ..good.clone() };
    assert_eq!(code(&p), "invalid_signature");
    let p = SignedRequestParts { signature_agent: Some("\"https://evil.example\"".into()), ..good.clone() };
    assert_eq!(code(&p), "invalid_signature");
    // Flip one byte of the signature.
    let b64 = good.signature.strip_prefix("sig1=:").unwrap().strip_suffix(':').unwrap();
    let mut sig = STANDARD.decode(b64).unwrap();
    sig[10] ^= 0x40;
    let p = SignedRequestParts { signature: format!("sig1=:{}:", STANDARD.encode(&sig)), ..good.clone() };
    assert!(matches!(verify(&p), Err(WebBotAuthError::BadSignature(_))));
    // A signature of the wrong length.
    let p = SignedRequestParts { signature: format!("sig1=:{}:", STANDARD.encode(&sig[..63])), ..good.clone() };
    assert_eq!(code(&p), "invalid_signature");
    // Tampered parameters (created moved by one second).
    let p = SignedRequestParts {
        signature_input: good.signature_input.replace(&format!("created={NOW}"), &format!("created={}", NOW - 1)),
        ..good
    };
    assert_eq!(code(&p), "invalid_signature");
}

#[test]
fn freshness() {
    // Expired beyond skew.
    let p = signed(NOW - 100, NOW - 31);
    assert!(matches!(verify(&p), Err(WebBotAuthError::Expired { .. })));
    assert_eq!(code(&p), "invalid_signature");
    // Created in the future beyond skew.
    let p = signed(NOW + 31, NOW + 60);
    assert!(matches!(verify(&p), Err(WebBotAuthError::NotYetValid { .. })));
    assert_eq!(code(&p), "invalid_signature");
    // Window too long, or inverted.
    let p = signed(NOW, NOW + 301);
    assert!(matches!(verify(&p), Err(WebBotAuthError::BadValidityWindow { .. })));
    let p = signed(NOW, NOW);
    assert!(matches!(verify(&p), Err(WebBotAuthError::BadValidityWindow { .. })));
    // Extremes never overflow.
    let p = signed(0, 10);
    assert!(matches!(verify(&p), Err(WebBotAuthError::Expired { .. })));
}

/// Re-sign with hand-made parameters, so that only the rule under test fails.
fn resign(components: &[(&str, &str)], params: &str) -> SignedRequestParts {
    let base = signature_base(components, params).unwrap();
    let sig = crawler().sign(base.as_bytes()).to_bytes();
    SignedRequestParts {
        authority: AUTHORITY.into(),
        signature_agent: Some(AGENT.into()),
        signature_input: format!("sig1={params}"),
        signature: format!("sig1=:{}:", STANDARD.encode(sig)),
        payment_signature: payment(),
    }
}

#[test]
fn rules_on_parameters_and_components() {
    let thumb = thumbprint(&crawler().verifying_key().to_bytes());
    let pay = payment();
    let all = [("@authority", AUTHORITY), ("signature-agent", AGENT), ("payment-signature", pay.as_str())];
    let ids = r#"("@authority" "signature-agent" "payment-signature")"#;
    let t = format!(";created={NOW};expires={}", NOW + 60);

    // Control: a valid hand-made signature.
    verify(&resign(&all, &format!(r#"{ids}{t};keyid="{thumb}";tag="web-bot-auth""#))).unwrap();

    // Wrong tag.
    let e = verify(&resign(&all, &format!(r#"{ids}{t};keyid="{thumb}";tag="other""#))).unwrap_err();
    assert_eq!((e.clone(), e.reason_code()), (WebBotAuthError::NotWebBotAuth, "invalid_signature"));
    // No tag.
    assert_eq!(code(&resign(&all, &format!(r#"{ids}{t};keyid="{thumb}""#))), "invalid_signature");
    // Other algorithm.
    let e = verify(&resign(&all, &format!(r#"{ids}{t};keyid="{thumb}";alg="rsa-pss-sha512";tag="web-bot-auth""#)))
        .unwrap_err();
    assert!(matches!(e, WebBotAuthError::UnsupportedAlgorithm(_)), "{e}");
    // Missing created / expires / keyid.
    for (params, missing) in [
        (format!(r#"{ids};expires={};keyid="{thumb}";tag="web-bot-auth""#, NOW + 60), "created"),
        (format!(r#"{ids};created={NOW};keyid="{thumb}";tag="web-bot-auth""#), "expires"),
        (format!(r#"{ids}{t};tag="web-bot-auth""#), "keyid"),
        (format!(r#"{ids};created="{NOW}";expires={};keyid="{thumb}";tag="web-bot-auth""#, NOW + 60), "created"),
    ] {
        let e = verify(&resign(&all, &params)).unwrap_err();
        assert_eq!(e, WebBotAuthError::MissingParameter(missing));
        assert_eq!(e.reason_code(), "invalid_signature");
    }
    // Each required covered component missing.
    for (skip, name) in [(0, "@authority"), (1, "signature-agent"), (2, "payment-signature")] {
        let comps: Vec<_> = all.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, c)| *c).collect();
        let ids: Vec<String> = comps.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let params = format!(r#"({}){t};keyid="{thumb}";tag="web-bot-auth""#, ids.join(" "));
        let e = verify(&resign(&comps, &params)).unwrap_err();
        assert_eq!(e, WebBotAuthError::MissingCoveredComponent(name));
        assert_eq!(e.reason_code(), "invalid_payment_signature");
    }
    // Signature-Agent covered but absent from the request.
    let p = SignedRequestParts { signature_agent: None, ..signed(NOW, NOW + 60) };
    let e = verify(&p).unwrap_err();
    assert!(matches!(e, WebBotAuthError::MissingComponentValue(_)), "{e}");
    assert_eq!(e.reason_code(), "invalid_payment_signature");
}

#[test]
fn unknown_or_weak_keys() {
    let p = signed(NOW, NOW + 60);
    let e = verify_web_bot_auth(&p, &policy(NOW), |_| None).unwrap_err();
    assert!(matches!(e, WebBotAuthError::UnknownKey(_)));
    assert_eq!(e.reason_code(), "signature_agent_unknown");
    // A directory without the crawler's key.
    let e = verify_web_bot_auth(&p, &policy(NOW), |k| {
        parse_jwks(jwks_for(&[[9u8; 32]]).as_bytes())
            .unwrap()
            .into_iter()
            .find(|d| d.thumbprint == k)
            .map(|d| d.public_key)
    })
    .unwrap_err();
    assert_eq!(e.reason_code(), "signature_agent_unknown");
    // A small-order key (the identity point) is refused even if a directory returns it.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let e = verify_web_bot_auth(&p, &policy(NOW), |_| Some(identity)).unwrap_err();
    assert!(matches!(e, WebBotAuthError::WeakKey(_)));
    // Another key.
    let e =
        verify_web_bot_auth(&p, &policy(NOW), |_| Some(SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes()))
            .unwrap_err();
    assert_eq!(e.reason_code(), "invalid_signature");
}

#[test]
fn malformed_and_oversized_headers() {
    let good = signed(NOW, NOW + 60);
    let cases: Vec<(SignedRequestParts, &str)> = vec![
        (SignedRequestParts { authority: "a".repeat(AUTHORITY_BYTES_MAX + 1), ..good.clone() }, "invalid_payload"),
        (
            SignedRequestParts { signature_agent: Some("a".repeat(SIGNATURE_AGENT_BYTES_MAX + 1)), ..good.clone() },
            "invalid_payload",
        ),
        (
            SignedRequestParts {
                signature_input: format!("{}{}", good.signature_input, " ".repeat(SIGNATURE_INPUT_BYTES_MAX)),
                ..good.clone()
            },
            "invalid_payload",
        ),
        (SignedRequestParts { signature: "a".repeat(SIGNATURE_BYTES_MAX + 1), ..good.clone() }, "invalid_payload"),
        (
            SignedRequestParts { payment_signature: "A".repeat(PAYMENT_SIGNATURE_BYTES_MAX + 4), ..good.clone() },
            "invalid_payment_signature",
        ),
        // Bad base64 in Signature (not a structured-field byte sequence).
        (SignedRequestParts { signature: "sig1=:not base64!:".into(), ..good.clone() }, "invalid_payload"),
        (SignedRequestParts { signature: "sig1=:AAA$:".into(), ..good.clone() }, "invalid_payload"),
        // Bad base64 / empty / control characters in PAYMENT-SIGNATURE.
        (SignedRequestParts { payment_signature: "%%%".into(), ..good.clone() }, "invalid_payment_signature"),
        (SignedRequestParts { payment_signature: "".into(), ..good.clone() }, "invalid_payment_signature"),
        (SignedRequestParts { payment_signature: "QUJD\nREVG".into(), ..good.clone() }, "invalid_payment_signature"),
        // Line injection into the signature base.
        (SignedRequestParts { authority: format!("{AUTHORITY}\n\"x\": y"), ..good.clone() }, "invalid_payload"),
        (SignedRequestParts { signature_input: "sig1=(".into(), ..good.clone() }, "invalid_payload"),
        (SignedRequestParts { signature_input: "".into(), ..good.clone() }, "invalid_payload"),
        (SignedRequestParts { signature: "".into(), ..good.clone() }, "invalid_payload"),
        (SignedRequestParts { signature: "sig2=:AAAA:".into(), ..good.clone() }, "invalid_payload"),
        (SignedRequestParts { signature: "sig1=\"str\"".into(), ..good.clone() }, "invalid_payload"),
        (SignedRequestParts { authority: "é.example".into(), ..good.clone() }, "invalid_payload"),
        // Upper-case component names (web-bot-auth would lowercase them and verify).
        (
            SignedRequestParts {
                signature_input: good.signature_input.replace("signature-agent", "Signature-Agent"),
                ..good.clone()
            },
            "invalid_payload",
        ),
        (
            SignedRequestParts {
                signature_input: good
                    .signature_input
                    .replace(&format!("created={NOW}"), &format!("created={}", i64::MAX)),
                ..good.clone()
            },
            "invalid_payload",
        ),
    ];
    for (i, (parts, want)) in cases.iter().enumerate() {
        let e = verify(parts).expect_err("must fail");
        assert_eq!(e.reason_code(), *want, "case {i}: {e}");
    }
    // Too many labels / covered components.
    let many = (0..=SIGNATURE_LABELS_MAX).map(|i| format!("l{i}=()")).collect::<Vec<_>>().join(", ");
    let p = SignedRequestParts { signature_input: many, ..good.clone() };
    assert_eq!(code(&p), "invalid_payload");
    let ids = (0..=COVERED_COMPONENTS_MAX).map(|i| format!("\"h{i}\"")).collect::<Vec<_>>().join(" ");
    let p = SignedRequestParts {
        signature_input: format!(r#"sig1=({ids});created={NOW};expires={};keyid="k";tag="web-bot-auth""#, NOW + 1),
        ..good
    };
    assert_eq!(code(&p), "invalid_payload");
}

#[test]
fn signer_refuses_bad_input() {
    let k = crawler();
    assert!(sign_web_bot_auth(&k, "a\nb", AGENT, &payment(), NOW, NOW + 1, None).is_err());
    assert!(sign_web_bot_auth(&k, AUTHORITY, AGENT, "%%", NOW, NOW + 1, None).is_err());
    assert!(sign_web_bot_auth(&k, AUTHORITY, AGENT, &payment(), u64::MAX, u64::MAX, None).is_err());
    assert!(sign_web_bot_auth(&k, AUTHORITY, AGENT, &payment(), NOW, NOW + 1, Some("\u{7f}")).is_err());
    assert!(
        sign_web_bot_auth(&k, AUTHORITY, AGENT, &payment(), NOW, NOW + 1, Some(&"n".repeat(NONCE_BYTES_MAX + 1)))
            .is_err()
    );
}

#[test]
fn fixture_directory_parses() {
    let doc = include_str!("fixtures/rfc9421-test-key-ed25519.jwks.json");
    let keys = parse_jwks(doc.as_bytes()).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].public_key, key32(RFC_PUBLIC_X));
    assert_eq!(keys[0].thumbprint, thumbprint(&key32(RFC_PUBLIC_X)));
}

// ---- Never panic -------------------------------------------------------------------------------

fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,200}",
        "[a-z0-9=:;,()\" @*/+_-]{0,200}",
        Just(signed(NOW, NOW + 60).signature_input),
        Just(signed(NOW, NOW + 60).signature),
        (0usize..300).prop_map(|n| format!("sig1=(\"@authority\";{}", "a;".repeat(n))),
    ]
}

/// The bytes of the `sig1` member of a `Signature` header, if it parses.
fn signature_bytes(header: &str) -> Option<Vec<u8>> {
    let dictionary = sfv::Parser::new(header).parse_dictionary().ok()?;
    match dictionary.get("sig1")? {
        sfv::ListEntry::Item(item) => item.bare_item.as_byte_sequence().map(<[u8]>::to_vec),
        sfv::ListEntry::InnerList(_) => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_headers_never_panic(
        authority in header(), agent in proptest::option::of(header()), input in header(), sig in header(),
        pay in header(), now in any::<u64>(), skew in any::<u64>(), validity in any::<u64>(),
    ) {
        let parts = SignedRequestParts {
            authority, signature_agent: agent, signature_input: input, signature: sig, payment_signature: pay,
        };
        let policy = VerifyPolicy { now_s: now, skew_max_s: skew, validity_max_s: validity };
        let _ = verify_web_bot_auth(&parts, &policy, |_| Some([7; 32]));
        let _ = verify_web_bot_auth(&parts, &policy, directory);
    }

    #[test]
    fn tampered_good_headers_never_panic(pos in 0usize..400, byte in any::<u8>(), which in 0usize..5) {
        let mut parts = signed(NOW, NOW + 60);
        let field = match which {
            0 => &mut parts.authority,
            1 => parts.signature_agent.as_mut().unwrap(),
            2 => &mut parts.signature_input,
            3 => &mut parts.signature,
            _ => &mut parts.payment_signature,
        };
        let mut bytes = field.clone().into_bytes();
        if !bytes.is_empty() {
            let i = pos % bytes.len();
            bytes[i] = byte;
        }
        *field = String::from_utf8_lossy(&bytes).into_owned();
        let original = signed(NOW, NOW + 60);
        // Base64's last character carries bits the decoder drops: a `Signature` that decodes to
        // the same 64 bytes is the same signature, not a tampered one.
        let same_signature = signature_bytes(&parts.signature).is_some()
            && signature_bytes(&parts.signature) == signature_bytes(&original.signature);
        let changed = parts != original && !(which == 3 && same_signature);
        let result = verify(&parts);
        prop_assert!(!changed || result.is_err());
    }

    #[test]
    fn random_jwks_never_panic(doc in ".{0,400}", x in "[A-Za-z0-9_=-]{0,60}") {
        let _ = parse_jwks(doc.as_bytes());
        let _ = parse_jwks(format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}"}}]}}"#).as_bytes());
    }
}

/// The facilitator does not verify with web-bot-auth: it takes the signature base from
/// `check_web_bot_auth` and lets the pipeline verify it with Tally's rule, and the ledger stores that
/// base. So the base must be byte for byte the one the crate verifies (and the signer signed), for
/// every accepted request, including those whose Signature-Agent is a dictionary member.
#[test]
fn checked_base_is_what_was_signed_and_verifies_under_tallys_rule() {
    let parts = signed(NOW, NOW + 60);
    let checked = check_web_bot_auth(&parts, &policy(NOW), directory).unwrap();
    assert_eq!(checked.verified, verify(&parts).unwrap());
    let key = crawler().verifying_key();
    let item = tally_core::verify::VerifyItem {
        key: &key,
        message: checked.signature_base.as_bytes(),
        signature: &checked.signature,
    };
    assert!(tally_core::verify::verify_one(&item));
    assert_eq!(crawler().sign(checked.signature_base.as_bytes()).to_bytes(), checked.signature);
    assert!(checked.signature_base.starts_with("\"@authority\": publisher.example\n\"signature-agent\": "));

    // A tampered request still passes the rules (they are not cryptographic), but its base no
    // longer verifies: the pipeline refuses it.
    let mut tampered = signed(NOW, NOW + 60);
    tampered.authority = "elsewhere.example".into();
    let checked = check_web_bot_auth(&tampered, &policy(NOW), directory).unwrap();
    let item = tally_core::verify::VerifyItem {
        key: &key,
        message: checked.signature_base.as_bytes(),
        signature: &checked.signature,
    };
    assert!(!tally_core::verify::verify_one(&item));
}

#[test]
fn checked_base_follows_a_keyed_signature_agent() {
    // `"signature-agent";key="agent1"` covers one member of a Dictionary-valued header.
    let key = crawler();
    let agent = "agent1=\"https://crawler.example\"";
    let params = format!(
        "(\"@authority\" \"signature-agent\";key=\"agent1\" \"payment-signature\");created={NOW};keyid=\"{}\";expires={};tag=\"web-bot-auth\"",
        thumbprint(&key.verifying_key().to_bytes()),
        NOW + 60
    );
    let base = format!(
        "\"@authority\": {AUTHORITY}\n\"signature-agent\";key=\"agent1\": \"https://crawler.example\"\n\"payment-signature\": {}\n\"@signature-params\": {params}",
        payment()
    );
    let signature = STANDARD.encode(key.sign(base.as_bytes()).to_bytes());
    let parts = SignedRequestParts {
        authority: AUTHORITY.into(),
        signature_agent: Some(agent.into()),
        signature_input: format!("sig1={params}"),
        signature: format!("sig1=:{signature}:"),
        payment_signature: payment(),
    };
    verify(&parts).expect("web-bot-auth verifies the keyed form");
    let checked = check_web_bot_auth(&parts, &policy(NOW), directory).unwrap();
    assert_eq!(checked.signature_base, base);
}
