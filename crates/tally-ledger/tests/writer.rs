//! The writer and the audit against a real RocksDB in a temporary directory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ed25519_dalek::{Signer, SigningKey};
use tally_core::{Asset, Iou, Outcome, Payee, PayerStatus, SignedIou};
use tally_ledger::audit::{AuditOptions, audit};
use tally_ledger::layout::{CF_LOG, decode_log_record, encode_log_record, log_key};
use tally_ledger::{
    AdminCommand, AdminError, AdminReply, AppendItem, BalanceFilter, EpochStatus, Ledger, LedgerOptions, Writer,
    WriterConfig,
};

const NOW_S: u64 = 1_800_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    ledger: Ledger,
    writer: Writer,
    clock_ms: Arc<AtomicU64>,
}

fn clock(at: &Arc<AtomicU64>) -> tally_ledger::Clock {
    let at = at.clone();
    Arc::new(move || at.load(Ordering::SeqCst))
}

fn open(dir: &std::path::Path, clock_ms: &Arc<AtomicU64>) -> (Ledger, Writer) {
    let ledger = Ledger::open(dir, LedgerOptions { clock: clock(clock_ms), ..LedgerOptions::default() }).unwrap();
    let writer =
        Writer::start(ledger.clone(), WriterConfig { clock: clock(clock_ms), ..WriterConfig::default() }).unwrap();
    (ledger, writer)
}

fn signer(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn setup() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock_ms = Arc::new(AtomicU64::new(NOW_S * 1000));
    let (ledger, writer) = open(dir.path(), &clock_ms);
    let admin = writer.handle();
    admin.admin_blocking(test_actor(), AdminCommand::UpsertAsset(Asset::new("USD", 6, true).unwrap())).unwrap();
    for (id, seed, limit) in [("crawler-a", 1u8, 10_000u128), ("crawler-b", 2, 1_000)] {
        admin
            .admin_blocking(
                test_actor(),
                AdminCommand::RegisterPayer {
                    id: id.into(),
                    display_name: id.into(),
                    keys: vec![signer(seed).verifying_key().to_bytes()],
                    credit_limits: vec![("USD".into(), limit)],
                },
            )
            .unwrap();
    }
    for id in ["news.example", "api.example"] {
        admin
            .admin_blocking(
                test_actor(),
                AdminCommand::RegisterPayee(Payee {
                    id: id.into(),
                    display_name: id.into(),
                    payout_destination: String::new(),
                    status: tally_core::PayeeStatus::Active,
                }),
            )
            .unwrap();
    }
    Fixture { _dir: dir, ledger, writer, clock_ms }
}

fn iou(seed: u8, payee: &str, amount: u64, nonce: u8) -> AppendItem {
    signed_item(seed, payee, amount, [nonce; 16], u32::from(nonce))
}

/// An IOU of `signer(seed)` under `nonce`, its resource numbered `resource`.
fn signed_item(seed: u8, payee: &str, amount: u64, nonce: [u8; 16], resource: u32) -> AppendItem {
    let key = signer(seed);
    let iou = Iou {
        network: "tally:test".into(),
        payer_key: key.verifying_key().to_bytes(),
        payee: payee.into(),
        asset: "USD".into(),
        amount,
        nonce,
        issued_at_s: NOW_S,
        expires_at_s: NOW_S + 600,
        resource: format!("https://{payee}/{resource}"),
    };
    let signing_bytes = iou.signing_bytes();
    let signature = key.sign(&signing_bytes).to_bytes();
    AppendItem { charge: iou.amount, signed: SignedIou { iou, signature }, evidence: signing_bytes }
}

fn clean_audit(ledger: &Ledger) -> tally_ledger::AuditReport {
    let report = audit(ledger, AuditOptions { verify_signatures: true }).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    report
}

#[test]
fn accepts_aggregates_and_answers_replays() {
    let f = setup();
    let w = f.writer.handle();
    let results = w
        .append_blocking(vec![
            iou(1, "news.example", 100, 1),
            iou(1, "news.example", 250, 2),
            iou(1, "api.example", 5, 3),
            iou(2, "news.example", 7, 1),
            iou(1, "news.example", 100, 1), // same group, same content
            iou(1, "news.example", 101, 2), // same group, same nonce, other content
        ])
        .unwrap();
    let outcomes: Vec<Outcome> = results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Accepted,
            Outcome::Accepted,
            Outcome::Accepted,
            Outcome::Accepted,
            Outcome::Duplicate,
            Outcome::Conflict
        ]
    );
    assert_eq!(results[0].commitment, results[4].commitment);
    let seqs: Vec<u64> = results[..4].iter().map(|r| r.commitment.unwrap().seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);

    // Replays in a later group consult the index on disk.
    let again = w.append_blocking(vec![iou(1, "news.example", 250, 2), iou(1, "news.example", 9, 2)]).unwrap();
    assert_eq!(again[0].outcome, Outcome::Duplicate);
    assert_eq!(again[0].commitment, results[1].commitment);
    assert_eq!(again[1].outcome, Outcome::Conflict);

    let by_payer =
        f.ledger.balances_all(&BalanceFilter { payer: Some("crawler-a".into()), ..Default::default() }, 100).unwrap();
    let summary: Vec<(&str, u128, u64)> = by_payer.iter().map(|r| (r.payee.as_str(), r.sum, r.count)).collect();
    assert_eq!(summary, [("api.example", 5, 1), ("news.example", 350, 2)]);
    let by_payee = f
        .ledger
        .balances_all(&BalanceFilter { payee: Some("news.example".into()), ..Default::default() }, 100)
        .unwrap();
    let summary: Vec<(&str, u128)> = by_payee.iter().map(|r| (r.payer.as_str(), r.sum)).collect();
    assert_eq!(summary, [("crawler-a", 350), ("crawler-b", 7)]);
    let pair = f
        .ledger
        .balances_all(
            &BalanceFilter {
                payer: Some("crawler-b".into()),
                payee: Some("news.example".into()),
                ..Default::default()
            },
            100,
        )
        .unwrap();
    assert_eq!(pair.len(), 1);
    let report = clean_audit(&f.ledger);
    assert_eq!((report.records, report.signatures_verified, report.aggregates), (4, 4, 3));
}

#[test]
fn rejects_by_account_state() {
    let f = setup();
    let w = f.writer.handle();
    let stranger = iou(9, "news.example", 1, 1);
    let mut unknown_payee = iou(1, "news.example", 1, 2);
    unknown_payee.signed.iou.payee = "nobody".into();
    unknown_payee.evidence = unknown_payee.signed.iou.signing_bytes();
    let mut unknown_asset = iou(1, "news.example", 1, 3);
    unknown_asset.signed.iou.asset = "EUR".into();
    unknown_asset.evidence = unknown_asset.signed.iou.signing_bytes();
    let zero = iou(1, "news.example", 0, 4);
    let results = w.append_blocking(vec![stranger, unknown_payee, unknown_asset, zero]).unwrap();
    let outcomes: Vec<Outcome> = results.iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, [Outcome::UnknownPayer, Outcome::UnknownPayee, Outcome::UnknownAsset, Outcome::InvalidAmount]);

    w.admin_blocking(test_actor(), AdminCommand::UpsertAsset(Asset::new("USD", 6, false).unwrap())).unwrap();
    assert_eq!(w.append_blocking(vec![iou(1, "news.example", 1, 5)]).unwrap()[0].outcome, Outcome::AssetDisabled);
    w.admin_blocking(test_actor(), AdminCommand::UpsertAsset(Asset::new("USD", 6, true).unwrap())).unwrap();
    assert!(matches!(
        w.admin_blocking(test_actor(), AdminCommand::UpsertAsset(Asset::new("USD", 2, true).unwrap())),
        Err(AdminError::Invalid(_))
    ));

    w.admin_blocking(
        test_actor(),
        AdminCommand::SetPayerStatus { payer_id: "crawler-a".into(), status: PayerStatus::Suspended },
    )
    .unwrap();
    assert_eq!(w.append_blocking(vec![iou(1, "news.example", 1, 6)]).unwrap()[0].outcome, Outcome::SuspendedPayer);

    // The writer checks expiry itself: the replay index may forget nonces
    // only because expired IOUs can never be accepted.
    f.clock_ms.store((NOW_S + 600) * 1000, Ordering::SeqCst);
    assert_eq!(w.append_blocking(vec![iou(2, "news.example", 1, 7)]).unwrap()[0].outcome, Outcome::Expired);
    assert!(f.ledger.records(1, 10).unwrap().is_empty());
}

#[test]
fn credit_limit_is_exact_and_survives_restart() {
    let f = setup();
    let w = f.writer.handle();
    // crawler-b may owe 1_000.
    let results = w.append_blocking((0..12).map(|n| iou(2, "news.example", 100, n)).collect()).unwrap();
    let accepted = results.iter().filter(|r| r.outcome == Outcome::Accepted).count();
    assert_eq!(accepted, 10);
    assert!(results[10..].iter().all(|r| r.outcome == Outcome::CreditLimitExceeded));
    let Fixture { _dir: dir, ledger, writer, clock_ms } = f;
    writer.shutdown();
    drop(ledger);

    // Exposure is rebuilt from the aggregates on restart.
    let (ledger, writer) = open(dir.path(), &clock_ms);
    let w = writer.handle();
    assert_eq!(
        w.append_blocking(vec![iou(2, "news.example", 1, 50)]).unwrap()[0].outcome,
        Outcome::CreditLimitExceeded
    );
    w.admin_blocking(
        test_actor(),
        AdminCommand::SetCreditLimit { payer_id: "crawler-b".into(), asset: "USD".into(), limit: 1_001 },
    )
    .unwrap();
    assert_eq!(w.append_blocking(vec![iou(2, "news.example", 1, 50)]).unwrap()[0].outcome, Outcome::Accepted);
    clean_audit(&ledger);
}

#[test]
fn sealing_moves_new_ious_to_the_next_epoch() {
    let f = setup();
    let w = f.writer.handle();
    w.append_blocking(vec![iou(1, "news.example", 10, 1), iou(1, "news.example", 10, 2)]).unwrap();
    let AdminReply::Sealed { sealed, opened } = w.admin_blocking(test_actor(), AdminCommand::SealEpoch).unwrap() else {
        panic!("seal answers with the epochs");
    };
    assert_eq!((sealed.epoch, sealed.status, sealed.seq_last), (1, EpochStatus::Sealed, Some(2)));
    assert_eq!((opened.epoch, opened.status, opened.seq_first), (2, EpochStatus::Open, 3));
    let after = w.append_blocking(vec![iou(1, "news.example", 5, 3)]).unwrap();
    assert_eq!(after[0].epoch, 2);
    // A replay of an epoch-1 IOU still answers with epoch 1.
    assert_eq!(w.append_blocking(vec![iou(1, "news.example", 10, 1)]).unwrap()[0].epoch, 1);
    let epoch_one = f.ledger.balances_all(&BalanceFilter { epoch: Some(1), ..Default::default() }, 100).unwrap();
    assert_eq!((epoch_one[0].sum, epoch_one[0].count), (20, 2));
    let epoch_two = f.ledger.balances_all(&BalanceFilter { epoch: Some(2), ..Default::default() }, 100).unwrap();
    assert_eq!((epoch_two[0].sum, epoch_two[0].count), (5, 1));
    assert_eq!(f.ledger.epochs().unwrap().len(), 2);
    clean_audit(&f.ledger);
}

#[test]
fn admin_refuses_bad_registrations() {
    let f = setup();
    let w = f.writer.handle();
    let taken = signer(1).verifying_key().to_bytes();
    let register = |id: &str, keys: Vec<[u8; 32]>| AdminCommand::RegisterPayer {
        id: id.into(),
        display_name: String::new(),
        keys,
        credit_limits: vec![],
    };
    assert!(matches!(
        w.admin_blocking(test_actor(), register("crawler-a", vec![[5; 32]])),
        Err(AdminError::AlreadyExists(_))
    ));
    assert!(matches!(
        w.admin_blocking(test_actor(), register("other", vec![taken])),
        Err(AdminError::AlreadyExists(_))
    ));
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(matches!(w.admin_blocking(test_actor(), register("weak", vec![identity])), Err(AdminError::Invalid(_))));
    assert!(matches!(
        w.admin_blocking(test_actor(), register("bad id", vec![signer(7).verifying_key().to_bytes()])),
        Err(AdminError::Invalid(_))
    ));
    assert!(matches!(w.admin_blocking(test_actor(), register("nokeys", vec![])), Err(AdminError::Invalid(_))));
    assert!(matches!(
        w.admin_blocking(
            test_actor(),
            AdminCommand::SetCreditLimit { payer_id: "ghost".into(), asset: "USD".into(), limit: 1 }
        ),
        Err(AdminError::NotFound(_))
    ));
    // A key added later is usable at once, and published to the directory.
    let added = signer(8).verifying_key().to_bytes();
    w.admin_blocking(test_actor(), AdminCommand::AddPayerKey { payer_id: "crawler-a".into(), key: added }).unwrap();
    assert!(w.directory().lookup(&added).is_some());
    assert_eq!(w.append_blocking(vec![iou(8, "news.example", 1, 1)]).unwrap()[0].outcome, Outcome::Accepted);
}

#[test]
fn tampering_with_a_record_is_detected() {
    let f = setup();
    let w = f.writer.handle();
    w.append_blocking((1..=5).map(|n| iou(1, "news.example", 10, n)).collect()).unwrap();
    let Fixture { _dir: dir, ledger, writer, .. } = f;
    writer.shutdown();
    drop(ledger);

    // Rewrite record 3's committed amount (byte 60 of the signing bytes) and
    // record 4's charge directly in RocksDB, as someone with disk access might.
    {
        let ledger = Ledger::open(dir.path(), LedgerOptions::default()).unwrap();
        let mut amount_changed = ledger.record(3).unwrap().unwrap();
        amount_changed.evidence[60 + 7] ^= 0x01;
        let mut charge_changed = ledger.record(4).unwrap().unwrap();
        charge_changed.charge = Some(9);
        drop(ledger);
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), tally_ledger::layout::COLUMN_FAMILIES)
            .unwrap();
        for record in [&amount_changed, &charge_changed] {
            let mut value = Vec::new();
            encode_log_record(record, &mut value);
            db.put_cf(db.cf_handle(CF_LOG).unwrap(), log_key(record.seq), &value).unwrap();
            let stored = db.get_cf(db.cf_handle(CF_LOG).unwrap(), log_key(record.seq)).unwrap().unwrap();
            assert_eq!(decode_log_record(&log_key(record.seq), &stored).unwrap(), *record);
        }
    }
    let ledger = Ledger::open(dir.path(), LedgerOptions { read_only: true, ..LedgerOptions::default() }).unwrap();
    let report = audit(&ledger, AuditOptions { verify_signatures: true }).unwrap();
    let text = report.problems.join("\n");
    assert!(text.contains("record 3: content does not match its hash"), "{text}");
    assert!(text.contains("record 3: signature does not verify"), "{text}");
    // The charge is covered by the record's hash, and the aggregates count charges.
    assert!(text.contains("record 4: content does not match its hash"), "{text}");
    assert!(!text.contains("record 4: signature"), "the payer's signature does not cover the charge: {text}");
    assert!(text.contains("stored"), "aggregate mismatch reported: {text}");
}

#[test]
fn expired_nonces_are_pruned_only_after_the_margin() {
    let f = setup();
    let w = f.writer.handle();
    let item = iou(1, "news.example", 10, 1);
    let (key, nonce) = (item.signed.iou.payer_key, item.signed.iou.nonce);
    w.append_blocking(vec![item]).unwrap();
    f.ledger.compact();
    assert!(f.ledger.nonce_known(&key, &nonce).unwrap());
    // Pruning follows the ledger's durable time mark, not the clock: the
    // clock alone moves nothing.
    f.clock_ms.store((NOW_S + 600 + 3_601) * 1000, Ordering::SeqCst);
    f.ledger.compact();
    assert!(f.ledger.nonce_known(&key, &nonce).unwrap(), "a clock that moved prunes nothing by itself");
    // Expired, but inside the margin by a recorded time: kept.
    f.clock_ms.store((NOW_S + 600 + 3_600) * 1000, Ordering::SeqCst);
    record_something(&w);
    f.ledger.compact();
    assert!(f.ledger.nonce_known(&key, &nonce).unwrap());
    // Past expiry plus margin by a recorded time: forgotten, and the audit accepts that.
    f.clock_ms.store((NOW_S + 600 + 3_601) * 1000, Ordering::SeqCst);
    record_something(&w);
    f.ledger.compact();
    assert!(!f.ledger.nonce_known(&key, &nonce).unwrap());
    let report = audit(&f.ledger, AuditOptions { verify_signatures: true }).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.nonces_pruned, 1);
    // And the IOU itself can never come back: it is expired.
    assert_eq!(w.append_blocking(vec![iou(1, "news.example", 10, 1)]).unwrap()[0].outcome, Outcome::Expired);
}

/// Records an admin change (re-enabling USD): a journal entry at the writer's
/// time, which becomes the ledger's durable time mark.
fn record_something(w: &tally_ledger::WriterHandle) {
    w.admin_blocking(test_actor(), AdminCommand::UpsertAsset(Asset::new("USD", 6, true).unwrap())).unwrap();
}

/// An IOU of crawler-a with a two-byte nonce (more than `iou`'s 256).
fn wide_iou(payee: &str, amount: u64, nonce: u16) -> AppendItem {
    let mut nonce_bytes = [0u8; 16];
    nonce_bytes[..2].copy_from_slice(&nonce.to_be_bytes());
    signed_item(1, payee, amount, nonce_bytes, u32::from(nonce))
}

/// The writer decides group N+1 while group N is still being written: a
/// replay must be caught whether its original is in the same group, in a
/// group still in the pipeline, or on disk. Eight threads each submit the
/// same 1,200 IOUs (in a different order, in commands of 24), racing so
/// that originals and replays meet at every stage. Whatever the
/// interleaving, each IOU is accepted exactly once, every other copy is a
/// DUPLICATE carrying the original's commitment, a different IOU under an
/// accepted nonce is a CONFLICT, and the ledger audits clean.
#[test]
fn pipelined_groups_answer_replays_exactly_once() {
    const IOUS: u16 = 1_200;
    const THREADS: u16 = 8;
    const COMMAND_IOUS: usize = 24;
    let f = setup();
    fn make(n: u16) -> AppendItem {
        wide_iou(["news.example", "api.example"][usize::from(n % 2)], u64::from(n % 7) + 1, n)
    }
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let w = f.writer.handle();
            std::thread::spawn(move || {
                // A deterministic, per-thread order: a stride coprime with IOUS.
                let stride = [1u16, 7, 11, 13, 17, 19, 23, 29][usize::from(t)];
                let order: Vec<u16> = (0..IOUS).map(|i| (i * stride + t * 97) % IOUS).collect();
                let mut answers = Vec::new();
                for chunk in order.chunks(COMMAND_IOUS) {
                    let items: Vec<AppendItem> = chunk.iter().map(|&n| make(n)).collect();
                    let results = w.append_blocking(items).unwrap();
                    answers.extend(chunk.iter().copied().zip(results));
                }
                answers
            })
        })
        .collect();
    let mut accepted = std::collections::HashMap::new();
    let mut duplicates = Vec::new();
    for thread in threads {
        for (n, result) in thread.join().unwrap() {
            match result.outcome {
                Outcome::Accepted => assert!(accepted.insert(n, result.commitment).is_none(), "IOU {n} accepted twice"),
                Outcome::Duplicate => duplicates.push((n, result.commitment)),
                other => panic!("IOU {n}: {other:?}"),
            }
        }
    }
    assert_eq!(accepted.len(), usize::from(IOUS));
    assert_eq!(duplicates.len(), usize::from(IOUS) * usize::from(THREADS - 1));
    for (n, commitment) in duplicates {
        assert_eq!(Some(&commitment), accepted.get(&n), "IOU {n}'s duplicate names another commitment");
    }
    // A different IOU under an accepted nonce, from the disk now.
    let conflict = f.writer.handle().append_blocking(vec![wide_iou("news.example", 999, 5)]).unwrap();
    assert_eq!(conflict[0].outcome, Outcome::Conflict);

    let total: u128 = (0..IOUS).map(|n| u128::from(n % 7) + 1).sum();
    let balances = f.ledger.balances_all(&BalanceFilter { payer: Some("crawler-a".into()), ..Default::default() }, 10);
    let balances = balances.unwrap();
    assert_eq!(balances.iter().map(|r| r.sum).sum::<u128>(), total);
    assert_eq!(balances.iter().map(|r| r.count).sum::<u64>(), u64::from(IOUS));
    let report = clean_audit(&f.ledger);
    assert_eq!(report.records, u64::from(IOUS));
}

/// Who the tests' admin commands are recorded as.
fn test_actor() -> tally_core::Actor {
    tally_core::Actor::admin_token("test")
}

/// A record the writer could not have accepted, forged consistently (its
/// hash recomputed, so the chain is intact): accepted after its IOU expired,
/// and from a key after that key was revoked. The audit reports both.
#[test]
fn a_record_accepted_after_expiry_or_from_a_revoked_key_is_reported() {
    let f = setup();
    let w = f.writer.handle();
    w.append_blocking(vec![iou(1, "news.example", 10, 1), iou(1, "news.example", 10, 2)]).unwrap();
    f.clock_ms.store((NOW_S + 10) * 1000, Ordering::SeqCst);
    let key = signer(1).verifying_key().to_bytes();
    w.admin_blocking(test_actor(), AdminCommand::RevokePayerKey { payer_id: "crawler-a".into(), key }).unwrap();
    clean_audit(&f.ledger);
    let Fixture { _dir: dir, ledger, writer, .. } = f;
    writer.shutdown();
    drop(ledger);
    {
        let ledger = Ledger::open(dir.path(), LedgerOptions::default()).unwrap();
        let mut forged = ledger.record(2).unwrap().unwrap();
        forged.accepted_at_ms = (NOW_S + 700) * 1000;
        forged.hash = tally_core::chain::link_hash(
            &forged.prev_hash,
            &tally_core::chain::LinkContent {
                seq: forged.seq,
                epoch: forged.epoch,
                accepted_at_ms: forged.accepted_at_ms,
                charge: forged.charge,
                signature: &forged.signature,
                evidence: &forged.evidence,
            },
        );
        drop(ledger);
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), tally_ledger::layout::COLUMN_FAMILIES)
            .unwrap();
        let mut value = Vec::new();
        encode_log_record(&forged, &mut value);
        db.put_cf(db.cf_handle(CF_LOG).unwrap(), log_key(forged.seq), &value).unwrap();
    }
    let ledger = Ledger::open(dir.path(), LedgerOptions { read_only: true, ..LedgerOptions::default() }).unwrap();
    let report = audit(&ledger, AuditOptions { verify_signatures: true }).unwrap();
    let text = report.problems.join("\n");
    assert!(!text.contains("content does not match its hash"), "a consistent forgery: {text}");
    assert!(text.contains("record 2: accepted at") && text.contains("not before its IOU expired"), "{text}");
    assert!(text.contains("record 2: accepted at") && text.contains("from a key revoked at"), "{text}");
    assert!(!text.contains("record 1:"), "record 1 was accepted before both: {text}");
}
