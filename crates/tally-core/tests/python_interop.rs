//! Interoperability with an independent implementation of the IOU format.
//!
//! `scripts/interop/sign_iou.py` builds and signs IOUs from
//! `docs/iou-format.md` alone, with Python's `cryptography` package. These
//! tests run it on several field sets and check that tally-core builds the
//! same signing bytes and accepts its signatures.
//!
//! They need `python3` with `cryptography` installed (`pip install
//! cryptography`) and fail, never skip, when either is missing.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use ed25519_dalek::{Signer, SigningKey};
use tally_core::iou::Iou;
use tally_core::verify::{VerifyItem, parse_registration_key, verify_one};

const SCRIPT: &str = "scripts/interop/sign_iou.py";
const DOC: &str = include_str!("../../../docs/iou-format.md");

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run_python3(args: &[&str]) -> Output {
    Command::new("python3").args(args).current_dir(repo_root()).output().unwrap_or_else(|e| {
        panic!(
            "cannot run python3 ({e}): the IOU interop tests need Python 3 with the \
                 `cryptography` package (pip install cryptography)"
        )
    })
}

/// Runs `python3` with `args` from the repository root; panics with a clear
/// message when Python or the `cryptography` package is missing.
fn python3(args: &[&str]) -> Output {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        let out =
            run_python3(&["-c", "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey"]);
        if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    });
    if let Err(stderr) = probe {
        panic!(
            "python3 cannot import the `cryptography` package, which the IOU interop tests \
             need: run `pip install cryptography`\n{stderr}"
        );
    }
    run_python3(args)
}

/// One IOU to sign on both sides.
struct Case {
    name: &'static str,
    seed: [u8; 32],
    network: String,
    payee: String,
    asset: String,
    amount: u64,
    nonce: [u8; 16],
    issued_at: u64,
    expires_at: u64,
    /// `None`: leave `--resource` out (the script's default is empty).
    resource: Option<String>,
}

impl Case {
    fn iou(&self) -> Iou {
        Iou {
            network: self.network.clone(),
            payer_key: SigningKey::from_bytes(&self.seed).verifying_key().to_bytes(),
            payee: self.payee.clone(),
            asset: self.asset.clone(),
            amount: self.amount,
            nonce: self.nonce,
            issued_at_s: self.issued_at,
            expires_at_s: self.expires_at,
            resource: self.resource.clone().unwrap_or_default(),
        }
    }

    fn args(&self) -> Vec<String> {
        let mut options = vec![
            ("--seed", hex::encode(self.seed)),
            ("--network", self.network.clone()),
            ("--payee", self.payee.clone()),
            ("--asset", self.asset.clone()),
            ("--amount", self.amount.to_string()),
            ("--nonce", hex::encode(self.nonce)),
            ("--issued-at", self.issued_at.to_string()),
            ("--expires-at", self.expires_at.to_string()),
        ];
        if let Some(resource) = &self.resource {
            options.push(("--resource", resource.clone()));
        }
        let mut args = vec![SCRIPT.to_owned()];
        for (option, value) in options {
            if value.starts_with('-') {
                // argparse would take "--payee -x" for two options.
                args.push(format!("{option}={value}"));
            } else {
                args.push(option.to_owned());
                args.push(value);
            }
        }
        args
    }
}

fn base(name: &'static str, seed: u8) -> Case {
    Case {
        name,
        seed: [seed; 32],
        network: "tally:local".into(),
        payee: "news.example".into(),
        asset: "USD".into(),
        amount: 100,
        nonce: [seed.wrapping_mul(17); 16],
        issued_at: 1_700_000_000,
        expires_at: 1_700_000_300,
        resource: Some("https://news.example/a/1".into()),
    }
}

fn cases() -> Vec<Case> {
    // A resource of exactly 1024 bytes made of 1-, 2-, 3- and 4-byte characters.
    let mut max_resource = "é€🦀".repeat(113); // 9 bytes each: 1017 bytes
    max_resource.push_str("abcdefg");
    assert_eq!(max_resource.len(), 1024);
    vec![
        Case { resource: None, amount: 1, ..base("no resource flag, amount 1", 1) },
        Case { resource: Some(String::new()), ..base("explicitly empty resource", 2) },
        base("typical crawler IOU", 3),
        Case {
            resource: Some("https://例え.jp/記事/🦀?q=café&name=Ñandú&ar=مرحبا".into()),
            asset: "EURC".into(),
            ..base("non-ASCII resource", 4)
        },
        Case {
            network: "tally:".to_owned() + &"N.-_:9".repeat(9) + "abcd",
            payee: "p".repeat(30) + "._-" + &"Q".repeat(31),
            asset: "ABCDEFGHIJ12".into(),
            amount: u64::MAX,
            nonce: [0xff; 16],
            issued_at: u64::MAX - 86_400,
            expires_at: u64::MAX,
            resource: Some(max_resource),
            ..base("every field at its maximum", 5)
        },
        Case {
            resource: Some("a \"quoted\" \\ value\twith\nwhitespace and {json} ".into()),
            payee: "a".into(),
            network: "t".into(),
            asset: "X".into(),
            issued_at: 0,
            expires_at: 1,
            nonce: [0; 16],
            ..base("shortest fields, characters JSON and shells care about", 6)
        },
        Case {
            payee: "-leading.dash".into(),
            network: "-:tally".into(),
            resource: Some("--resource".into()),
            ..base("values that look like options", 8)
        },
    ]
}

#[test]
fn python_and_rust_build_and_accept_the_same_ious() {
    for case in cases() {
        let iou = case.iou();
        assert_eq!(iou.check_shape(), Ok(()), "{}: a well-formed case", case.name);
        if case.name.contains("maximum") {
            assert_eq!((iou.network.len(), iou.payee.len(), iou.asset.len()), (64, 64, 12));
        }
        let out = python3(&case.args().iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{}: sign_iou.py failed: {}", case.name, String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
        let json: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{}: output is not one JSON object ({e}): {stdout}", case.name));
        let field = |name: &str| -> Vec<u8> {
            let text = json[name].as_str().unwrap_or_else(|| panic!("{}: no string {name:?} in {json}", case.name));
            hex::decode(text).unwrap_or_else(|e| panic!("{}: {name} is not hex: {e}", case.name))
        };
        let (payer_key, signing_bytes, signature) = (field("payer_key"), field("signing_bytes"), field("signature"));

        assert_eq!(payer_key, iou.payer_key, "{}: payer key", case.name);
        assert_eq!(hex::encode(&signing_bytes), hex::encode(iou.signing_bytes()), "{}: signing bytes", case.name);
        assert_eq!(Iou::from_signing_bytes(&signing_bytes), Ok(iou.clone()), "{}: parse", case.name);

        let signature: [u8; 64] = signature.try_into().expect("a 64-byte signature");
        let key = parse_registration_key(&iou.payer_key).expect("a registrable key");
        assert!(
            verify_one(&VerifyItem { key: &key, message: &signing_bytes, signature: &signature }),
            "{}: tally-core refuses the Python signature",
            case.name
        );
        // Ed25519 is deterministic: both libraries give the same signature.
        let ours = SigningKey::from_bytes(&case.seed).sign(&signing_bytes).to_bytes();
        assert_eq!(hex::encode(signature), hex::encode(ours), "{}: signature", case.name);
    }
}

#[test]
fn python_self_test_passes() {
    let out = python3(&[SCRIPT, "--self-test"]);
    assert!(
        out.status.success(),
        "sign_iou.py --self-test failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_refuses_what_rust_refuses() {
    let bad = [
        Case { asset: "usd".into(), ..base("lower-case asset", 7) },
        Case { asset: "ABCDEFGHIJ123".into(), ..base("13-byte asset", 7) },
        Case { payee: "p".repeat(65), ..base("65-byte payee", 7) },
        Case { payee: "news:example".into(), ..base("':' in payee", 7) },
        Case { network: "n".repeat(65), ..base("65-byte network", 7) },
        Case { network: "tally local".into(), ..base("space in network", 7) },
        Case { resource: Some("é".repeat(513)), ..base("1026-byte resource", 7) },
    ];
    for case in &bad {
        assert!(case.iou().check_shape().is_err(), "{}: tally-core refuses it", case.name);
        let out = python3(&case.args().iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!out.status.success(), "{}: sign_iou.py signed it", case.name);
        assert!(out.stdout.is_empty(), "{}: sign_iou.py printed {:?}", case.name, String::from_utf8_lossy(&out.stdout));
    }
    // Well-shaped but never acceptable: the script refuses these too.
    let zero = Case { amount: 0, ..base("amount 0", 7) };
    let inverted = Case { expires_at: 1_700_000_000, ..base("expires_at == issued_at", 7) };
    for case in [zero, inverted] {
        let out = python3(&case.args().iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!out.status.success(), "{}: sign_iou.py signed it", case.name);
    }
}

/// The Python sketch in the document's worked example really produces
/// vector 2.
#[test]
fn the_documents_python_sketch_signs_vector_2() {
    let (_, rest) = DOC.split_once("```python\n").expect("a Python sketch in the document");
    let (sketch, _) = rest.split_once("```").expect("the sketch's closing fence");
    let program = format!("{sketch}\nprint(payer_key.hex())\nprint(message.hex())\nprint(signature.hex())\n");
    let out = python3(&["-c", &program]);
    assert!(out.status.success(), "the sketch fails: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    let lines: Vec<&str> = stdout.lines().collect();

    let seed: [u8; 32] = hex::decode("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let key = SigningKey::from_bytes(&seed);
    let iou = Iou {
        network: "tally:mainnet".into(),
        payer_key: key.verifying_key().to_bytes(),
        payee: "news.example".into(),
        asset: "USDC".into(),
        amount: 100,
        nonce: hex::decode("8f3a5c1e0b7d4962a1e8c3f05d2b9e47").expect("hex").try_into().expect("16 bytes"),
        issued_at_s: 1_735_689_600,
        expires_at_s: 1_735_689_900,
        resource: "https://news.example/2025/01/01/markets.html?page=2".into(),
    };
    let bytes = iou.signing_bytes();
    let signature = hex::encode(key.sign(&bytes).to_bytes());
    assert_eq!(lines, [hex::encode(iou.payer_key), hex::encode(&bytes), signature.clone()]);
    // ... which is the document's vector 2.
    assert!(DOC.contains(&format!("signature     = {signature}\n")), "vector 2's signature is in the document");
}
