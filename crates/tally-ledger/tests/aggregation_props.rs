//! Property: whatever sequence of IOUs, replays, conflicts and epoch seals
//! the writer is fed, the aggregates equal a sum over the accepted IOUs of
//! a simple model, and the audit (which recomputes them from the log) is
//! clean. Real RocksDB in a temporary directory for every case.

use std::collections::BTreeMap;
use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use tally_core::{Asset, Iou, Outcome, Payee, SignedIou};
use tally_ledger::audit::{AuditOptions, audit};
use tally_ledger::{AdminCommand, AppendItem, BalanceFilter, Ledger, LedgerOptions, Writer, WriterConfig};

const NOW_S: u64 = 1_900_000_000;
const PAYERS: u8 = 3;
const PAYEES: [&str; 3] = ["a.example", "b.example", "c.example"];

#[derive(Clone, Debug)]
enum Step {
    /// (payer, payee, amount, nonce): nonces repeat often on purpose, so
    /// replays and conflicts are exercised.
    Iou(u8, usize, u64, u8),
    Seal,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        20 => (0..PAYERS, 0..PAYEES.len(), 1u64..5_000, 0u8..40).prop_map(|(p, q, a, n)| Step::Iou(p, q, a, n)),
        1 => Just(Step::Seal),
    ]
}

fn item(payer: u8, payee: usize, amount: u64, nonce: u8) -> AppendItem {
    let key = SigningKey::from_bytes(&[payer + 1; 32]);
    let iou = Iou {
        network: "tally:prop".into(),
        payer_key: key.verifying_key().to_bytes(),
        payee: PAYEES[payee].into(),
        asset: "USD".into(),
        amount,
        nonce: [nonce; 16],
        issued_at_s: NOW_S,
        expires_at_s: NOW_S + 60,
        resource: String::new(),
    };
    let signing_bytes = iou.signing_bytes();
    let signature = key.sign(&signing_bytes).to_bytes();
    AppendItem { charge: iou.amount, signed: SignedIou { iou, signature }, evidence: signing_bytes }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn aggregates_equal_the_sum_of_accepted_ious(steps in proptest::collection::vec(step(), 1..120), group in 1usize..20) {
        let dir = tempfile::tempdir().unwrap();
        let clock: tally_ledger::Clock = Arc::new(|| NOW_S * 1000);
        let ledger = Ledger::open(dir.path(), LedgerOptions { clock: clock.clone(), ..LedgerOptions::default() }).unwrap();
        let writer = Writer::start(ledger.clone(), WriterConfig { clock, ..WriterConfig::default() }).unwrap();
        let w = writer.handle();
        w.admin_blocking(test_actor(), AdminCommand::UpsertAsset(Asset::new("USD", 6, true).unwrap())).unwrap();
        for p in 0..PAYERS {
            w.admin_blocking(test_actor(), AdminCommand::RegisterPayer {
                id: format!("payer-{p}"),
                display_name: String::new(),
                keys: vec![SigningKey::from_bytes(&[p + 1; 32]).verifying_key().to_bytes()],
                // Tight enough that some IOUs hit the limit.
                credit_limits: vec![("USD".into(), 60_000)],
            }).unwrap();
        }
        for q in PAYEES {
            w.admin_blocking(test_actor(), AdminCommand::RegisterPayee(Payee { id: q.into(), display_name: String::new(), payout_destination: String::new() , status: tally_core::PayeeStatus::Active})).unwrap();
        }

        // The model: first content seen per (payer, nonce) wins.
        let mut first: BTreeMap<(u8, u8), (usize, u64)> = BTreeMap::new();
        let mut owed: BTreeMap<u8, u64> = BTreeMap::new();
        let mut expected: BTreeMap<(u64, String, String), (u128, u64)> = BTreeMap::new();
        let mut epoch = 1u64;
        let mut pending: Vec<(u8, usize, u64, u8)> = Vec::new();
        let flush = |pending: &mut Vec<(u8, usize, u64, u8)>, epoch: u64,
                     first: &mut BTreeMap<(u8, u8), (usize, u64)>, owed: &mut BTreeMap<u8, u64>,
                     expected: &mut BTreeMap<(u64, String, String), (u128, u64)>| {
            let items = pending.iter().map(|(p, q, a, n)| item(*p, *q, *a, *n)).collect();
            let results = w.append_blocking(items).unwrap();
            for ((p, q, a, n), result) in pending.drain(..).zip(results) {
                let model = match first.get(&(p, n)) {
                    Some(&(fq, fa)) if (fq, fa) == (q, a) => Outcome::Duplicate,
                    Some(_) => Outcome::Conflict,
                    None if owed.get(&p).copied().unwrap_or(0) + a > 60_000 => Outcome::CreditLimitExceeded,
                    None => {
                        first.insert((p, n), (q, a));
                        *owed.entry(p).or_default() += a;
                        let e = expected.entry((epoch, format!("payer-{p}"), PAYEES[q].to_owned())).or_default();
                        e.0 += u128::from(a);
                        e.1 += 1;
                        Outcome::Accepted
                    }
                };
                assert_eq!(result.outcome, model);
            }
        };
        for s in steps {
            match s {
                Step::Iou(p, q, a, n) => {
                    pending.push((p, q, a, n));
                    if pending.len() >= group {
                        flush(&mut pending, epoch, &mut first, &mut owed, &mut expected);
                    }
                }
                Step::Seal => {
                    flush(&mut pending, epoch, &mut first, &mut owed, &mut expected);
                    w.admin_blocking(test_actor(), AdminCommand::SealEpoch).unwrap();
                    epoch += 1;
                }
            }
        }
        flush(&mut pending, epoch, &mut first, &mut owed, &mut expected);

        let rows = ledger.balances_all(&BalanceFilter::default(), usize::MAX).unwrap();
        let got: BTreeMap<(u64, String, String), (u128, u64)> =
            rows.into_iter().map(|r| ((r.epoch, r.payer, r.payee), (r.sum, r.count))).collect();
        prop_assert_eq!(got, expected);
        let report = audit(&ledger, AuditOptions { verify_signatures: true }).unwrap();
        prop_assert!(report.is_clean(), "{:?}", report.problems);
        writer.shutdown();
    }
}

/// Who the tests' admin commands are recorded as.
fn test_actor() -> tally_core::Actor {
    tally_core::Actor::admin_token("test")
}
