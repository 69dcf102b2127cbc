//! The control plane is as provable as the log: every admin change and
//! settlement step is journaled, and `tally ledger verify` (the audit)
//! catches any rewrite of what the journal materialises — against a real
//! RocksDB, tampered with as someone with disk access would.
//!
//! What these tests prove:
//!
//! - A settled epoch (plan, EVM batch mined, payouts settled) audits clean,
//!   with the plan netted again from the log.
//! - Each of these rewrites is reported: a payout's destination, a plan's
//!   figure, an epoch's counters, a payee's bank account (an admin record),
//!   a credit limit, a deleted carry, a record no journaled change wrote, a
//!   journal entry's bytes. (The defect: the `settlement` and `accounts`
//!   column families were mutable and unaudited, so a rewritten destination
//!   paid someone else while the audit stayed clean.)
//! - Rewriting a payout's destination in the settlement records *and* in the
//!   journal, with every later journal hash recomputed (a consistent forgery
//!   of the control plane), is still reported: the plan no longer is what
//!   netting the log gives.
//! - Who did it is recorded: every entry names its actor.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ed25519_dalek::{Signer, SigningKey};
use tally_core::settlement::{
    AssetPolicy, BatchLimits, BatchState, EpochSettlement, Flow, NettingInput, PayoutRecord, SettlementPolicy,
    cut_batches, net,
};
use tally_core::{Actor, Asset, Iou, Outcome, Payee, PayoutDestination, Rail, SignedIou};
use tally_ledger::journal::{JOURNAL_ENTRY_V1, JOURNAL_HEADER_LEN, decode_entry, entry_hash};
use tally_ledger::layout::{
    ACCOUNT_PAYEE_PREFIX, ACCOUNT_PAYER_PREFIX, CF_ACCOUNTS, CF_JOURNAL, CF_SETTLEMENT, bincode_config, decode_bincode,
    encode_bincode,
};
use tally_ledger::settlement::{carry_key, epoch_key, payout_key};
use tally_ledger::{
    AdminCommand, AdminReply, AppendItem, AuditOptions, BalanceFilter, Ledger, LedgerOptions, SettlementCommand,
    Writer, WriterConfig, audit,
};

const NOW_S: u64 = 1_800_000_000;

fn actor() -> Actor {
    Actor::admin_token("10.0.0.7:4242")
}

fn signer(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn evm(n: u8) -> PayoutDestination {
    PayoutDestination::Evm { address: [n; 20] }
}

/// A settled epoch 1: bot pays site-a 1,010 and site-b 505 and site-c 5
/// (below the minimum: carried); one EVM batch pays site-a and site-b.
fn settled_ledger() -> (tempfile::TempDir, Ledger, Writer) {
    let dir = tempfile::tempdir().unwrap();
    let clock_ms = Arc::new(AtomicU64::new(NOW_S * 1000));
    let clock: tally_ledger::Clock = {
        let clock_ms = clock_ms.clone();
        Arc::new(move || clock_ms.load(Ordering::SeqCst))
    };
    let ledger = Ledger::open(dir.path(), LedgerOptions { clock: clock.clone(), ..LedgerOptions::default() }).unwrap();
    let writer = Writer::start(ledger.clone(), WriterConfig { clock, ..WriterConfig::default() }).unwrap();
    let w = writer.handle();
    let admin = |command| w.admin_blocking(actor(), command).unwrap();
    admin(AdminCommand::UpsertAsset(Asset::new("USD", 6, true).unwrap()));
    admin(AdminCommand::RegisterPayer {
        id: "bot".into(),
        display_name: "Bot".into(),
        keys: vec![signer(1).verifying_key().to_bytes()],
        credit_limits: vec![("USD".into(), 1_000_000)],
    });
    for (id, destination) in
        [("site-a", evm(1).to_string()), ("site-b", evm(2).to_string()), ("site-c", evm(3).to_string())]
    {
        admin(AdminCommand::RegisterPayee(Payee::new(id, id, &destination)));
    }
    for (n, (payee, amount)) in [("site-a", 1_010u64), ("site-b", 505), ("site-c", 5)].into_iter().enumerate() {
        let iou = Iou {
            network: "tally:test".into(),
            payer_key: signer(1).verifying_key().to_bytes(),
            payee: payee.into(),
            asset: "USD".into(),
            amount,
            nonce: [n as u8 + 1; 16],
            issued_at_s: NOW_S,
            expires_at_s: NOW_S + 600,
            resource: format!("https://{payee}/page"),
        };
        let bytes = iou.signing_bytes();
        let signature = signer(1).sign(&bytes).to_bytes();
        let item = AppendItem { charge: iou.amount, signed: SignedIou { iou, signature }, evidence: bytes };
        assert_eq!(w.append_blocking(vec![item]).unwrap()[0].outcome, Outcome::Accepted);
    }
    assert!(matches!(admin(AdminCommand::SealEpoch), AdminReply::Sealed { .. }));
    let policy = SettlementPolicy {
        fee_bps: 100,
        assets: BTreeMap::from([("USD".into(), AssetPolicy { rail: Rail::Evm, payout_min: 100, payable_multiple: 1 })]),
    };
    let limits = BatchLimits { payouts_per_evm_tx: 10, transfers_per_iso20022_file: 10, transfers_per_nacha_file: 10 };
    let rows = ledger.balances_all(&BalanceFilter { epoch: Some(1), ..Default::default() }, 100).unwrap();
    let destinations: BTreeMap<String, PayoutDestination> =
        [("site-a", evm(1)), ("site-b", evm(2)), ("site-c", evm(3))].into_iter().map(|(k, v)| (k.into(), v)).collect();
    let (links, held) = (BTreeMap::new(), BTreeSet::new());
    let input = NettingInput {
        ledger_id: ledger.ledger_id(),
        epoch: 1,
        policy: &policy,
        links: &links,
        destinations: &destinations,
        carries_in: &[],
        held: &held,
    };
    let flows =
        rows.iter().map(|r| Flow { payer: &r.payer, payee: &r.payee, asset: &r.asset, sum: r.sum, count: r.count });
    let plan = net(&input, flows).unwrap();
    assert_eq!(plan.payouts.len(), 2);
    let batches = cut_batches(&plan, &ledger.ledger_id(), limits).unwrap();
    let record = SettlementCommand::RecordPlan { plan: Box::new(plan), batches, policy, limits };
    assert_eq!(admin(AdminCommand::Settlement(record)), AdminReply::Planned { epoch: 1 });
    let mined = BatchState::EvmMined { tx_hash: [9; 32], block_number: 7, gas_used: 60_000 };
    admin(AdminCommand::Settlement(SettlementCommand::UpdateBatch { epoch: 1, index: 0, state: mined }));
    (dir, ledger, writer)
}

/// Reopens the directory as a raw RocksDB, for tampering.
fn raw(dir: &std::path::Path) -> rocksdb::DB {
    rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, tally_ledger::layout::COLUMN_FAMILIES).unwrap()
}

fn problems(dir: &std::path::Path) -> String {
    let ledger = Ledger::open(dir, LedgerOptions { read_only: true, ..LedgerOptions::default() }).unwrap();
    let report = audit(&ledger, AuditOptions { verify_signatures: true }).unwrap();
    report.problems.join("\n")
}

/// What the tamper steps need to know of the settled ledger (read before it closes).
struct Known {
    payout_ids: Vec<String>,
    site_a: Payee,
    bot: tally_core::Payer,
}

/// Applies `tamper` to the closed, settled ledger's raw RocksDB and returns what the audit reports.
fn tampered(tamper: impl FnOnce(&rocksdb::DB, &Known)) -> String {
    let (dir, ledger, writer) = settled_ledger();
    writer.shutdown();
    let known = Known {
        payout_ids: ledger.payouts(1).unwrap().into_iter().map(|p| p.payout.id).collect(),
        site_a: ledger.payees().unwrap().into_iter().find(|p| p.id == "site-a").unwrap(),
        bot: ledger.payer("bot").unwrap().unwrap(),
    };
    assert_eq!(known.payout_ids.len(), 2);
    // Into SST files: the raw handle below has no merge operator to replay the WAL's merges with.
    ledger.flush().unwrap();
    drop(ledger);
    let db = raw(dir.path());
    tamper(&db, &known);
    drop(db);
    problems(dir.path())
}

#[test]
fn a_settled_epoch_audits_clean_with_its_plan_netted_again() {
    let (dir, ledger, writer) = settled_ledger();
    let report = audit(&ledger, AuditOptions { verify_signatures: true }).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.plans_renetted, 1);
    assert!(report.journal_entries >= 10, "{}", report.journal_entries);
    assert_eq!(ledger.settlement(1).unwrap().unwrap().status, tally_core::settlement::SettlementStatus::Settled);
    // Every entry says who made it.
    let entries = ledger.journal(1, 100).unwrap();
    assert_eq!(entries[0].body.actor, Actor::Engine, "genesis is the engine's");
    assert!(entries.iter().skip(2).all(|e| e.body.actor == actor()), "every admin step names its caller");
    writer.shutdown();
    drop(ledger);
    assert_eq!(problems(dir.path()), "", "the read-only audit agrees");
}

#[test]
fn rewriting_a_payout_destination_is_reported() {
    let text = tampered(|db, known| {
        let id = &known.payout_ids[0];
        let key = payout_key(1, id);
        let cf = db.cf_handle(CF_SETTLEMENT).unwrap();
        let mut record: PayoutRecord = decode_bincode("payout", &db.get_cf(cf, &key).unwrap().unwrap()).unwrap();
        record.payout.destination = evm(0xee);
        db.put_cf(cf, &key, encode_bincode(&record)).unwrap();
    });
    assert!(text.contains("differs from what the journal wrote (rewritten)"), "{text}");
}

#[test]
fn rewriting_a_plan_figure_or_counter_is_reported() {
    let text = tampered(|db, _| {
        let cf = db.cf_handle(CF_SETTLEMENT).unwrap();
        let mut record: EpochSettlement =
            decode_bincode("epoch", &db.get_cf(cf, epoch_key(1)).unwrap().unwrap()).unwrap();
        record.figures[0].paid += 1;
        record.payouts_open = 1;
        db.put_cf(cf, epoch_key(1), encode_bincode(&record)).unwrap();
    });
    assert!(text.contains("settlement: record E"), "{text}");
    assert!(text.contains("differs from what the journal wrote (rewritten)"), "{text}");
}

#[test]
fn rewriting_an_admin_record_is_reported() {
    let text = tampered(|db, known| {
        let cf = db.cf_handle(CF_ACCOUNTS).unwrap();
        let mut payee = known.site_a.clone();
        payee.payout_destination = evm(0xee).to_string();
        db.put_cf(cf, [ACCOUNT_PAYEE_PREFIX, b"site-a"].concat(), encode_bincode(&payee)).unwrap();
        let mut payer = known.bot.clone();
        payer.set_credit_limit("USD", u128::MAX);
        db.put_cf(cf, [ACCOUNT_PAYER_PREFIX, b"bot"].concat(), encode_bincode(&payer)).unwrap();
    });
    assert!(text.contains("accounts: record payee/site-a"), "{text}");
    assert!(text.contains("accounts: record payer/bot"), "{text}");
}

#[test]
fn deleting_or_adding_records_is_reported() {
    let text = tampered(|db, _| {
        let cf = db.cf_handle(CF_SETTLEMENT).unwrap();
        db.delete_cf(cf, carry_key(2, "carry:1:site-c:USD:below-minimum")).unwrap();
        db.put_cf(cf, b"E\xff", b"forged").unwrap();
    });
    assert!(text.contains("vanished"), "{text}");
    assert!(text.contains("written by no journaled change"), "{text}");
}

#[test]
fn rewriting_a_journal_entry_breaks_its_hash() {
    let text = tampered(|db, _| {
        let cf = db.cf_handle(CF_JOURNAL).unwrap();
        let key = 3u64.to_be_bytes();
        let mut value = db.get_cf(cf, key).unwrap().unwrap();
        // A byte of the body (the actor's address).
        let at = value.len() - 5;
        value[at] ^= 0x01;
        db.put_cf(cf, key, value).unwrap();
    });
    assert!(text.contains("journal entry 3"), "{text}");
}

/// Rewrites the record under `key` with `forge` everywhere a disk-level
/// forger can: the stored record, every journal effect that wrote it, and
/// every journal hash from there on, so both the view and the journal's chain
/// are internally consistent again.
fn forge_consistently(db: &rocksdb::DB, key: &[u8], forge: impl Fn(&[u8]) -> Vec<u8>) {
    let settlement = db.cf_handle(CF_SETTLEMENT).unwrap();
    let current = db.get_cf(settlement, key).unwrap().unwrap();
    db.put_cf(settlement, key, forge(&current)).unwrap();
    let journal = db.cf_handle(CF_JOURNAL).unwrap();
    let mut prev_hash = tally_core::GENESIS_HASH;
    type KeyValue = (Box<[u8]>, Box<[u8]>);
    let entries: Vec<KeyValue> =
        db.iterator_cf(journal, rocksdb::IteratorMode::Start).map(|item| item.unwrap()).collect();
    for (entry_key, value) in entries {
        let (mut entry, _) = decode_entry(&entry_key, &value).unwrap();
        for effect in &mut entry.body.effects {
            if effect.key == key
                && let Some(value) = &effect.value
            {
                effect.value = Some(forge(value));
            }
        }
        let body = bincode::serde::encode_to_vec(&entry.body, bincode_config()).unwrap();
        let hash = entry_hash(&prev_hash, entry.seq, entry.at_ms, entry.log_head, &body);
        let mut forged = vec![JOURNAL_ENTRY_V1];
        forged.extend_from_slice(&entry.at_ms.to_be_bytes());
        forged.extend_from_slice(&entry.log_head.to_be_bytes());
        forged.extend_from_slice(&prev_hash);
        forged.extend_from_slice(&hash);
        forged.extend_from_slice(&body);
        assert_eq!(forged.len(), JOURNAL_HEADER_LEN + body.len());
        db.put_cf(journal, &entry_key, forged).unwrap();
        prev_hash = hash;
    }
}

#[track_caller]
fn assert_consistent(text: &str) {
    assert!(!text.contains("does not match its hash"), "the forger re-chained the journal: {text}");
    assert!(!text.contains("rewritten)"), "the view matches the forged journal: {text}");
}

/// The plan against the log: a forged destination is not what netting gives.
#[test]
fn a_consistently_forged_payout_destination_fails_against_the_log() {
    let text = tampered(|db, known| {
        forge_consistently(db, &payout_key(1, &known.payout_ids[0]), |bytes| {
            let mut record: PayoutRecord = decode_bincode("payout", bytes).unwrap();
            record.payout.destination = evm(0xee);
            encode_bincode(&record)
        });
    });
    assert_consistent(&text);
    assert!(text.contains("is not what the log nets to"), "{text}");
}

/// Counters against records: a forged counter disagrees with the batch and payout records.
#[test]
fn consistently_forged_counters_fail_against_the_records() {
    let text = tampered(|db, _| {
        forge_consistently(db, &epoch_key(1), |bytes| {
            let mut record: EpochSettlement = decode_bincode("epoch", bytes).unwrap();
            record.gas_used += 1;
            encode_bincode(&record)
        });
    });
    assert_consistent(&text);
    assert!(text.contains("counters say"), "{text}");
}

/// Payouts against plans: a later step may change a payout's state, never its amount.
#[test]
fn a_payout_forged_after_its_plan_fails_against_the_plan() {
    let text = tampered(|db, known| {
        let key = payout_key(1, &known.payout_ids[0]);
        // Only the settled state's write (the last one) changes the amount.
        forge_consistently(db, &key, |bytes| {
            let mut record: PayoutRecord = decode_bincode("payout", bytes).unwrap();
            if matches!(record.state, tally_core::settlement::PayoutState::Settled(_)) {
                record.payout.amount += 1;
            }
            encode_bincode(&record)
        });
    });
    assert_consistent(&text);
    assert!(text.contains("rewritten beyond its state"), "{text}");
}
