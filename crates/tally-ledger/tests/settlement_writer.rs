//! Settlement's persisted state machine, driven through the single writer
//! against a real RocksDB in a temporary directory.
//!
//! Plans are proposed the way the settler proposes them: netted with
//! `tally_core::settlement::net` from the ledger's own aggregates, links,
//! destinations, suspensions and carries, under a named policy, and cut into
//! batches with `cut_batches` under named limits. The writer nets the epoch
//! again and records only an identical proposal, so every payout a scenario
//! needs comes from IOUs and payee destinations, never from a hand-built plan.
//!
//! What these tests prove:
//!
//! - `RecordPlan` refuses an open epoch, epochs out of order and a second
//!   plan, and every proposal that is not exactly what the ledger nets to: a
//!   payout, bill, carry, figure, fee or carries-in changed, added or dropped;
//!   batches that miss, repeat, reorder, re-rail or invent payouts; a policy
//!   or limits other than the ones that give the plan; carries that changed
//!   since it was netted. Each refusal is typed (`PlanMismatch`, or `Invalid`
//!   for what is not a plan question) and writes nothing, not even a journal
//!   entry. A plan paying out of an epoch with no IOUs is refused.
//! - A recorded plan reads back exactly (settlement, payouts and the payout
//!   index, bills, batches, carries, ids derived from the ledger id); a plan
//!   without payouts is settled at once.
//! - Batch transitions follow `BatchState::may_become`; a mined EVM batch
//!   settles its payouts with the transaction hash and adds its gas; a written
//!   file submits its payouts; repeats are no-ops; failures flag the epoch and
//!   a later success clears the flag.
//! - Bank verdicts settle or reject submitted payouts exactly once; a rejection
//!   carries amount plus fee into the first unplanned epoch, and a plan netted
//!   before that carry appeared is refused as stale.
//! - A bill holds its payer's credit until it is paid, and the writer rebuilds
//!   exactly that exposure from disk after a restart.
//! - Everything settlement wrote reads back identically after a restart, and
//!   steps queued into one group commit see each other's writes.
//! - `LinkPayer` checks the payee and persists the link.
//! - After each main scenario `tally_ledger::audit` is clean: it walks the
//!   journal, checks every settlement record against it, nets every recorded
//!   plan again from the IOU log and derives the counters from the records.
//! - A property: whatever sequence of batch updates, bank verdicts and status
//!   changes arrives, `batches_open`, `payouts_open` and `Settled` agree with
//!   the batch and payout records, a refused step changes nothing, and the
//!   audit stays clean.
//!
//! The last section holds regression tests for defects found while writing
//! these (a plan paying out of nothing, a refusal late in `record_plan`,
//! batch states of the wrong rail, a plan racing its epoch's IOUs, link
//! changes moving credit held by open bills), all fixed.
//!
//! No sleeps: commands that must share one group commit are queued while the
//! writer is parked inside its clock, then released together.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use tally_core::settlement::{
    AssetPolicy, BatchLimits, BatchRecord, BatchState, Bill, BillRecord, Carry, CarryReason, EpochSettlement, Flow,
    NettingInput, Party, Payout, PayoutRecord, PayoutState, RailBatch, SettlementPlan, SettlementPolicy,
    SettlementStatus, bill_id, cut_batches, net, payout_id,
};
use tally_core::{Asset, Iou, Outcome, Payee, PayeeStatus, PayoutDestination, Rail, SignedIou};
use tally_ledger::{
    AdminCommand, AdminError, AdminReply, AppendItem, AppendResult, AuditOptions, AuditReport, BalanceFilter, Clock,
    Ledger, LedgerOptions, SettlementCommand, Writer, WriterConfig, WriterHandle,
};

const NOW_S: u64 = 1_800_000_000;
const USD: &str = "USD";
const EUR: &str = "EUR";
/// `bot-a` may owe this much USD; `bot-b` a thousand times more.
const LIMIT_A: u128 = 1_000;
const LIMIT_B: u128 = 1_000_000;
/// Both payers may owe this much EUR (no test is about the EUR limit).
const LIMIT_EUR: u128 = 1_000_000;
const PAYEES: [&str; 5] = ["site-a", "site-b", "site-c", "site-d", "site-e"];
/// The operator's fee in every policy here unless a test says otherwise.
const FEE_BPS: u32 = 100;

// ---------------------------------------------------------------------------
// Fixture: a ledger, a writer, a controllable clock and a gate that parks
// the writer at the start of its next group commit.

#[derive(Default)]
struct Gate {
    armed: AtomicBool,
    parked: AtomicBool,
}

struct Fixture {
    dir: tempfile::TempDir,
    clock_ms: Arc<AtomicU64>,
    gate: Arc<Gate>,
    nonce: AtomicU64,
    ledger: Ledger,
    writer: Writer,
}

fn plain_clock(at: &Arc<AtomicU64>) -> Clock {
    let at = at.clone();
    Arc::new(move || at.load(Ordering::SeqCst))
}

/// The writer's clock: while the gate is armed, the writer waits inside it
/// (after it has drained its queue into a group, before it applies any of it).
fn gated_clock(at: &Arc<AtomicU64>, gate: &Arc<Gate>) -> Clock {
    let (at, gate) = (at.clone(), gate.clone());
    Arc::new(move || {
        if gate.armed.load(Ordering::SeqCst) {
            gate.parked.store(true, Ordering::SeqCst);
            while gate.armed.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
        }
        at.load(Ordering::SeqCst)
    })
}

fn open(dir: &std::path::Path, clock_ms: &Arc<AtomicU64>, gate: &Arc<Gate>) -> (Ledger, Writer) {
    let ledger = Ledger::open(dir, LedgerOptions { clock: plain_clock(clock_ms), ..LedgerOptions::default() }).unwrap();
    let writer =
        Writer::start(ledger.clone(), WriterConfig { clock: gated_clock(clock_ms, gate), ..WriterConfig::default() })
            .unwrap();
    (ledger, writer)
}

fn signer(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A plan with what it was made from, as the settler hands it to the writer.
#[derive(Clone, Debug, PartialEq)]
struct Proposal {
    plan: SettlementPlan,
    batches: Vec<RailBatch>,
    policy: SettlementPolicy,
    limits: BatchLimits,
}

impl Proposal {
    fn command(&self) -> SettlementCommand {
        SettlementCommand::RecordPlan {
            plan: Box::new(self.plan.clone()),
            batches: self.batches.clone(),
            policy: self.policy.clone(),
            limits: self.limits,
        }
    }

    /// The payout to `payee` (each test pays a payee in one asset at most).
    #[track_caller]
    fn payout(&self, payee: &str) -> &Payout {
        let mut found = self.plan.payouts.iter().filter(|p| p.payee == payee);
        let payout = found.next().unwrap_or_else(|| panic!("the plan pays {payee}"));
        assert!(found.next().is_none(), "the plan pays {payee} once");
        payout
    }

    /// The index of the batch that carries `payout_id`.
    #[track_caller]
    fn batch_of(&self, payout_id: &str) -> u32 {
        let batch = self.batches.iter().find(|b| b.payout_ids.iter().any(|id| id == payout_id));
        batch.unwrap_or_else(|| panic!("payout {payout_id} is in a batch")).index
    }

    /// The index of the epoch's only batch on `rail`.
    #[track_caller]
    fn batch_on(&self, rail: Rail) -> u32 {
        let on_rail: Vec<u32> = self.batches.iter().filter(|b| b.rail == rail).map(|b| b.index).collect();
        assert_eq!(on_rail.len(), 1, "one {rail} batch in {:?}", self.batches);
        on_rail[0]
    }

    /// `(rail, payouts)` of each batch, in order: the shape a test relies on.
    fn shape(&self) -> Vec<(Rail, usize)> {
        self.batches.iter().map(|b| (b.rail, b.payout_ids.len())).collect()
    }
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock_ms = Arc::new(AtomicU64::new(NOW_S * 1000));
        let gate = Arc::new(Gate::default());
        let (ledger, writer) = open(dir.path(), &clock_ms, &gate);
        let f = Fixture { dir, clock_ms, gate, nonce: AtomicU64::new(1), ledger, writer };
        f.admin(AdminCommand::UpsertAsset(Asset::new(USD, 6, true).unwrap())).unwrap();
        f.admin(AdminCommand::UpsertAsset(Asset::new(EUR, 2, true).unwrap())).unwrap();
        for (id, seed, limit) in [("bot-a", 1u8, LIMIT_A), ("bot-b", 2, LIMIT_B)] {
            f.admin(AdminCommand::RegisterPayer {
                id: id.into(),
                display_name: id.into(),
                keys: vec![signer(seed).verifying_key().to_bytes()],
                credit_limits: vec![(USD.into(), limit), (EUR.into(), LIMIT_EUR)],
            })
            .unwrap();
        }
        // No destinations yet: each test gives the payees it pays theirs.
        for id in PAYEES {
            f.admin(AdminCommand::RegisterPayee(Payee::new(id, id, ""))).unwrap();
        }
        f
    }

    /// Stops the writer, closes the ledger, opens both again: the writer's
    /// state is rebuilt from disk by `State::load`.
    fn restart(self) -> Fixture {
        let Fixture { dir, clock_ms, gate, nonce, ledger, writer } = self;
        writer.shutdown();
        drop(ledger);
        let (ledger, writer) = open(dir.path(), &clock_ms, &gate);
        Fixture { dir, clock_ms, gate, nonce, ledger, writer }
    }

    fn w(&self) -> WriterHandle {
        self.writer.handle()
    }

    fn admin(&self, command: AdminCommand) -> Result<AdminReply, AdminError> {
        self.w().admin_blocking(test_actor(), command)
    }

    fn settle(&self, command: SettlementCommand) -> Result<AdminReply, AdminError> {
        self.admin(AdminCommand::Settlement(command))
    }

    fn record(&self, proposal: &Proposal) -> Result<AdminReply, AdminError> {
        self.settle(proposal.command())
    }

    fn update(&self, epoch: u64, index: u32, state: BatchState) -> Result<AdminReply, AdminError> {
        self.settle(SettlementCommand::UpdateBatch { epoch, index, state })
    }

    fn bank(&self, payout_id: &str, verdict: Result<&str, &str>) -> Result<AdminReply, AdminError> {
        let verdict = verdict.map(str::to_owned).map_err(str::to_owned);
        self.settle(SettlementCommand::RecordBankStatus { payout_id: payout_id.into(), verdict })
    }

    fn set_status(&self, epoch: u64, status: SettlementStatus) -> Result<AdminReply, AdminError> {
        self.settle(SettlementCommand::SetStatus { epoch, status })
    }

    /// Gives `payee` its destination, in the text form operators enter.
    fn set_payout(&self, payee: &str, destination: &PayoutDestination) {
        let command =
            AdminCommand::SetPayeePayout { payee_id: payee.into(), payout_destination: destination.to_string() };
        assert_eq!(self.admin(command), DONE);
    }

    /// Seals the open epoch; returns the sealed epoch's number.
    fn seal(&self) -> u64 {
        match self.admin(AdminCommand::SealEpoch).unwrap() {
            AdminReply::Sealed { sealed, .. } => sealed.epoch,
            other => panic!("seal answered {other:?}"),
        }
    }

    /// A fresh IOU from payer `seed` (1: bot-a, 2: bot-b) to `payee`.
    fn iou(&self, seed: u8, payee: &str, asset: &str, amount: u64) -> AppendItem {
        let key = signer(seed);
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&self.nonce.fetch_add(1, Ordering::SeqCst).to_be_bytes());
        let iou = Iou {
            network: "tally:test".into(),
            payer_key: key.verifying_key().to_bytes(),
            payee: payee.into(),
            asset: asset.into(),
            amount,
            nonce,
            issued_at_s: NOW_S,
            expires_at_s: NOW_S + 600,
            resource: format!("https://{payee}/{amount}"),
        };
        let signing_bytes = iou.signing_bytes();
        let signature = key.sign(&signing_bytes).to_bytes();
        AppendItem { charge: iou.amount, signed: SignedIou { iou, signature }, evidence: signing_bytes }
    }

    /// One IOU in `asset`, appended and durable.
    fn pay_in(&self, seed: u8, payee: &str, asset: &str, amount: u64) -> AppendResult {
        self.w().append_blocking(vec![self.iou(seed, payee, asset, amount)]).unwrap()[0]
    }

    /// One USD IOU, appended and durable.
    fn pay(&self, seed: u8, payee: &str, amount: u64) -> AppendResult {
        self.pay_in(seed, payee, USD, amount)
    }

    fn advance_ms(&self, ms: u64) -> u64 {
        self.clock_ms.fetch_add(ms, Ordering::SeqCst) + ms
    }

    fn settlement(&self, epoch: u64) -> EpochSettlement {
        self.ledger.settlement(epoch).unwrap().unwrap_or_else(|| panic!("epoch {epoch} has a settlement record"))
    }

    fn payout_state(&self, id: &str) -> PayoutState {
        self.ledger.payout(id).unwrap().unwrap_or_else(|| panic!("payout {id} exists")).state
    }

    /// Everything settlement keeps, and the journal's length: what a refused
    /// step must leave exactly as it was.
    fn snapshot(&self) -> Snapshot {
        snapshot(&self.ledger)
    }

    /// The settlement records without the journal: what an accepted repeat
    /// leaves as it was (it is still journaled: who asked, and when).
    fn records(&self) -> Snapshot {
        self.snapshot().without_journal()
    }

    /// Proposes `epoch` as the settler does (`tally_settler::plan::plan_epoch`):
    /// the ledger's own aggregates of the epoch and carries into it, netted
    /// under `policy` and cut by `limits`. The writer nets the same inputs
    /// again, so this is the proposal it records.
    fn propose(&self, epoch: u64, policy: &SettlementPolicy, limits: BatchLimits) -> Proposal {
        let filter = BalanceFilter { epoch: Some(epoch), ..Default::default() };
        let rows = self.ledger.balances_all(&filter, 10_000).unwrap();
        let flows =
            rows.iter().map(|r| Flow { payer: &r.payer, payee: &r.payee, asset: &r.asset, sum: r.sum, count: r.count });
        let carries = self.ledger.carries_into(epoch).unwrap();
        self.propose_from(epoch, policy, limits, flows, &carries)
    }

    /// Proposes `epoch` as if its IOUs were `flows` and the carries into it
    /// `carries`, with the ledger's own accounts and id: a proposal made
    /// ahead of the ledger (a carry about to land, IOUs about to commit), or
    /// one that is well formed in every way but does not follow from it.
    fn propose_from<'a>(
        &self,
        epoch: u64,
        policy: &SettlementPolicy,
        limits: BatchLimits,
        flows: impl IntoIterator<Item = Flow<'a>>,
        carries: &[Carry],
    ) -> Proposal {
        let links: BTreeMap<String, String> = self
            .ledger
            .payers()
            .unwrap()
            .into_iter()
            .filter_map(|p| p.settles_with.map(|payee| (p.id, payee)))
            .collect();
        let payees = self.ledger.payees().unwrap();
        let held: BTreeSet<String> =
            payees.iter().filter(|p| p.status == PayeeStatus::Suspended).map(|p| p.id.clone()).collect();
        let destinations: BTreeMap<String, PayoutDestination> = payees
            .into_iter()
            .filter_map(|p| PayoutDestination::parse(&p.payout_destination).ok().map(|d| (p.id, d)))
            .collect();
        let ledger_id = self.ledger.ledger_id();
        let input = NettingInput {
            ledger_id,
            epoch,
            policy,
            links: &links,
            destinations: &destinations,
            carries_in: carries,
            held: &held,
        };
        let plan = net(&input, flows).unwrap();
        let batches = cut_batches(&plan, &ledger_id, limits).unwrap();
        Proposal { plan, batches, policy: policy.clone(), limits }
    }

    /// Parks the writer at the start of its next group. Returns the pending
    /// command that made it start that group.
    fn park_writer(&self) -> Pending<Result<AdminReply, AdminError>> {
        self.gate.parked.store(false, Ordering::SeqCst);
        self.gate.armed.store(true, Ordering::SeqCst);
        let w = self.w();
        let first = enqueue(async move {
            w.admin(test_actor(), AdminCommand::UpsertAsset(Asset::new(USD, 6, true).unwrap())).await
        });
        while !self.gate.parked.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        assert_eq!(self.w().queue_depth(), 0, "the parked group took the only queued command");
        first
    }

    /// Lets the parked writer go: everything queued meanwhile forms its next group.
    fn release_writer(&self) {
        self.gate.armed.store(false, Ordering::SeqCst);
    }

    fn enqueue_settle(&self, command: SettlementCommand) -> Pending<Result<AdminReply, AdminError>> {
        let w = self.w();
        enqueue(async move { w.admin(test_actor(), AdminCommand::Settlement(command)).await })
    }

    fn enqueue_admin(&self, command: AdminCommand) -> Pending<Result<AdminReply, AdminError>> {
        let w = self.w();
        enqueue(async move { w.admin(test_actor(), command).await })
    }
}

type Pending<T> = Pin<Box<dyn Future<Output = T>>>;

/// Polls a writer call once: that puts its command in the writer's queue
/// (the queue has room) and leaves it waiting for the reply.
fn enqueue<T>(future: impl Future<Output = T> + 'static) -> Pending<T> {
    let mut future: Pending<T> = Box::pin(future);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(future.as_mut().poll(&mut cx).is_pending(), "nothing is answered while the writer is parked");
    future
}

/// Waits for a queued call's reply.
fn finish<T>(mut future: Pending<T>) -> T {
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        std::thread::yield_now();
    }
}

/// Every settlement record of epochs 0..=5, the planned-through mark and
/// the journal's length.
#[derive(Clone, Debug, PartialEq)]
struct Snapshot {
    planned_through: u64,
    settlements: Vec<EpochSettlement>,
    payouts: Vec<Vec<PayoutRecord>>,
    bills: Vec<Vec<BillRecord>>,
    batches: Vec<Vec<BatchRecord>>,
    carries: Vec<Vec<Carry>>,
    by_id: Vec<Option<PayoutRecord>>,
    /// Every accepted admin command adds an entry; a refused one none.
    journal_seq: u64,
}

impl Snapshot {
    fn without_journal(self) -> Snapshot {
        Snapshot { journal_seq: 0, ..self }
    }
}

fn snapshot(ledger: &Ledger) -> Snapshot {
    let epochs = 0..=5u64;
    let payouts: Vec<Vec<PayoutRecord>> = epochs.clone().map(|e| ledger.payouts(e).unwrap()).collect();
    let by_id = payouts.iter().flatten().map(|p| ledger.payout(&p.payout.id).unwrap()).collect();
    Snapshot {
        planned_through: ledger.planned_through().unwrap(),
        settlements: ledger.settlements().unwrap(),
        payouts,
        bills: epochs.clone().map(|e| ledger.bills(e).unwrap()).collect(),
        batches: epochs.clone().map(|e| ledger.batches(e).unwrap()).collect(),
        carries: epochs.map(|e| ledger.carries_into(e).unwrap()).collect(),
        by_id,
        journal_seq: ledger.journal_head().unwrap().seq,
    }
}

/// `tally ledger verify` over the fixture's ledger: the IOU log and its
/// signatures, the journal, every settlement record against the journal,
/// every recorded plan netted again from the log, counters from records.
#[track_caller]
fn assert_audit_clean(f: &Fixture) -> AuditReport {
    let report = tally_ledger::audit(&f.ledger, AuditOptions { verify_signatures: true }).unwrap();
    assert!(report.is_clean(), "the audit found {} problems: {:#?}", report.problems_total, report.problems);
    report
}

/// What `payer` owes in USD according to the disk: what `State::load` rebuilds.
fn disk_owed(f: &Fixture, payer: &str) -> u128 {
    f.ledger.unsettled_owed(Some(payer)).unwrap().get(&(payer.to_owned(), USD.to_owned())).copied().unwrap_or(0)
}

/// The live writer holds exactly the exposure the disk implies: exactly the
/// room left under the limit is accepted, and not one unit more. (Uses up
/// that room.)
#[track_caller]
fn assert_live_exposure_matches_disk(f: &Fixture, seed: u8, payer: &str, limit: u128) {
    let owed = disk_owed(f, payer);
    assert!(owed <= limit, "{payer} owes {owed} on disk, over its limit of {limit}");
    let room = u64::try_from(limit - owed).unwrap();
    if room > 0 {
        let fill = f.pay(seed, "site-c", room).outcome;
        assert_eq!(
            fill,
            Outcome::Accepted,
            "{payer} owes {owed} of {limit} on disk, yet the writer refused {room} more"
        );
    }
    let over = f.pay(seed, "site-c", 1).outcome;
    assert_eq!(
        over,
        Outcome::CreditLimitExceeded,
        "{payer} owed {owed} of {limit} on disk before {room} more; the writer accepted one unit beyond the limit"
    );
}

// ---------------------------------------------------------------------------
// Policies, destinations, batch states.

/// USD on `usd_rail`, EUR by bank transfer; payouts of at least 50 smallest
/// units, paid exactly (a multiple of 1).
fn policy(fee_bps: u32, usd_rail: Rail) -> SettlementPolicy {
    let asset = |rail| AssetPolicy { rail, payout_min: 50, payable_multiple: 1 };
    SettlementPolicy {
        fee_bps,
        assets: BTreeMap::from([(USD.to_owned(), asset(usd_rail)), (EUR.to_owned(), asset(Rail::Iso20022))]),
    }
}

/// The usual terms: a 1% fee, USD on chain, EUR by bank.
fn terms() -> SettlementPolicy {
    policy(FEE_BPS, Rail::Evm)
}

/// At most `per_tx` payouts per EVM transaction and `per_file` transfers
/// per bank file.
fn limits(per_tx: u32, per_file: u32) -> BatchLimits {
    BatchLimits {
        payouts_per_evm_tx: per_tx,
        transfers_per_iso20022_file: per_file,
        transfers_per_nacha_file: per_file,
    }
}

/// Room for every payout of these tests in one batch per rail.
fn roomy() -> BatchLimits {
    limits(10, 10)
}

/// `(payee, amount, fee)` of every payout, by payee.
fn paid(plan: &SettlementPlan) -> Vec<(&str, u128, u128)> {
    let mut paid: Vec<(&str, u128, u128)> = plan.payouts.iter().map(|p| (p.payee.as_str(), p.amount, p.fee)).collect();
    paid.sort();
    paid
}

fn evm_destination(payee: &str) -> PayoutDestination {
    PayoutDestination::Evm { address: [payee.bytes().last().unwrap_or(1); 20] }
}

fn iban() -> PayoutDestination {
    PayoutDestination::Iban { iban: "DE89370400440532013000".into(), bic: None }
}

fn prepared(n: u8) -> BatchState {
    BatchState::EvmPrepared { nonce: u64::from(n), tx_hash: [n; 32], raw_tx: vec![n; 8], signed_for: String::new() }
}

fn mined(n: u8, gas_used: u64) -> BatchState {
    BatchState::EvmMined { tx_hash: [n; 32], block_number: 1_000 + u64::from(n), gas_used }
}

fn tx_reference(n: u8) -> String {
    format!("0x{}", hex::encode([n; 32]))
}

fn file_prepared(n: u8) -> BatchState {
    BatchState::FilePrepared {
        file_name: format!("pain001-{n}.xml"),
        sha256: [n; 32],
        created_at_ms: NOW_S * 1000 + u64::from(n),
    }
}

fn file_written(n: u8) -> BatchState {
    BatchState::FileWritten {
        file_name: format!("pain001-{n}.xml"),
        sha256: [n; 32],
        created_at_ms: NOW_S * 1000 + u64::from(n),
    }
}

#[track_caller]
fn assert_invalid(result: Result<AdminReply, AdminError>, needle: &str) {
    match result {
        Err(AdminError::Invalid(message)) => {
            assert!(message.contains(needle), "the refusal {message:?} should mention {needle:?}")
        }
        other => panic!("expected Invalid mentioning {needle:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_mismatch(result: Result<AdminReply, AdminError>, needle: &str) {
    match result {
        Err(AdminError::PlanMismatch(message)) => {
            assert!(message.contains(needle), "the refusal {message:?} should mention {needle:?}")
        }
        other => panic!("expected PlanMismatch mentioning {needle:?}, got {other:?}"),
    }
}

const DONE: Result<AdminReply, AdminError> = Ok(AdminReply::Done);
const CHANGED: Result<AdminReply, AdminError> = Ok(AdminReply::BankStatus { changed: true });
const UNCHANGED: Result<AdminReply, AdminError> = Ok(AdminReply::BankStatus { changed: false });

fn planned(epoch: u64) -> Result<AdminReply, AdminError> {
    Ok(AdminReply::Planned { epoch })
}

// ---------------------------------------------------------------------------
// 1. Refusals.

/// What a tampered proposal must be refused with.
enum Refusal {
    Mismatch(&'static str),
    Invalid(&'static str),
}

#[test]
fn refused_plans_write_nothing() {
    let f = Fixture::new();
    for payee in ["site-a", "site-b", "site-d"] {
        f.set_payout(payee, &evm_destination(payee));
    }
    f.set_payout("site-c", &iban());
    // Two USD payouts on chain, one EUR transfer, a USD carry below the minimum.
    assert_eq!(f.pay(1, "site-a", 101).outcome, Outcome::Accepted);
    assert_eq!(f.pay(2, "site-b", 202).outcome, Outcome::Accepted);
    assert_eq!(f.pay_in(2, "site-c", EUR, 707).outcome, Outcome::Accepted);
    assert_eq!(f.pay(2, "site-d", 5).outcome, Outcome::Accepted);
    let good = f.propose(1, &terms(), limits(2, 10));
    assert_eq!(paid(&good.plan), vec![("site-a", 100, 1), ("site-b", 200, 2), ("site-c", 700, 7)]);
    assert_eq!(good.shape(), vec![(Rail::Evm, 2), (Rail::Iso20022, 1)]);
    assert_eq!(good.plan.bills.len(), 3, "bot-a in USD, bot-b in USD and EUR");
    let carried: Vec<(&str, u64, u128)> =
        good.plan.carries_out.iter().map(|c| (c.payee.as_str(), c.epoch_to, c.amount)).collect();
    assert_eq!(carried, vec![("site-d", 2, 5)]);
    assert_eq!(good.plan.figures.iter().map(|fig| fig.asset.as_str()).collect::<Vec<_>>(), [EUR, USD]);

    let nothing_written = |f: &Fixture, before: &Snapshot, case: &str| {
        assert_eq!(f.snapshot(), *before, "{case}: a refused plan wrote something");
        assert!(f.ledger.settlement(1).unwrap().is_none(), "{case}");
        for p in &good.plan.payouts {
            assert!(f.ledger.payout(&p.id).unwrap().is_none(), "{case}: payout index written");
        }
    };

    // Epoch 1 is open.
    let open = f.snapshot();
    assert_invalid(f.record(&good), "not sealed");
    nothing_written(&f, &open, "open epoch");

    assert_eq!(f.seal(), 1);
    assert_eq!(f.seal(), 2);
    let sealed = f.snapshot();
    // Epoch 2 is sealed, but epoch 1 comes first.
    assert_invalid(f.record(&f.propose(2, &terms(), roomy())), "planned in order");
    nothing_written(&f, &sealed, "out of order");
    // Epoch 3 is open.
    assert_invalid(f.record(&f.propose(3, &terms(), roomy())), "not sealed");
    nothing_written(&f, &sealed, "open epoch 3");
    // Netting epoch 1 again now gives the same proposal: nothing moved.
    assert_eq!(f.propose(1, &terms(), limits(2, 10)), good);

    let ledger_id = f.ledger.ledger_id();
    let (site_a, site_c) = (good.payout("site-a").id.clone(), good.payout("site-c").id.clone());
    let position = |p: &Proposal, id: &str| p.plan.payouts.iter().position(|x| x.id == id).unwrap();
    type Tamper = Box<dyn Fn(&mut Proposal)>;
    let cases: Vec<(&str, Tamper, Refusal)> = vec![
        // Batches.
        (
            "a payout in no batch",
            Box::new(|p| drop(p.batches[0].payout_ids.pop())),
            Refusal::Mismatch("batches differ"),
        ),
        (
            "a payout in two batches",
            Box::new(|p| {
                let again = RailBatch {
                    index: 2,
                    payout_ids: vec![p.batches[0].payout_ids[0].clone()],
                    ..p.batches[0].clone()
                };
                p.batches.push(again);
            }),
            Refusal::Mismatch("batches differ"),
        ),
        (
            "a payout twice in one batch",
            Box::new(|p| {
                let id = p.batches[0].payout_ids[0].clone();
                p.batches[0].payout_ids.push(id);
            }),
            Refusal::Mismatch("batches differ"),
        ),
        ("a batch of the wrong rail", Box::new(|p| p.batches[1].rail = Rail::Evm), Refusal::Mismatch("batches differ")),
        (
            "a batch of the wrong asset",
            Box::new(|p| p.batches[1].asset = USD.into()),
            Refusal::Mismatch("batches differ"),
        ),
        ("batches out of order", Box::new(|p| p.batches.swap(0, 1)), Refusal::Mismatch("batches differ")),
        ("a batch index that skips", Box::new(|p| p.batches[1].index = 2), Refusal::Mismatch("batches differ")),
        ("a batch of another epoch", Box::new(|p| p.batches[1].epoch = 2), Refusal::Mismatch("batches differ")),
        (
            "a batch under another id",
            Box::new(|p| p.batches[0].id = "0x00".into()),
            Refusal::Mismatch("batches differ"),
        ),
        (
            "an empty extra batch",
            Box::new(|p| p.batches.push(RailBatch { index: 2, payout_ids: vec![], ..p.batches[0].clone() })),
            Refusal::Mismatch("batches differ"),
        ),
        (
            "a batch naming an unknown payout",
            Box::new(|p| p.batches[1].payout_ids[0] = "Pnot-a-payout".into()),
            Refusal::Mismatch("batches differ"),
        ),
        // Payouts.
        (
            "a payout of another epoch",
            Box::new(move |p| {
                let at = position(p, &site_a);
                p.plan.payouts[at].epoch = 2;
            }),
            Refusal::Mismatch("payouts"),
        ),
        (
            "a changed destination",
            Box::new(|p| p.plan.payouts[0].destination = PayoutDestination::Evm { address: [0xee; 20] }),
            Refusal::Mismatch("payouts"),
        ),
        ("a changed amount", Box::new(|p| p.plan.payouts[0].amount += 1), Refusal::Mismatch("payouts")),
        (
            "a fee moved into the amount",
            Box::new(|p| {
                p.plan.payouts[0].fee -= 1;
                p.plan.payouts[0].amount += 1;
            }),
            Refusal::Mismatch("payouts"),
        ),
        (
            "an extra payout, batched",
            Box::new(move |p| {
                let mut extra = p.plan.payouts[0].clone();
                extra.payee = "site-e".into();
                extra.id = payout_id(&ledger_id, 1, "site-e", &extra.asset, extra.rail);
                p.plan.payouts.push(extra);
                p.plan.payouts.sort_by(|a, b| a.id.cmp(&b.id));
                p.batches = cut_batches(&p.plan, &ledger_id, p.limits).unwrap();
            }),
            Refusal::Mismatch("payouts"),
        ),
        (
            "a payout dropped with its batch",
            Box::new(move |p| {
                let at = position(p, &site_c);
                p.plan.payouts.remove(at);
                p.batches = cut_batches(&p.plan, &ledger_id, p.limits).unwrap();
            }),
            Refusal::Mismatch("payouts"),
        ),
        // Bills, carries, figures.
        ("a bill lowered", Box::new(|p| p.plan.bills[0].amount -= 1), Refusal::Mismatch("bills")),
        ("a bill dropped", Box::new(|p| drop(p.plan.bills.pop())), Refusal::Mismatch("bills")),
        (
            "a carry beyond the next epoch",
            Box::new(|p| p.plan.carries_out[0].epoch_to = 3),
            Refusal::Mismatch("carries out"),
        ),
        (
            "a carry into the same epoch",
            Box::new(|p| p.plan.carries_out[0].epoch_to = 1),
            Refusal::Mismatch("carries out"),
        ),
        ("a carry dropped", Box::new(|p| p.plan.carries_out.clear()), Refusal::Mismatch("carries out")),
        (
            "stale carries in",
            Box::new(|p| p.plan.carries_in = vec!["carry:0:site-a:USD:below-minimum".into()]),
            Refusal::Mismatch("carries into epoch 1 changed"),
        ),
        ("a changed figure", Box::new(|p| p.plan.figures[1].paid += 1), Refusal::Mismatch("figures")),
        // The plan against the terms it names.
        ("a changed fee_bps", Box::new(|p| p.plan.fee_bps = 0), Refusal::Mismatch("fee")),
        ("another fee in the policy", Box::new(|p| p.policy.fee_bps = 0), Refusal::Mismatch("fee")),
        (
            "another minimum in the policy",
            Box::new(|p| p.policy.assets.get_mut(EUR).unwrap().payout_min = 1_000),
            Refusal::Mismatch("figures"),
        ),
        (
            "another rail in the policy",
            Box::new(|p| p.policy.assets.get_mut(USD).unwrap().rail = Rail::Iso20022),
            Refusal::Mismatch("figures"),
        ),
        ("other batch limits", Box::new(|p| p.limits.payouts_per_evm_tx = 1), Refusal::Mismatch("batches differ")),
        // Not a question of the plan.
        ("a policy that does not net", Box::new(|p| p.policy.fee_bps = 10_001), Refusal::Invalid("netting")),
        ("the plan of another epoch", Box::new(|p| p.plan.epoch = 2), Refusal::Invalid("planned in order")),
    ];
    for (case, tamper, refusal) in cases {
        let mut proposal = good.clone();
        tamper(&mut proposal);
        assert_ne!(proposal, good, "{case}: the tamper changed nothing");
        let result = f.record(&proposal);
        match (refusal, result) {
            (Refusal::Mismatch(needle), Err(AdminError::PlanMismatch(message)))
            | (Refusal::Invalid(needle), Err(AdminError::Invalid(message))) => {
                assert!(message.contains(needle), "{case}: {message:?} should mention {needle:?}")
            }
            (_, other) => panic!("{case}: refused with the wrong error, or not at all: {other:?}"),
        }
        nothing_written(&f, &sealed, case);
    }

    // The good plan is recorded; a second plan of the same epoch is not.
    assert_eq!(f.record(&good), planned(1));
    let recorded = f.snapshot();
    assert_eq!(recorded.planned_through, 1);
    assert!(matches!(f.record(&good), Err(AdminError::AlreadyExists(_))));
    let different = f.propose(1, &policy(0, Rail::Evm), roomy());
    assert!(matches!(f.record(&different), Err(AdminError::AlreadyExists(_))));
    assert_eq!(f.snapshot(), recorded, "a refused second plan changed the first");

    // Epoch 2 must consume the carry epoch 1 sent it: a proposal netted
    // before epoch 1 was recorded is stale.
    let stale = f.propose_from(2, &terms(), roomy(), [], &[]);
    assert_mismatch(f.record(&stale), "carries");
    assert_eq!(f.snapshot(), recorded);
    let fresh = f.propose(2, &terms(), roomy());
    assert_eq!(fresh.plan.carries_in, vec!["carry:1:site-d:USD:below-minimum".to_owned()]);
    assert_eq!(fresh.plan.carries_out.iter().map(|c| (c.epoch_to, c.amount)).collect::<Vec<_>>(), [(3, 5)]);
    assert_eq!(f.record(&fresh), planned(2));
    assert_eq!(f.ledger.planned_through().unwrap(), 2);
    // No refusal moved the writer's view of bot-a's credit: it owes its bill.
    assert_eq!(disk_owed(&f, "bot-a"), 101);
    assert_live_exposure_matches_disk(&f, 1, "bot-a", LIMIT_A);
    assert_eq!(assert_audit_clean(&f).plans_renetted, 2);
}

// ---------------------------------------------------------------------------
// 2. A recorded plan.

#[test]
fn a_recorded_plan_reads_back_exactly() {
    let f = Fixture::new();
    f.set_payout("site-a", &evm_destination("site-a"));
    f.set_payout("site-b", &evm_destination("site-b"));
    for (seed, payee, amount) in
        [(1, "site-a", 600), (2, "site-a", 400), (2, "site-b", 80), (2, "site-b", 1), (2, "site-c", 250)]
    {
        assert_eq!(f.pay(seed, payee, amount).outcome, Outcome::Accepted);
    }
    f.seal();
    let proposal = f.propose(1, &terms(), limits(1, 1));
    let plan1 = &proposal.plan;
    // site-a: 1,000 less a 1% fee; site-b: 81 (fee rounds to 0); site-c has
    // no destination, so its 250 carries.
    assert_eq!(paid(plan1), vec![("site-a", 990, 10), ("site-b", 81, 0)]);
    assert_eq!(plan1.bills.len(), 2);
    assert_eq!(plan1.carries_out.len(), 1);
    assert_eq!(proposal.shape(), vec![(Rail::Evm, 1), (Rail::Evm, 1)]);
    // Every id is this ledger's.
    let ledger_id = f.ledger.ledger_id();
    for p in &plan1.payouts {
        assert_eq!(p.id, payout_id(&ledger_id, 1, &p.payee, USD, Rail::Evm));
    }
    for b in &plan1.bills {
        assert_eq!(b.id, bill_id(&ledger_id, 1, &b.party, USD));
    }

    let planned_at = f.advance_ms(1_234);
    assert_eq!(f.record(&proposal), planned(1));

    let expected = EpochSettlement {
        epoch: 1,
        status: SettlementStatus::Planned,
        fee_bps: FEE_BPS,
        planned_at_ms: planned_at,
        updated_at_ms: planned_at,
        figures: plan1.figures.clone(),
        payout_count: 2,
        bill_count: 2,
        batch_count: 2,
        batches_open: 2,
        payouts_open: 2,
        gas_used: 0,
        rejected: vec![],
    };
    assert_eq!(f.settlement(1), expected);
    assert_eq!(f.ledger.settlements().unwrap(), vec![expected]);
    assert_eq!(f.ledger.planned_through().unwrap(), 1);
    let payouts: Vec<PayoutRecord> = plan1
        .payouts
        .iter()
        .map(|p| PayoutRecord { payout: p.clone(), batch_index: proposal.batch_of(&p.id), state: PayoutState::Planned })
        .collect();
    assert_eq!(f.ledger.payouts(1).unwrap(), payouts);
    for record in &payouts {
        assert_eq!(f.ledger.payout(&record.payout.id).unwrap().as_ref(), Some(record));
    }
    assert_eq!(f.ledger.payout("Pnot-a-payout").unwrap(), None);
    assert_eq!(f.ledger.payout(&payout_id(&ledger_id, 2, "site-a", USD, Rail::Evm)).unwrap(), None);
    // Unlinked payers' bills hold their own credit.
    let holders = |party: &Party| match party {
        Party::Payer(payer) => vec![payer.clone()],
        Party::Payee(_) => vec![],
    };
    let bills: Vec<BillRecord> = plan1
        .bills
        .iter()
        .map(|b| BillRecord { bill: b.clone(), paid_at_ms: None, holders: holders(&b.party) })
        .collect();
    assert_eq!(f.ledger.bills(1).unwrap(), bills);
    let amounts: Vec<(Party, u128)> = bills.iter().map(|b| (b.bill.party.clone(), b.bill.amount)).collect();
    assert!(amounts.contains(&(Party::Payer("bot-a".into()), 600)), "{amounts:?}");
    assert!(amounts.contains(&(Party::Payer("bot-b".into()), 731)), "{amounts:?}");
    let batch_records: Vec<BatchRecord> =
        proposal.batches.iter().map(|b| BatchRecord { batch: b.clone(), state: BatchState::Planned }).collect();
    assert_eq!(f.ledger.batches(1).unwrap(), batch_records);
    assert_eq!(f.ledger.carries_into(2).unwrap(), plan1.carries_out);
    assert_eq!(plan1.carries_out[0].amount, 250);
    assert_eq!(plan1.carries_out[0].reason, CarryReason::NoDestination);
    // Nothing leaks into other epochs.
    assert!(f.ledger.payouts(2).unwrap().is_empty() && f.ledger.bills(0).unwrap().is_empty());
    assert!(f.ledger.carries_into(1).unwrap().is_empty() && f.ledger.carries_into(3).unwrap().is_empty());

    // Epoch 2 has no IOUs; its only credit is the carry, still without a
    // destination: no payouts, so the plan is settled as it is recorded.
    f.seal();
    let plan2 = f.propose(2, &terms(), limits(1, 1));
    assert!(plan2.plan.payouts.is_empty() && plan2.plan.bills.is_empty() && plan2.batches.is_empty());
    assert_eq!(plan2.plan.carries_in, vec!["carry:1:site-c:USD:no-destination".to_owned()]);
    assert_eq!(f.record(&plan2), planned(2));
    let record = f.settlement(2);
    assert_eq!(record.status, SettlementStatus::Settled);
    assert_eq!((record.payout_count, record.batch_count, record.batches_open, record.payouts_open), (0, 0, 0, 0));
    assert_eq!(f.ledger.carries_into(3).unwrap(), plan2.plan.carries_out);
    assert_eq!(f.ledger.carries_into(3).unwrap()[0].amount, 250);
    assert_invalid(f.set_status(2, SettlementStatus::Submitting), "settled");
    let report = assert_audit_clean(&f);
    assert_eq!((report.plans_renetted, report.records), (2, 5));
}

// ---------------------------------------------------------------------------
// 3. Batch transitions.

#[test]
fn evm_batches_mine_fail_and_resume() {
    let f = Fixture::new();
    // 100, 200 and 300 on chain after the 1% fee, in a transaction of two
    // and a transaction of one.
    for (payee, amount) in [("site-a", 101), ("site-b", 202), ("site-c", 303)] {
        f.set_payout(payee, &evm_destination(payee));
        assert_eq!(f.pay(2, payee, amount).outcome, Outcome::Accepted);
    }
    f.seal();
    let proposal = f.propose(1, &terms(), limits(2, 10));
    assert_eq!(paid(&proposal.plan), vec![("site-a", 100, 1), ("site-b", 200, 2), ("site-c", 300, 3)]);
    assert_eq!(proposal.shape(), vec![(Rail::Evm, 2), (Rail::Evm, 1)]);
    let pair = proposal.batches[0].payout_ids.clone();
    let lone = proposal.batches[1].payout_ids[0].clone();
    assert_eq!(f.record(&proposal), planned(1));

    // Preparing does not change the epoch's counters or status.
    assert_eq!(f.update(1, 0, prepared(1)), DONE);
    assert_eq!(f.ledger.batches(1).unwrap()[0].state, prepared(1));
    let record = f.settlement(1);
    assert_eq!((record.status, record.batches_open, record.payouts_open), (SettlementStatus::Planned, 2, 3));
    assert_eq!(f.payout_state(&pair[0]), PayoutState::Planned);
    assert_eq!(f.set_status(1, SettlementStatus::Submitting), DONE);
    // Re-signing (a replacement transaction) is allowed; going back is not.
    assert_eq!(f.update(1, 0, prepared(2)), DONE);
    assert_invalid(f.update(1, 0, BatchState::Planned), "cannot go from evm-prepared to planned");
    assert_invalid(f.update(1, 0, file_written(1)), "is a evm batch and cannot become file-written");
    assert_invalid(f.update(1, 0, file_prepared(1)), "cannot become");
    assert_eq!(f.ledger.batches(1).unwrap()[0].state, prepared(2));

    let mined_at = f.advance_ms(500);
    assert_eq!(f.update(1, 0, mined(2, 21_000)), DONE);
    for id in &pair {
        assert_eq!(f.payout_state(id), PayoutState::Settled(tx_reference(2)));
    }
    assert_eq!(f.payout_state(&lone), PayoutState::Planned);
    let record = f.settlement(1);
    assert_eq!(
        (record.status.clone(), record.batches_open, record.payouts_open, record.gas_used, record.updated_at_ms),
        (SettlementStatus::Submitting, 1, 1, 21_000, mined_at)
    );

    // The same update again is a no-op (not even the timestamp moves); a
    // mined batch takes nothing else.
    f.advance_ms(500);
    let before = f.records();
    assert_eq!(f.update(1, 0, mined(2, 21_000)), DONE);
    assert_eq!(f.records(), before);
    let before = f.snapshot();
    for next in [
        BatchState::Planned,
        prepared(3),
        mined(3, 5),
        mined(2, 21_001),
        file_prepared(1),
        file_written(1),
        BatchState::Failed("late".into()),
    ] {
        // File states are refused for their rail, the others for finality.
        let needle = if next.label().starts_with("file") { "cannot become" } else { "cannot go from evm-mined" };
        assert_invalid(f.update(1, 0, next), needle);
        assert_eq!(f.snapshot(), before);
    }

    // Planned to Planned is the identical update: a no-op.
    assert_eq!(f.update(1, 1, BatchState::Planned), DONE);
    assert_eq!(f.records(), before.without_journal());
    assert_eq!(f.update(1, 1, prepared(4)), DONE);
    assert_eq!(f.update(1, 1, BatchState::Failed("rpc timeout".into())), DONE);
    let record = f.settlement(1);
    assert_eq!(record.status, SettlementStatus::NeedsAttention("batch 1: rpc timeout".into()));
    assert_eq!((record.batches_open, record.payouts_open), (1, 1));
    assert_eq!(f.update(1, 1, BatchState::Failed("rpc down".into())), DONE);
    assert_eq!(f.settlement(1).status, SettlementStatus::NeedsAttention("batch 1: rpc down".into()));
    // Failed never goes back to Planned.
    assert_invalid(f.update(1, 1, BatchState::Planned), "cannot go from failed to planned");
    // A long reason is bounded.
    assert_eq!(f.update(1, 1, BatchState::Failed("x".repeat(10_000))), DONE);
    match f.settlement(1).status {
        SettlementStatus::NeedsAttention(reason) => assert_eq!(reason.len(), 256),
        other => panic!("{other:?}"),
    }

    // The resume finds the transaction mined: straight from Failed.
    assert_eq!(f.set_status(1, SettlementStatus::Submitting), DONE);
    assert_eq!(f.update(1, 1, mined(4, 30_000)), DONE);
    assert_eq!(f.payout_state(&lone), PayoutState::Settled(tx_reference(4)));
    let record = f.settlement(1);
    assert_eq!(
        (record.status.clone(), record.batches_open, record.payouts_open, record.gas_used),
        (SettlementStatus::Settled, 0, 0, 51_000)
    );
    assert_invalid(f.set_status(1, SettlementStatus::Submitting), "settled");
    assert_invalid(f.set_status(1, SettlementStatus::NeedsAttention("x".into())), "settled");

    // Unknown batches and epochs.
    assert!(matches!(f.update(1, 2, prepared(1)), Err(AdminError::NotFound(_))));
    assert!(matches!(f.update(9, 0, prepared(1)), Err(AdminError::NotFound(_))));
    assert!(matches!(f.set_status(9, SettlementStatus::Submitting), Err(AdminError::NotFound(_))));
    assert_audit_clean(&f);
}

#[test]
fn written_files_submit_their_payouts_and_bank_verdicts_settle_them() {
    let f = Fixture::new();
    // 1,000, 2,000 and 3,000 EUR cents by bank after the 1% fee; 500 USD on chain.
    for (payee, amount) in [("site-a", 1_010), ("site-b", 2_020), ("site-c", 3_030)] {
        f.set_payout(payee, &iban());
        assert_eq!(f.pay_in(2, payee, EUR, amount).outcome, Outcome::Accepted);
    }
    f.set_payout("site-d", &evm_destination("site-d"));
    assert_eq!(f.pay(2, "site-d", 505).outcome, Outcome::Accepted);
    f.seal();
    let proposal = f.propose(1, &terms(), roomy());
    assert_eq!(
        paid(&proposal.plan),
        vec![("site-a", 1_000, 10), ("site-b", 2_000, 20), ("site-c", 3_000, 30), ("site-d", 500, 5)]
    );
    let (file, tx) = (proposal.batch_on(Rail::Iso20022), proposal.batch_on(Rail::Evm));
    let (e1, e2, e3, u1) = (
        proposal.payout("site-a").clone(),
        proposal.payout("site-b").clone(),
        proposal.payout("site-c").clone(),
        proposal.payout("site-d").clone(),
    );
    assert_eq!(proposal.batches[file as usize].payout_ids.len(), 3);
    assert_eq!(f.record(&proposal), planned(1));

    // No verdict before the payout is submitted, none for unknown payouts.
    assert_invalid(f.bank(&e1.id, Ok("MSG-1")), "planned");
    assert_invalid(f.bank(&e1.id, Err("AC04")), "planned");
    assert!(matches!(f.bank("Pnope", Ok("MSG-1")), Err(AdminError::NotFound(_))));

    assert_eq!(f.update(1, file, file_prepared(1)), DONE);
    assert_invalid(f.update(1, file, mined(1, 1)), "is a iso20022 batch and cannot become evm-mined");
    assert_invalid(f.update(1, file, prepared(1)), "is a iso20022 batch and cannot become evm-prepared");
    assert_invalid(f.update(1, file, BatchState::Planned), "cannot go from file-prepared to planned");
    assert_invalid(f.bank(&e1.id, Ok("MSG-1")), "planned");
    assert_eq!(f.update(1, file, BatchState::Failed("outbox not writable".into())), DONE);
    let flagged = SettlementStatus::NeedsAttention(format!("batch {file}: outbox not writable"));
    assert_eq!(f.settlement(1).status, flagged);
    assert_eq!(f.update(1, file, file_prepared(1)), DONE);
    assert_eq!(f.update(1, file, file_written(1)), DONE);
    for p in [&e1, &e2, &e3] {
        assert_eq!(f.payout_state(&p.id), PayoutState::Submitted);
    }
    let record = f.settlement(1);
    // Submitted is not final; the EVM batch is still open, so the flag stays.
    assert_eq!((record.batches_open, record.payouts_open), (1, 4));
    assert_eq!(record.status, flagged);
    assert_invalid(f.update(1, file, file_written(2)), "cannot go from file-written");
    assert_invalid(f.update(1, file, BatchState::Failed("x".into())), "cannot go from file-written");

    // The last batch done with bank payouts outstanding: Submitted.
    assert_eq!(f.update(1, tx, mined(7, 40_000)), DONE);
    let record = f.settlement(1);
    assert_eq!((record.status.clone(), record.batches_open, record.payouts_open), (SettlementStatus::Submitted, 0, 3));
    // Submitted → Submitting by the driver is tolerated but re-derived.
    assert_eq!(f.set_status(1, SettlementStatus::Submitting), DONE);
    assert_eq!(f.settlement(1).status, SettlementStatus::Submitted);

    // Accepted.
    assert_eq!(f.bank(&e1.id, Ok("MSG-1")), CHANGED);
    assert_eq!(f.payout_state(&e1.id), PayoutState::Settled("MSG-1".into()));
    assert_eq!(f.settlement(1).payouts_open, 2);
    let before = f.records();
    assert_eq!(f.bank(&e1.id, Ok("MSG-1")), UNCHANGED);
    assert_eq!(f.records(), before);
    let before = f.snapshot();
    assert_invalid(f.bank(&e1.id, Ok("MSG-2")), "settled");
    assert_eq!(f.snapshot(), before);

    // Rejected: the payout and its fee carry into the first unplanned epoch.
    assert_eq!(f.bank(&e2.id, Err("AC04 account closed")), CHANGED);
    assert_eq!(f.payout_state(&e2.id), PayoutState::Rejected("AC04 account closed".into()));
    let rejected_carry = Carry {
        epoch_to: 2,
        payee: "site-b".into(),
        asset: EUR.into(),
        amount: 2_020,
        reason: CarryReason::Rejected("AC04 account closed".into()),
        source: format!("rejected:{}", e2.id),
    };
    assert_eq!(f.ledger.carries_into(2).unwrap(), vec![rejected_carry.clone()]);
    let record = f.settlement(1);
    assert_eq!((record.status.clone(), record.payouts_open), (SettlementStatus::Submitted, 1));
    assert_eq!(record.rejected, vec![(EUR.to_owned(), 2_020)]);
    let before = f.records();
    assert_eq!(f.bank(&e2.id, Err("AC04 account closed")), UNCHANGED);
    assert_eq!(f.records(), before, "a repeated verdict changed something");
    let before = f.snapshot();
    assert_invalid(f.bank(&e2.id, Err("AM05 duplicate")), "rejected");
    assert_invalid(f.bank(&e2.id, Ok("MSG-1")), "rejected");
    assert_eq!(f.snapshot(), before, "a conflicting verdict changed something");

    // The EVM payout was settled by its transaction: only that verdict is
    // the same, and no bank can reject it.
    let before = f.records();
    assert_eq!(f.bank(&u1.id, Ok(&tx_reference(7))), UNCHANGED);
    assert_eq!(f.records(), before);
    let before = f.snapshot();
    assert_invalid(f.bank(&u1.id, Ok("MSG-1")), "settled");
    assert_invalid(f.bank(&u1.id, Err("AC04 account closed")), "settled");
    assert_eq!(f.snapshot(), before);

    // The last verdict settles the epoch; rejections add up per asset.
    assert_eq!(f.bank(&e3.id, Err("AM05 duplicate")), CHANGED);
    let record = f.settlement(1);
    assert_eq!((record.status.clone(), record.payouts_open, record.batches_open), (SettlementStatus::Settled, 0, 0));
    assert_eq!(record.rejected, vec![(EUR.to_owned(), 5_050)]);
    assert_eq!(f.ledger.carries_into(2).unwrap().len(), 2);
    assert_eq!(f.bank(&e3.id, Err("AM05 duplicate")), UNCHANGED);
    assert_eq!(f.settlement(1), record);

    // A bank may accept early and reject later: the rejection wins, once.
    assert_eq!(f.bank(&e1.id, Err("AC04 account closed")), CHANGED);
    assert_eq!(f.payout_state(&e1.id), PayoutState::Rejected("AC04 account closed".into()));
    let record = f.settlement(1);
    assert_eq!((record.status.clone(), record.payouts_open), (SettlementStatus::Settled, 0));
    assert_eq!(record.rejected, vec![(EUR.to_owned(), 6_060)]);
    let carries = f.ledger.carries_into(2).unwrap();
    assert_eq!(carries.len(), 3);
    assert!(carries.iter().any(|c| c.source == format!("rejected:{}", e1.id) && c.amount == 1_010));
    let before = f.records();
    assert_eq!(f.bank(&e1.id, Err("AC04 account closed")), UNCHANGED);
    assert_eq!(f.records(), before);
    let before = f.snapshot();
    assert_invalid(f.bank(&e1.id, Ok("MSG-1")), "rejected");
    assert_eq!(f.snapshot(), before);
    assert_audit_clean(&f);
}

// ---------------------------------------------------------------------------
// 4. Rejections carry forward; stale plans are refused.

#[test]
fn a_rejection_makes_a_plan_built_before_it_stale() {
    let f = Fixture::new();
    // Both currencies by bank: site-a in USD, site-b in EUR.
    let bank = policy(FEE_BPS, Rail::Iso20022);
    f.set_payout("site-a", &iban());
    f.set_payout("site-b", &iban());
    assert_eq!(f.pay(2, "site-a", 1_000).outcome, Outcome::Accepted);
    assert_eq!(f.pay_in(2, "site-b", EUR, 500).outcome, Outcome::Accepted);
    f.seal();
    let plan1 = f.propose(1, &bank, roomy());
    assert_eq!(paid(&plan1.plan), vec![("site-a", 990, 10), ("site-b", 495, 5)]);
    let (first, euro) = (plan1.payout("site-a").clone(), plan1.payout("site-b").clone());
    assert_eq!(f.record(&plan1), planned(1));
    assert_eq!(f.update(1, plan1.batch_of(&first.id), file_prepared(1)), DONE);
    assert_eq!(f.update(1, plan1.batch_of(&first.id), file_written(1)), DONE);
    assert_eq!(f.update(1, plan1.batch_of(&euro.id), file_prepared(2)), DONE);
    assert_eq!(f.update(1, plan1.batch_of(&euro.id), file_written(2)), DONE);

    assert_eq!(f.pay(2, "site-a", 400).outcome, Outcome::Accepted);
    f.seal();
    // The settler reads epoch 2's carries (none yet) and nets...
    let stale = f.propose(2, &bank, roomy());
    assert!(stale.plan.carries_in.is_empty());
    // ...while the bank's rejections of epoch 1's payouts land in epoch 2.
    assert_eq!(f.bank(&first.id, Err("AC01 incorrect account number")), CHANGED);
    assert_eq!(f.bank(&euro.id, Err("AC04 account closed")), CHANGED);
    let carries = f.ledger.carries_into(2).unwrap();
    let carried: Vec<(&str, u128, String)> =
        carries.iter().map(|c| (c.asset.as_str(), c.amount, c.source.clone())).collect();
    assert!(carried.contains(&(USD, 1_000, format!("rejected:{}", first.id))), "{carried:?}");
    assert!(carried.contains(&(EUR, 500, format!("rejected:{}", euro.id))), "{carried:?}");
    assert_eq!(carried.len(), 2);
    // Totalled per asset and kept sorted by asset, though USD was rejected first.
    let record = f.settlement(1);
    assert_eq!(
        (record.status, record.rejected),
        (SettlementStatus::Settled, vec![(EUR.into(), 500), (USD.into(), 1_000)])
    );
    let before = f.snapshot();
    assert_mismatch(f.record(&stale), "carries");
    assert_eq!(f.snapshot(), before);
    assert!(f.ledger.settlement(2).unwrap().is_none());

    // Planned again, the carries are paid with epoch 2's own credit.
    let fresh = f.propose(2, &bank, roomy());
    let mut sources = vec![format!("rejected:{}", first.id), format!("rejected:{}", euro.id)];
    sources.sort();
    assert_eq!(fresh.plan.carries_in, sources);
    assert_eq!(f.record(&fresh), planned(2));
    let second = fresh.payout("site-a").clone();
    assert_eq!(f.ledger.payout(&second.id).unwrap().unwrap().payout, second);
    assert_eq!((second.net_credit, second.fee, second.amount), (1_400, 14, 1_386));
    let euro2 = fresh.payout("site-b").clone();
    assert_eq!((euro2.net_credit, euro2.amount), (500, 495));

    // A rejection now lands in epoch 3, the first unplanned one.
    assert_eq!(f.update(2, fresh.batch_of(&second.id), file_prepared(3)), DONE);
    assert_eq!(f.update(2, fresh.batch_of(&second.id), file_written(3)), DONE);
    assert_eq!(f.update(2, fresh.batch_of(&euro2.id), file_prepared(4)), DONE);
    assert_eq!(f.update(2, fresh.batch_of(&euro2.id), file_written(4)), DONE);
    assert_eq!(f.bank(&second.id, Err("AC04 account closed")), CHANGED);
    assert_eq!(f.bank(&euro2.id, Ok("MSG-2")), CHANGED);
    assert_eq!(f.ledger.carries_into(2).unwrap().len(), 2);
    let into_three = f.ledger.carries_into(3).unwrap();
    assert_eq!(into_three.len(), 1);
    assert_eq!((into_three[0].epoch_to, into_three[0].amount), (3, 1_400));
    assert_eq!(f.settlement(2).status, SettlementStatus::Settled);
    assert_audit_clean(&f);
}

/// The writer nets with the accounts as they are when the plan arrives. A
/// proposal netted before a payee was suspended, or before a payee's
/// destination changed, pays what the ledger no longer would: refused, and
/// nothing written. Netted again it is recorded; the suspended payee's
/// credit is held as a carry, and the audit, netting from the journal's
/// accounts at that point, agrees.
#[test]
fn a_plan_netted_before_an_account_changed_is_refused() {
    let f = Fixture::new();
    for (payee, amount) in [("site-a", 101), ("site-b", 202)] {
        f.set_payout(payee, &evm_destination(payee));
        assert_eq!(f.pay(2, payee, amount).outcome, Outcome::Accepted);
    }
    f.seal();
    let unsuspended = f.propose(1, &terms(), roomy());
    assert_eq!(paid(&unsuspended.plan), vec![("site-a", 100, 1), ("site-b", 200, 2)]);
    let suspend = AdminCommand::SetPayeeStatus { payee_id: "site-b".into(), status: PayeeStatus::Suspended };
    assert_eq!(f.admin(suspend), DONE);
    let before = f.snapshot();
    assert_mismatch(f.record(&unsuspended), "figures");
    assert_eq!(f.snapshot(), before);

    let held = f.propose(1, &terms(), roomy());
    assert_eq!(paid(&held.plan), vec![("site-a", 100, 1)]);
    let carried: Vec<(&str, u128, &CarryReason)> =
        held.plan.carries_out.iter().map(|c| (c.payee.as_str(), c.amount, &c.reason)).collect();
    assert_eq!(carried, vec![("site-b", 202, &CarryReason::PayeeSuspended)]);
    // site-a moves its payout address: the proposal still pays the old one.
    let moved = PayoutDestination::Evm { address: [0x77; 20] };
    f.set_payout("site-a", &moved);
    let before = f.snapshot();
    assert_mismatch(f.record(&held), "payouts");
    assert_eq!(f.snapshot(), before);

    let fresh = f.propose(1, &terms(), roomy());
    assert_eq!(fresh.payout("site-a").destination, moved);
    assert_eq!(f.record(&fresh), planned(1));
    assert_eq!(f.ledger.carries_into(2).unwrap(), held.plan.carries_out);
    assert_audit_clean(&f);
}

// ---------------------------------------------------------------------------
// 5. Credit exposure.

#[test]
fn a_bill_holds_credit_until_paid_across_restarts() {
    let f = Fixture::new();
    let owed = |f: &Fixture| disk_owed(f, "bot-a");
    f.set_payout("site-a", &evm_destination("site-a"));
    assert_eq!(f.pay(1, "site-a", 900).outcome, Outcome::Accepted);
    assert_eq!(f.pay(1, "site-a", 101).outcome, Outcome::CreditLimitExceeded);
    f.seal();
    // Sealed but unplanned: epoch 1's IOUs still count.
    assert_eq!(f.pay(1, "site-a", 101).outcome, Outcome::CreditLimitExceeded);

    let plan1 = f.propose(1, &terms(), roomy());
    let party = Party::Payer("bot-a".into());
    let bill = Bill {
        id: bill_id(&f.ledger.ledger_id(), 1, &party, USD),
        epoch: 1,
        party,
        asset: USD.into(),
        amount: 900,
        iou_count: 1,
    };
    assert_eq!(plan1.plan.bills, vec![bill]);
    assert_eq!(f.record(&plan1), planned(1));
    // Planned: the IOUs no longer count, the bill does.
    assert_eq!(f.pay(1, "site-a", 101).outcome, Outcome::CreditLimitExceeded);
    let at_limit = f.pay(1, "site-a", 100);
    assert_eq!((at_limit.outcome, at_limit.epoch), (Outcome::Accepted, 2));
    assert_eq!(f.pay(1, "site-a", 1).outcome, Outcome::CreditLimitExceeded);
    assert_eq!(owed(&f), LIMIT_A);

    // The writer rebuilds the same exposure from disk.
    let f = f.restart();
    assert_eq!(f.pay(1, "site-a", 1).outcome, Outcome::CreditLimitExceeded);
    assert_eq!(owed(&f), LIMIT_A);

    // Collecting the bill releases its credit.
    let bill = plan1.plan.bills[0].id.clone();
    let paid_at = f.advance_ms(2_000);
    assert_eq!(f.settle(SettlementCommand::MarkBillPaid { epoch: 1, bill_id: bill.clone() }), DONE);
    assert_eq!(f.ledger.bills(1).unwrap()[0].paid_at_ms, Some(paid_at));
    assert_eq!(owed(&f), 100);
    assert_eq!(f.pay(1, "site-a", 900).outcome, Outcome::Accepted);
    assert_eq!(f.pay(1, "site-a", 1).outcome, Outcome::CreditLimitExceeded);
    // Paying twice changes nothing (not even the date); unknown bills are not found.
    f.advance_ms(2_000);
    assert_eq!(f.settle(SettlementCommand::MarkBillPaid { epoch: 1, bill_id: bill.clone() }), DONE);
    assert_eq!(f.ledger.bills(1).unwrap()[0].paid_at_ms, Some(paid_at));
    assert_eq!(f.pay(1, "site-a", 1).outcome, Outcome::CreditLimitExceeded);
    assert!(matches!(
        f.settle(SettlementCommand::MarkBillPaid { epoch: 1, bill_id: "Bnope".into() }),
        Err(AdminError::NotFound(_))
    ));
    assert!(matches!(
        f.settle(SettlementCommand::MarkBillPaid { epoch: 2, bill_id: bill }),
        Err(AdminError::NotFound(_))
    ));

    let f = f.restart();
    assert_eq!(owed(&f), LIMIT_A);
    assert_eq!(f.pay(1, "site-a", 1).outcome, Outcome::CreditLimitExceeded);
    // And the other payer was never touched by bot-a's bill.
    assert_eq!(f.pay(2, "site-a", 1).outcome, Outcome::Accepted);
}

// ---------------------------------------------------------------------------
// 6. Everything survives a restart.

/// Two epochs in every state at once: mined, written, rejected, accepted,
/// failed, a paid bill, carries in both directions. Returns epoch 1's
/// proposal.
fn busy_ledger(f: &Fixture) -> Proposal {
    f.set_payout("site-a", &iban());
    f.set_payout("site-b", &iban());
    f.set_payout("site-c", &evm_destination("site-c"));
    f.set_payout("site-d", &evm_destination("site-d"));
    assert_eq!(f.pay_in(1, "site-a", EUR, 303).outcome, Outcome::Accepted);
    assert_eq!(f.pay_in(2, "site-b", EUR, 700).outcome, Outcome::Accepted);
    assert_eq!(f.pay(1, "site-c", 300).outcome, Outcome::Accepted);
    // Below the minimum: carried into epoch 2, and from there into epoch 3.
    assert_eq!(f.pay(2, "site-d", 30).outcome, Outcome::Accepted);
    f.seal();
    let plan1 = f.propose(1, &terms(), roomy());
    assert_eq!(paid(&plan1.plan), vec![("site-a", 300, 3), ("site-b", 693, 7), ("site-c", 297, 3)]);
    let (e1, e2) = (plan1.payout("site-a").id.clone(), plan1.payout("site-b").id.clone());
    let bot_b_eur = bill_id(&f.ledger.ledger_id(), 1, &Party::Payer("bot-b".into()), EUR);
    assert_eq!(f.record(&plan1), planned(1));
    assert_eq!(f.update(1, plan1.batch_on(Rail::Iso20022), file_prepared(1)), DONE);
    assert_eq!(f.update(1, plan1.batch_on(Rail::Iso20022), file_written(1)), DONE);
    assert_eq!(f.update(1, plan1.batch_on(Rail::Evm), prepared(3)), DONE);
    assert_eq!(f.update(1, plan1.batch_on(Rail::Evm), mined(3, 55_555)), DONE);
    assert_eq!(f.bank(&e1, Ok("MSG-9")), CHANGED);
    assert_eq!(f.bank(&e2, Err("AC04 account closed")), CHANGED);
    assert_eq!(f.settle(SettlementCommand::MarkBillPaid { epoch: 1, bill_id: bot_b_eur }), DONE);
    // The account is closed: site-b's rejected credit waits for a new one.
    assert_eq!(
        f.admin(AdminCommand::SetPayeePayout { payee_id: "site-b".into(), payout_destination: String::new() }),
        DONE
    );

    assert_eq!(f.pay(1, "site-c", 200).outcome, Outcome::Accepted);
    f.seal();
    let plan2 = f.propose(2, &terms(), roomy());
    assert_eq!(paid(&plan2.plan), vec![("site-c", 198, 2)]);
    let mut sources = vec!["carry:1:site-d:USD:below-minimum".to_owned(), format!("rejected:{e2}")];
    sources.sort();
    assert_eq!(plan2.plan.carries_in, sources);
    let out: Vec<(&str, &CarryReason)> = plan2.plan.carries_out.iter().map(|c| (c.payee.as_str(), &c.reason)).collect();
    assert_eq!(out, vec![("site-b", &CarryReason::NoDestination), ("site-d", &CarryReason::BelowMinimum)]);
    assert_eq!(f.record(&plan2), planned(2));
    assert_eq!(f.update(2, 0, BatchState::Failed("nonce too low".into())), DONE);
    plan1
}

#[test]
fn settlement_state_reads_back_identically_after_a_restart() {
    let f = Fixture::new();
    let plan1 = busy_ledger(&f);
    let before = f.snapshot();
    assert_eq!(before.planned_through, 2);
    assert_eq!(before.settlements.len(), 2);
    assert_eq!(before.settlements[0].status, SettlementStatus::Settled);
    assert!(matches!(before.settlements[1].status, SettlementStatus::NeedsAttention(_)));
    let owed_before = f.ledger.unsettled_owed(None).unwrap();
    let journal_before = f.ledger.journal_head().unwrap();

    let f = f.restart();
    assert_eq!(f.snapshot(), before);
    assert_eq!(f.ledger.unsettled_owed(None).unwrap(), owed_before);
    assert_eq!(f.ledger.journal_head().unwrap(), journal_before);
    assert_eq!(assert_audit_clean(&f).plans_renetted, 2);
    // A read-only view of the same directory agrees.
    {
        let ro = Ledger::open(f.dir.path(), LedgerOptions { read_only: true, ..LedgerOptions::default() }).unwrap();
        assert_eq!(snapshot(&ro), before);
    }

    // The restarted writer knows where settlement stands.
    let accepted = before.payouts[1].iter().find(|p| p.state == PayoutState::Settled("MSG-9".into())).unwrap();
    assert_eq!(f.bank(&accepted.payout.id, Ok("MSG-9")), UNCHANGED);
    assert_eq!(f.update(1, plan1.batch_on(Rail::Evm), mined(3, 55_555)), DONE);
    assert!(matches!(f.record(&plan1), Err(AdminError::AlreadyExists(_))));
    assert!(matches!(f.record(&f.propose(2, &terms(), roomy())), Err(AdminError::AlreadyExists(_))));
    assert_invalid(f.record(&f.propose(3, &terms(), roomy())), "not sealed");
    assert_eq!(f.records(), before.clone().without_journal());
    // bot-a owes its open epoch-1 and epoch-2 USD bills: 500 of its 1,000.
    assert_eq!(f.pay(1, "site-a", 501).outcome, Outcome::CreditLimitExceeded);
    assert_eq!(f.pay(1, "site-a", 500).outcome, Outcome::Accepted);
    // And it carries on where it stopped.
    assert_eq!(f.update(2, 0, mined(8, 1)), DONE);
    assert_eq!(f.settlement(2).status, SettlementStatus::Settled);
    assert_audit_clean(&f);
}

// ---------------------------------------------------------------------------
// 7. Linking payers.

#[test]
fn link_payer_checks_and_persists() {
    let f = Fixture::new();
    let link = |payer: &str, payee: Option<&str>| AdminCommand::LinkPayer {
        payer_id: payer.into(),
        payee_id: payee.map(str::to_owned),
    };
    assert!(matches!(f.admin(link("bot-a", Some("nobody"))), Err(AdminError::NotFound(_))));
    assert!(matches!(f.admin(link("ghost", Some("site-a"))), Err(AdminError::NotFound(_))));
    assert_eq!(f.ledger.payer("bot-a").unwrap().unwrap().settles_with, None);
    assert_eq!(f.admin(link("bot-a", Some("site-a"))), DONE);
    assert_eq!(f.ledger.payer("bot-a").unwrap().unwrap().settles_with.as_deref(), Some("site-a"));

    let f = f.restart();
    let payer = f.ledger.payer("bot-a").unwrap().unwrap();
    assert_eq!(payer.settles_with.as_deref(), Some("site-a"));
    assert_eq!(payer.credit_limit(USD), LIMIT_A, "linking keeps the rest of the payer");
    assert_eq!(f.ledger.payer("bot-b").unwrap().unwrap().settles_with, None);
    // A linked payer nets under its payee: no bill for bot-a when site-a
    // earns more than bot-a spends.
    assert_eq!(f.pay(2, "site-a", 500).outcome, Outcome::Accepted);
    assert_eq!(f.pay(1, "site-b", 200).outcome, Outcome::Accepted);
    f.seal();
    let netted = f.propose(1, &terms(), roomy());
    let parties: Vec<&Party> = netted.plan.bills.iter().map(|b| &b.party).collect();
    assert_eq!(parties, vec![&Party::Payer("bot-b".into())]);
    // The writer nets with the same link.
    assert_eq!(f.record(&netted), planned(1));

    assert_eq!(f.admin(link("bot-a", None)), DONE);
    assert_eq!(f.ledger.payer("bot-a").unwrap().unwrap().settles_with, None);
    let f = f.restart();
    assert_eq!(f.ledger.payer("bot-a").unwrap().unwrap().settles_with, None);
    assert_audit_clean(&f);
}

// ---------------------------------------------------------------------------
// Group commits: steps queued together see each other.

#[test]
fn steps_in_one_group_commit_see_each_other() {
    let f = Fixture::new();
    f.set_payout("site-a", &iban());
    f.set_payout("site-b", &evm_destination("site-b"));
    assert_eq!(f.pay_in(1, "site-a", EUR, 303).outcome, Outcome::Accepted);
    assert_eq!(f.pay(2, "site-b", 505).outcome, Outcome::Accepted);
    // Proposed ahead: epoch 1's IOUs are durable, its seal is still to come.
    let plan1 = f.propose(1, &terms(), roomy());
    assert_eq!(paid(&plan1.plan), vec![("site-a", 300, 3), ("site-b", 500, 5)]);
    let e1 = plan1.payout("site-a").clone();
    let u1 = plan1.payout("site-b").clone();
    // Epoch 2's plan nets the carry e1's rejection will leave; the stale one does not.
    let rejection = Carry {
        epoch_to: 2,
        payee: "site-a".into(),
        asset: EUR.into(),
        amount: 303,
        reason: CarryReason::Rejected("AC04".into()),
        source: format!("rejected:{}", e1.id),
    };
    let plan2 = f.propose_from(2, &terms(), roomy(), [], &[rejection]);
    let stale2 = f.propose_from(2, &terms(), roomy(), [], &[]);
    let p2 = plan2.payout("site-a").clone();
    assert_eq!((p2.amount, p2.fee), (300, 3));

    let first = f.park_writer();
    let queued = vec![
        f.enqueue_admin(AdminCommand::SealEpoch),
        f.enqueue_settle(plan1.command()),
        f.enqueue_settle(SettlementCommand::UpdateBatch {
            epoch: 1,
            index: plan1.batch_on(Rail::Iso20022),
            state: file_prepared(1),
        }),
        f.enqueue_settle(SettlementCommand::UpdateBatch {
            epoch: 1,
            index: plan1.batch_on(Rail::Iso20022),
            state: file_written(1),
        }),
        f.enqueue_settle(SettlementCommand::RecordBankStatus { payout_id: e1.id.clone(), verdict: Err("AC04".into()) }),
        f.enqueue_settle(SettlementCommand::UpdateBatch {
            epoch: 1,
            index: plan1.batch_on(Rail::Evm),
            state: mined(5, 777),
        }),
        f.enqueue_admin(AdminCommand::SealEpoch),
        f.enqueue_settle(stale2.command()),
        f.enqueue_settle(plan2.command()),
        f.enqueue_settle(SettlementCommand::UpdateBatch { epoch: 2, index: 0, state: file_prepared(2) }),
        f.enqueue_settle(SettlementCommand::UpdateBatch { epoch: 2, index: 0, state: file_written(2) }),
        f.enqueue_settle(SettlementCommand::RecordBankStatus { payout_id: p2.id.clone(), verdict: Ok("MSG".into()) }),
    ];
    assert_eq!(f.w().queue_depth(), queued.len());
    f.release_writer();
    assert_eq!(finish(first), DONE);
    let replies: Vec<Result<AdminReply, AdminError>> = queued.into_iter().map(finish).collect();
    assert!(matches!(replies[0], Ok(AdminReply::Sealed { .. })), "{:?}", replies[0]);
    assert_eq!(replies[1], planned(1));
    assert_eq!((&replies[2], &replies[3]), (&DONE, &DONE), "prepared, then written as prepared");
    assert_eq!(replies[4], CHANGED);
    assert_eq!(replies[5], DONE);
    assert!(matches!(replies[6], Ok(AdminReply::Sealed { .. })), "{:?}", replies[6]);
    assert_mismatch(replies[7].clone(), "carries");
    assert_eq!(replies[8], planned(2));
    assert_eq!((&replies[9], &replies[10]), (&DONE, &DONE));
    assert_eq!(replies[11], CHANGED);

    let check = |f: &Fixture| {
        let one = f.settlement(1);
        assert_eq!((one.status, one.gas_used, one.rejected), (SettlementStatus::Settled, 777, vec![(EUR.into(), 303)]));
        assert_eq!(f.settlement(2).status, SettlementStatus::Settled);
        assert_eq!(f.payout_state(&e1.id), PayoutState::Rejected("AC04".into()));
        assert_eq!(f.payout_state(&u1.id), PayoutState::Settled(tx_reference(5)));
        assert_eq!(f.payout_state(&p2.id), PayoutState::Settled("MSG".into()));
        assert_eq!(f.ledger.carries_into(2).unwrap().len(), 1);
        assert_eq!(f.ledger.planned_through().unwrap(), 2);
    };
    check(&f);
    let f = f.restart();
    check(&f);
    assert_eq!(assert_audit_clean(&f).plans_renetted, 2);
}

// ---------------------------------------------------------------------------
// Regressions: defects found in review, each fixed; the tests keep them fixed.

/// The defect re-netting fixes: the writer recorded any well-formed plan,
/// so a plan could pay any payee out of an epoch nobody paid in. Epoch 1
/// here has no IOUs. Refused, each writing nothing: a bare payout of 600
/// (what a hand-built plan looks like); the same payout exactly as netting
/// would give it had bot-b paid site-a 606 (bill, figures that conserve,
/// batches cut by the limits it names); and one funded by a carry that does
/// not exist. The epoch's real plan, empty, is then recorded.
#[test]
fn a_plan_paying_out_of_an_epoch_without_ious_is_refused() {
    let f = Fixture::new();
    f.set_payout("site-a", &evm_destination("site-a"));
    f.seal();
    let real = f.propose(1, &terms(), roomy());
    assert!(real.plan.payouts.is_empty() && real.plan.bills.is_empty() && real.plan.figures.is_empty());
    // There is no epoch 0 to pay out of (epochs count from 1).
    let mut zero = real.clone();
    zero.plan.epoch = 0;
    assert_invalid(f.record(&zero), "no epoch 0");

    let billed = f.propose_from(
        1,
        &terms(),
        roomy(),
        [Flow { payer: "bot-b", payee: "site-a", asset: USD, sum: 606, count: 1 }],
        &[],
    );
    assert_eq!(paid(&billed.plan), vec![("site-a", 600, 6)]);
    let mut bare = real.clone();
    bare.plan.payouts = billed.plan.payouts.clone();
    bare.batches = billed.batches.clone();
    let phantom = Carry {
        epoch_to: 1,
        payee: "site-a".into(),
        asset: USD.into(),
        amount: 606,
        reason: CarryReason::BelowMinimum,
        source: "carry:0:site-a:USD:below-minimum".into(),
    };
    let carried = f.propose_from(1, &terms(), roomy(), [], &[phantom]);
    assert_eq!(paid(&carried.plan), vec![("site-a", 600, 6)]);

    let before = f.snapshot();
    for (case, forged, needle) in
        [("bare", &bare, "payouts"), ("billed", &billed, "figures"), ("carried", &carried, "carries")]
    {
        assert_mismatch(f.record(forged), needle);
        assert_eq!(f.snapshot(), before, "{case}: a refused plan wrote something");
        assert_eq!(f.ledger.payout(&forged.plan.payouts[0].id).unwrap(), None, "{case}");
    }
    assert_eq!(disk_owed(&f, "bot-b"), 0, "no bill reached bot-b");
    assert_eq!(f.record(&real), planned(1));
    assert_eq!(f.settlement(1).status, SettlementStatus::Settled);
    assert!(f.ledger.payouts(1).unwrap().is_empty() && f.ledger.bills(1).unwrap().is_empty());
    assert_audit_clean(&f);
}

/// A refusal found at `record_plan`'s last check still writes nothing. The
/// proposal's plan is exactly the ledger's, its batches are cut from that
/// plan, but by other limits than the ones it names: refused only when the
/// batches are compared, after every other check. Nothing of the plan may
/// reach RocksDB, and the writer's state (planned-through, exposure) must
/// not move. (A regression test: a late refusal, then for bills that
/// overflowed a payer's exposure, once committed the staged plan anyway.
/// Bills are now netted again, so they can no longer be made to overflow.)
#[test]
fn a_plan_refused_at_its_last_check_writes_nothing() {
    let f = Fixture::new();
    for (payee, amount) in [("site-a", 101), ("site-b", 202)] {
        f.set_payout(payee, &evm_destination(payee));
        assert_eq!(f.pay(2, payee, amount).outcome, Outcome::Accepted);
    }
    f.seal();
    let good = f.propose(1, &terms(), limits(2, 10));
    assert_eq!(good.shape(), vec![(Rail::Evm, 2)]);
    let mut late = good.clone();
    late.batches = cut_batches(&good.plan, &f.ledger.ledger_id(), limits(1, 10)).unwrap();
    assert_eq!(late.shape(), vec![(Rail::Evm, 1), (Rail::Evm, 1)]);
    let before = f.snapshot();
    assert_mismatch(f.record(&late), "batches differ");
    assert_eq!(f.ledger.settlement(1).unwrap(), None, "a refused plan left its epoch record behind");
    for p in &good.plan.payouts {
        assert_eq!(f.ledger.payout(&p.id).unwrap(), None, "a refused plan left its payout behind");
    }
    assert_eq!(f.snapshot(), before);
    // The writer still considers epoch 1 unplanned, and bot-b's IOUs unsettled.
    assert_eq!(disk_owed(&f, "bot-b"), 303);
    assert_eq!(f.record(&good), planned(1));
    assert_eq!(disk_owed(&f, "bot-b"), 303);
    assert_live_exposure_matches_disk(&f, 2, "bot-b", LIMIT_B);
}

/// A batch's states belong to its rail: an EVM batch never becomes a bank
/// file and a bank file is never mined (otherwise a "written" EVM batch
/// would mark on-chain payouts submitted, for a bank report to settle).
#[test]
fn a_batch_only_takes_states_of_its_own_rail() {
    let f = Fixture::new();
    f.set_payout("site-a", &evm_destination("site-a"));
    f.set_payout("site-b", &iban());
    assert_eq!(f.pay(2, "site-a", 101).outcome, Outcome::Accepted);
    assert_eq!(f.pay_in(2, "site-b", EUR, 101).outcome, Outcome::Accepted);
    f.seal();
    let proposal = f.propose(1, &terms(), roomy());
    assert_eq!(f.record(&proposal), planned(1));
    let (evm, file) = (proposal.batch_on(Rail::Evm), proposal.batch_on(Rail::Iso20022));
    let before = f.snapshot();
    for (index, state) in [(evm, file_prepared(1)), (evm, file_written(1)), (file, prepared(1)), (file, mined(1, 1))] {
        let label = state.label();
        assert!(
            matches!(f.update(1, index, state), Err(AdminError::Invalid(_))),
            "batch {index} ({:?}) accepted {label}",
            proposal.batches[index as usize].rail
        );
        assert_eq!(f.snapshot(), before);
    }
}

/// Appends, a seal and the plan of the sealed epoch queued into one group:
/// the plan was netted without this group's IOUs, and `record_plan` nets and
/// releases credit from aggregates on disk, so the writer refuses such a
/// plan ("not yet durable"); planned again after the group commits (it is
/// then exactly the ledger's plan), credit is released exactly once, live
/// and after restart.
#[test]
fn a_plan_in_the_group_of_its_epochs_ious_releases_their_credit() {
    let f = Fixture::new();
    f.set_payout("site-a", &evm_destination("site-a"));
    // What the settler would propose once bot-a's 500 to site-a is durable.
    let flow = Flow { payer: "bot-a", payee: "site-a", asset: USD, sum: 500, count: 1 };
    let plan1 = f.propose_from(1, &terms(), roomy(), [flow], &[]);
    assert_eq!(plan1.plan.bills.iter().map(|b| b.amount).collect::<Vec<_>>(), [500]);
    let item = f.iou(1, "site-a", USD, 500);
    let first = f.park_writer();
    let w = f.w();
    let append = enqueue(async move { w.append(vec![item]).await });
    let seal = f.enqueue_admin(AdminCommand::SealEpoch);
    let record = f.enqueue_settle(plan1.command());
    assert_eq!(f.w().queue_depth(), 3);
    f.release_writer();
    assert_eq!(finish(first), DONE);
    let appended = finish(append).unwrap();
    assert_eq!((appended[0].outcome, appended[0].epoch), (Outcome::Accepted, 1));
    assert!(matches!(finish(seal), Ok(AdminReply::Sealed { .. })));
    assert_mismatch(finish(record), "not yet durable");
    assert_eq!(f.ledger.settlement(1).unwrap(), None);
    assert_eq!(f.propose(1, &terms(), roomy()), plan1, "the proposal made ahead is the ledger's plan");
    assert_eq!(f.record(&plan1), planned(1));

    // On disk bot-a owes its bill, 500 of its 1,000.
    let owed = f.ledger.unsettled_owed(Some("bot-a")).unwrap();
    assert_eq!(owed.get(&("bot-a".to_owned(), USD.to_owned())), Some(&500));
    // The live writer must agree with the disk: another 500 fits.
    let live = f.pay(1, "site-a", 500).outcome;
    if live != Outcome::Accepted {
        let f = f.restart();
        let reloaded = f.pay(1, "site-a", 500).outcome;
        panic!(
            "the live writer answered {live:?} to an IOU within bot-a's limit (500 owed of 1,000 on disk); \
             a restarted writer, reading the same disk, answers {reloaded:?}"
        );
    }
    let f = f.restart();
    assert_eq!(
        f.ledger.unsettled_owed(Some("bot-a")).unwrap().get(&("bot-a".to_owned(), USD.to_owned())),
        Some(&1_000)
    );
    assert_eq!(f.pay(1, "site-a", 1).outcome, Outcome::CreditLimitExceeded);
    assert_audit_clean(&f);
}

/// A bill of a linked account holds the credit of the payers linked to it
/// when the plan is recorded (`BillRecord::holders`). Unlinking a payer
/// afterwards moves no credit: the live writer and a restarted one agree.
#[test]
fn unlinking_a_payer_with_an_open_bill_keeps_live_exposure_equal_to_disk() {
    let f = Fixture::new();
    let link = |payer: &str, payee: Option<&str>| AdminCommand::LinkPayer {
        payer_id: payer.into(),
        payee_id: payee.map(str::to_owned),
    };
    f.set_payout("site-b", &evm_destination("site-b"));
    assert_eq!(f.admin(link("bot-a", Some("site-a"))), DONE);
    assert_eq!(f.pay(1, "site-b", 300).outcome, Outcome::Accepted);
    f.seal();
    let plan1 = f.propose(1, &terms(), roomy());
    let parties: Vec<&Party> = plan1.plan.bills.iter().map(|b| &b.party).collect();
    assert_eq!(parties, vec![&Party::Payee("site-a".into())]);
    assert_eq!(f.record(&plan1), planned(1));
    assert_eq!(disk_owed(&f, "bot-a"), 300, "the linked account's bill holds bot-a's credit");

    assert_eq!(f.admin(link("bot-a", None)), DONE);
    assert_live_exposure_matches_disk(&f, 1, "bot-a", LIMIT_A);
}

/// The other direction (invariant 5): bot-a is linked to an account with an
/// open bill it never held. Bills record their holders when planned, so
/// collecting the bill releases only the payers that held it, and bot-a can
/// never owe more than its limit.
#[test]
fn linking_a_payer_to_an_account_with_an_open_bill_never_exceeds_its_limit() {
    let f = Fixture::new();
    let link =
        |payer: &str, payee: &str| AdminCommand::LinkPayer { payer_id: payer.into(), payee_id: Some(payee.into()) };
    f.set_payout("site-b", &evm_destination("site-b"));
    assert_eq!(f.admin(link("bot-b", "site-a")), DONE);
    assert_eq!(f.pay(2, "site-b", 300).outcome, Outcome::Accepted);
    f.seal();
    let plan1 = f.propose(1, &terms(), roomy());
    assert_eq!(plan1.plan.bills.len(), 1);
    assert_eq!(plan1.plan.bills[0].party, Party::Payee("site-a".into()));
    assert_eq!(f.record(&plan1), planned(1));

    assert_eq!(f.pay(1, "site-c", 800).outcome, Outcome::Accepted);
    assert_eq!(f.admin(link("bot-a", "site-a")), DONE);
    let bill = plan1.plan.bills[0].id.clone();
    assert_eq!(f.settle(SettlementCommand::MarkBillPaid { epoch: 1, bill_id: bill }), DONE);
    assert_eq!(disk_owed(&f, "bot-a"), 800);

    let outcome = f.pay(1, "site-c", 500).outcome;
    let owed = disk_owed(&f, "bot-a");
    assert!(
        outcome != Outcome::Accepted || owed <= LIMIT_A,
        "the writer accepted 500 more from bot-a: it now owes {owed} against a limit of {LIMIT_A}"
    );
    assert_live_exposure_matches_disk(&f, 1, "bot-a", LIMIT_A);
}

// ---------------------------------------------------------------------------
// 8. Property: the counters always agree with the records.

#[derive(Clone, Debug)]
enum Step {
    /// (batch index 0..=3, where 3 does not exist; state kind; variant)
    Batch(u32, u8, u8),
    /// (payout 0..=5, where 5 does not exist; accepted; variant)
    Bank(usize, bool, u8),
    Status(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u32..4, 0u8..6, 0u8..2).prop_map(|(i, k, v)| Step::Batch(i, k, v)),
        3 => (0usize..6, any::<bool>(), 0u8..2).prop_map(|(p, ok, v)| Step::Bank(p, ok, v)),
        1 => any::<bool>().prop_map(Step::Status),
    ]
}

fn batch_state(kind: u8, variant: u8) -> BatchState {
    match kind {
        0 => BatchState::Planned,
        1 => prepared(variant + 1),
        2 => mined(variant + 1, 1_000 * u64::from(variant + 1)),
        3 => file_prepared(variant + 1),
        4 => file_written(variant + 1),
        _ => BatchState::Failed(format!("failure {variant}")),
    }
}

/// Epoch 1 planned with five payouts in three batches: USD on chain in a
/// transaction of two and one of one, EUR by bank in one file of two.
fn three_batches(f: &Fixture) -> Proposal {
    for payee in ["site-a", "site-b", "site-e"] {
        f.set_payout(payee, &evm_destination(payee));
    }
    for payee in ["site-c", "site-d"] {
        f.set_payout(payee, &iban());
    }
    for (payee, asset, amount) in
        [("site-a", USD, 101), ("site-b", USD, 202), ("site-e", USD, 505), ("site-c", EUR, 303), ("site-d", EUR, 404)]
    {
        assert_eq!(f.pay_in(2, payee, asset, amount).outcome, Outcome::Accepted);
    }
    f.seal();
    let proposal = f.propose(1, &terms(), limits(2, 2));
    assert_eq!(proposal.shape(), vec![(Rail::Evm, 2), (Rail::Evm, 1), (Rail::Iso20022, 2)]);
    assert_eq!(f.record(&proposal), planned(1));
    proposal
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn counters_agree_with_batch_and_payout_records(steps in proptest::collection::vec(step(), 1..48)) {
        let f = Fixture::new();
        let proposal = three_batches(&f);
        let payouts: Vec<String> = proposal.plan.payouts.iter().map(|p| p.id.clone()).collect();
        let mut gas: u64 = 0;
        for step in steps {
            f.advance_ms(1);
            let before = f.snapshot();
            let old_batches: HashMap<u32, BatchState> =
                f.ledger.batches(1).unwrap().into_iter().map(|b| (b.batch.index, b.state)).collect();
            let result = match &step {
                Step::Batch(index, kind, variant) => f.update(1, *index, batch_state(*kind, *variant)),
                Step::Bank(index, ok, variant) => {
                    let id = payouts.get(*index).map_or("Punknown", String::as_str);
                    let text = format!("verdict {variant}");
                    f.bank(id, if *ok { Ok(&text) } else { Err(&text) })
                }
                Step::Status(submitting) => f.set_status(
                    1,
                    if *submitting { SettlementStatus::Submitting } else { SettlementStatus::NeedsAttention("op".into()) },
                ),
            };
            if result.is_err() {
                prop_assert_eq!(&f.snapshot(), &before, "refused {:?} ({:?}) changed something", step, result);
            } else if let Step::Batch(index, kind, variant) = &step
                && *kind == 2
                && !old_batches[index].is_done()
            {
                gas += 1_000 * u64::from(*variant + 1);
            }

            let record = f.settlement(1);
            let batch_records = f.ledger.batches(1).unwrap();
            let payout_records = f.ledger.payouts(1).unwrap();
            let batches_open = batch_records.iter().filter(|b| !b.state.is_done()).count() as u64;
            let payouts_open = payout_records.iter().filter(|p| !p.state.is_final()).count() as u64;
            prop_assert_eq!(record.batches_open, batches_open, "after {:?}", step);
            prop_assert_eq!(record.payouts_open, payouts_open, "after {:?}", step);
            prop_assert_eq!(
                record.status == SettlementStatus::Settled,
                batches_open == 0 && payouts_open == 0,
                "status {:?} with {} batches and {} payouts open after {:?}", record.status, batches_open, payouts_open, step
            );
            if batches_open == 0 && payouts_open > 0 {
                prop_assert_eq!(&record.status, &SettlementStatus::Submitted);
            }
            prop_assert_eq!(record.gas_used, gas);
            // A payout moves only with its batch: planned until the batch is done.
            for p in &payout_records {
                let state = &batch_records[p.batch_index as usize].state;
                prop_assert_eq!(state.is_done(), p.state != PayoutState::Planned, "{:?} in a {} batch", p.state, state.label());
            }
        }
        // The journal replays to exactly these records, the plan nets again,
        // and the audit derives the same counters.
        let report = tally_ledger::audit(&f.ledger, AuditOptions { verify_signatures: true }).unwrap();
        prop_assert!(report.is_clean(), "the audit found: {:#?}", report.problems);
    }
}

/// Who the tests' admin commands are recorded as.
fn test_actor() -> tally_core::Actor {
    tally_core::Actor::admin_token("test")
}
