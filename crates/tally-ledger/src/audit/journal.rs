//! The control-plane audit: the journal, and everything it materialises.
//!
//! The accounts, epochs, settlement and meta column families are a view of
//! the journal (`crate::journal`). This audit checks, in one pass over the
//! journal and one over each of those column families:
//!
//! 1. **The chain.** Sequence numbers run from 1 without a gap; each entry's
//!    `prev_hash` is its predecessor's hash and its own hash recomputes; times
//!    and log heads never go back, and no entry names a log record that does
//!    not exist. The first entry is the ledger's genesis (its id matching
//!    `meta`) or the migration that adopted an older format.
//! 2. **The view.** Every effect is replayed in order; the result must equal
//!    what is stored, key by key: a rewritten payout destination, plan
//!    figure, bank state, credit limit or payee account is reported, and so
//!    is a record no journaled change wrote, or one that vanished.
//! 3. **Seals against the log.** A seal's sealed epoch ends at the log head
//!    the seal was decided at.
//! 4. **Plans against the log.** Every plan is netted again — the same pure
//!    `tally_core::settlement::net`, under the policy its journal entry names,
//!    over the epoch's aggregates *recomputed from the log* by the IOU audit,
//!    with the accounts and carries the view held when it was planned — and
//!    cut into batches again; the stored plan must be exactly that.
//! 5. **Payouts against plans.** A payout or batch record may change state,
//!    never its amount, payee, destination or membership.
//! 6. **Counters against records.** Each epoch's `batches_open`,
//!    `payouts_open`, gas used and rejected totals must equal what its batch
//!    and payout records imply, and its status what the counters imply.
//!
//! Plans made before a format-1 ledger was migrated recorded no policy: they
//! are checked against the migration snapshot (5, 6) but cannot be netted
//! again, which the report notes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rocksdb::IteratorMode;
use tally_core::settlement::{
    BatchRecord, BillRecord, Carry, EpochSettlement, Flow, NettingInput, Payout, PayoutRecord, RailBatch,
    SettlementPlan, SettlementStatus, cut_batches, derive_counters, net, plan_difference, terminal_status,
};
use tally_core::{GENESIS_HASH, Payee, PayeeStatus, Payer, PayoutDestination};

use super::{AggregateKey, AuditReport};
use crate::LedgerError;
use crate::command::Notice;
use crate::journal::{Action, EffectCf, decode_entry};
use crate::layout::*;
use crate::settlement::{batch_key, bill_key, carry_key, epoch_key, payout_key};
use crate::store::Ledger;

/// The replayed view: column family and key → value.
type View = BTreeMap<(EffectCf, Vec<u8>), Vec<u8>>;

/// A plan whose effects are being replayed: checked once its last entry is applied.
struct PendingPlan {
    epoch: u64,
    /// What netting the log gives; `None` when netting itself failed (reported).
    expected: Option<(SettlementPlan, Vec<RailBatch>)>,
}

pub(super) fn audit_journal(
    ledger: &Ledger,
    computed: &BTreeMap<AggregateKey, AggregateValue>,
    signatures_verified: bool,
    report: &mut AuditReport,
) -> Result<(), LedgerError> {
    let (log_head, _) = ledger.head()?;
    let mut view: View = BTreeMap::new();
    let mut expected_seq = 1u64;
    let mut prev_hash = GENESIS_HASH;
    let (mut last_at_ms, mut last_log_head) = (0u64, 0u64);
    let mut pending: Option<PendingPlan> = None;
    // The payout and batch records as first written: later writes may change only their state.
    let mut first_payouts: HashMap<Vec<u8>, Payout> = HashMap::new();
    let mut first_batches: HashMap<Vec<u8>, RailBatch> = HashMap::new();
    let mut migrated_at_log_head: Option<u64> = None;
    let mut unverified_from: Option<u64> = None;

    for item in ledger.db.iterator_cf(ledger.cf(CF_JOURNAL), IteratorMode::Start) {
        let (key, value) = item?;
        let (entry, computed_hash) = match decode_entry(&key, &value) {
            Ok(decoded) => decoded,
            Err(error) => {
                report.problem(error.to_string());
                continue;
            }
        };
        report.journal_entries += 1;
        let seq = entry.seq;
        if seq != expected_seq {
            report.problem(format!("journal sequence jumps from {} to {seq}", expected_seq - 1));
        }
        expected_seq = seq + 1;
        if entry.prev_hash != prev_hash {
            report.problem(format!("journal entry {seq}: prev_hash does not match the previous entry's hash"));
        }
        if computed_hash != entry.hash {
            report.problem(format!("journal entry {seq}: content does not match its hash (tampered)"));
        }
        prev_hash = entry.hash;
        if entry.at_ms < last_at_ms || entry.log_head < last_log_head || entry.log_head > log_head {
            report.problem(format!("journal entry {seq}: its time or log head goes back, or names a missing record"));
        }
        (last_at_ms, last_log_head) = (entry.at_ms, entry.log_head);

        // A plan's entries end where an entry that does not continue it begins.
        if !matches!(entry.body.action, Action::Continued)
            && let Some(plan) = pending.take()
        {
            check_plan(&view, &plan, report);
            report.plans_renetted += 1;
        }
        match &entry.body.action {
            Action::Genesis { ledger_id, format } => {
                if seq != 1 || *ledger_id != ledger.ledger_id() || *format != ledger.meta().format {
                    report.problem(format!("journal entry {seq}: a genesis that is not this ledger's first entry"));
                }
            }
            Action::Migrated { .. } => {
                if seq != 1 || ledger.meta().migrated_from.is_none() {
                    report.problem(format!("journal entry {seq}: a migration that is not this ledger's first change"));
                }
                migrated_at_log_head = Some(entry.log_head);
            }
            Action::Continued => {
                if seq == 1 {
                    report.problem("journal entry 1 continues nothing".into());
                }
            }
            Action::RecordPlan { epoch, policy, limits } => {
                let expected = expected_plan(ledger, &view, computed, *epoch, policy)
                    .and_then(|plan| {
                        let batches = cut_batches(&plan, &ledger.ledger_id(), *limits).map_err(|e| e.to_string())?;
                        Ok((plan, batches))
                    })
                    .map_err(|error| {
                        report.problem(format!("journal entry {seq}: epoch {epoch} does not net: {error}"))
                    })
                    .ok();
                pending = Some(PendingPlan { epoch: *epoch, expected });
            }
            Action::Notice(Notice::EngineStarted { verify_signatures, .. }) => {
                match (verify_signatures, unverified_from) {
                    (false, None) => unverified_from = Some(entry.log_head + 1),
                    (true, Some(from)) => {
                        report.notices.push(unverified_notice(from, Some(entry.log_head), signatures_verified));
                        unverified_from = None;
                    }
                    _ => {}
                }
            }
            Action::Admin(_) | Action::OpenedFirstEpoch => {}
        }
        if seq == 1 && !matches!(entry.body.action, Action::Genesis { .. } | Action::Migrated { .. }) {
            report.problem("the journal does not begin with the ledger's genesis or migration".into());
        }

        for effect in entry.body.effects {
            if effect.cf == EffectCf::Epochs
                && let (Action::Admin(crate::command::AdminCommand::SealEpoch), Some(value)) =
                    (&entry.body.action, &effect.value)
                && let Ok(record) = decode_bincode::<EpochRecord>("epoch record", value)
                && record.status == EpochStatus::Sealed
                && record.seq_last != Some(entry.log_head)
            {
                report.problem(format!(
                    "journal entry {seq}: epoch {} was sealed at log record {} but says it ends at {:?}",
                    record.epoch, entry.log_head, record.seq_last
                ));
            }
            if effect.cf == EffectCf::Settlement
                && let Some(value) = &effect.value
            {
                remember_first(&effect.key, value, &mut first_payouts, &mut first_batches, seq, report);
            }
            let slot = (effect.cf, effect.key);
            match effect.value {
                Some(value) => {
                    view.insert(slot, value);
                }
                None => {
                    view.remove(&slot);
                }
            }
        }
    }
    if let Some(plan) = pending.take() {
        check_plan(&view, &plan, report);
        report.plans_renetted += 1;
    }
    if report.journal_entries == 0 {
        report.problem("the journal is empty: every ledger begins with its genesis or migration".into());
    }
    if let Some(from) = unverified_from {
        report.notices.push(unverified_notice(from, None, signatures_verified));
    }
    if let Some(at) = migrated_at_log_head {
        let migrated_at_ms = ledger.meta().created_at_ms;
        let premigration_plans = ledger.settlements()?.iter().filter(|s| s.planned_at_ms <= migrated_at_ms).count();
        report.notices.push(format!(
            "migrated from ledger format 1 at log record {at}; {premigration_plans} settlement plans made before \
             then recorded no policy and are checked against the migration snapshot, not netted again"
        ));
    }

    compare_view(ledger, &view, report)?;
    check_settlement_records(&view, &first_payouts, &first_batches, report);
    Ok(())
}

fn unverified_notice(from: u64, to: Option<u64>, signatures_verified: bool) -> String {
    let range = match to {
        Some(to) => format!("{from}..={to}"),
        None => format!("{from} on"),
    };
    let this_audit = if signatures_verified {
        "this audit re-verified their signatures"
    } else {
        "this audit did not verify signatures either (--skip-signatures): run it without that flag"
    };
    format!(
        "log records {range} were accepted without signature verification \
         (--unsafe-skip-signature-verification); {this_audit}"
    )
}

/// Records the payout and batch records' first contents; reports a later write that changed more than the state.
fn remember_first(
    key: &[u8],
    value: &[u8],
    first_payouts: &mut HashMap<Vec<u8>, Payout>,
    first_batches: &mut HashMap<Vec<u8>, RailBatch>,
    seq: u64,
    report: &mut AuditReport,
) {
    match key.first() {
        Some(b'P') => {
            let Ok(record) = decode_bincode::<PayoutRecord>("payout", value) else {
                report.problem(format!("journal entry {seq}: a payout record that does not decode"));
                return;
            };
            match first_payouts.get(key) {
                None => {
                    first_payouts.insert(key.to_vec(), record.payout);
                }
                Some(first) if *first != record.payout => report.problem(format!(
                    "journal entry {seq}: payout {} was rewritten beyond its state (was {first:?})",
                    record.payout.id
                )),
                Some(_) => {}
            }
        }
        Some(b'R') => {
            let Ok(record) = decode_bincode::<BatchRecord>("batch", value) else {
                report.problem(format!("journal entry {seq}: a batch record that does not decode"));
                return;
            };
            match first_batches.get(key) {
                None => {
                    first_batches.insert(key.to_vec(), record.batch);
                }
                Some(first) if *first != record.batch => report.problem(format!(
                    "journal entry {seq}: batch {} of epoch {} was rewritten beyond its state",
                    record.batch.index, record.batch.epoch
                )),
                Some(_) => {}
            }
        }
        _ => {}
    }
}

fn view_records<T: serde::de::DeserializeOwned>(view: &View, cf: EffectCf, prefix: &[u8]) -> Vec<Result<T, String>> {
    view.range((cf, prefix.to_vec())..)
        .take_while(|((c, key), _)| *c == cf && key.starts_with(prefix))
        .map(|((_, key), value)| {
            decode_bincode::<T>("record", value).map_err(|e| format!("{}: {e}", String::from_utf8_lossy(key)))
        })
        .collect()
}

/// Netting `epoch` from the log's aggregates and the view as it stands (before the plan's effects).
fn expected_plan(
    ledger: &Ledger,
    view: &View,
    computed: &BTreeMap<AggregateKey, AggregateValue>,
    epoch: u64,
    policy: &tally_core::settlement::SettlementPolicy,
) -> Result<SettlementPlan, String> {
    let payers: Vec<Payer> =
        view_records(view, EffectCf::Accounts, ACCOUNT_PAYER_PREFIX).into_iter().collect::<Result<_, _>>()?;
    let payees: Vec<Payee> =
        view_records(view, EffectCf::Accounts, ACCOUNT_PAYEE_PREFIX).into_iter().collect::<Result<_, _>>()?;
    let carries: Vec<Carry> =
        view_records(view, EffectCf::Settlement, &crate::settlement::epoch_prefixed(b'C', epoch, &[]))
            .into_iter()
            .collect::<Result<_, _>>()?;
    let links: BTreeMap<String, String> =
        payers.iter().filter_map(|p| p.settles_with.clone().map(|payee| (p.id.clone(), payee))).collect();
    let destinations: BTreeMap<String, PayoutDestination> = payees
        .iter()
        .filter_map(|p| PayoutDestination::parse(&p.payout_destination).ok().map(|d| (p.id.clone(), d)))
        .collect();
    let held: BTreeSet<String> =
        payees.iter().filter(|p| p.status == PayeeStatus::Suspended).map(|p| p.id.clone()).collect();
    let flows = computed
        .range((epoch, String::new(), String::new(), String::new())..)
        .take_while(|((e, ..), _)| *e == epoch)
        .map(|((_, payer, payee, asset), value)| Flow { payer, payee, asset, sum: value.sum, count: value.count });
    let input = NettingInput {
        ledger_id: ledger.ledger_id(),
        epoch,
        policy,
        links: &links,
        destinations: &destinations,
        carries_in: &carries,
        held: &held,
    };
    net(&input, flows).map_err(|e| e.to_string())
}

/// After a plan's effects: the stored plan must be exactly what the log nets to.
fn check_plan(view: &View, plan: &PendingPlan, report: &mut AuditReport) {
    let Some((expected, batches)) = &plan.expected else { return };
    let epoch = plan.epoch;
    let get = |key: Vec<u8>| view.get(&(EffectCf::Settlement, key));
    let Some(Ok(record)) = get(epoch_key(epoch)).map(|v| decode_bincode::<EpochSettlement>("epoch settlement", v))
    else {
        report.problem(format!("epoch {epoch}: its plan's settlement record is missing or damaged"));
        return;
    };
    let mut stored = SettlementPlan {
        epoch,
        fee_bps: record.fee_bps,
        payouts: Vec::new(),
        bills: Vec::new(),
        carries_out: Vec::new(),
        carries_in: expected.carries_in.clone(),
        figures: record.figures.clone(),
    };
    for payout in
        view_records::<PayoutRecord>(view, EffectCf::Settlement, &crate::settlement::epoch_prefixed(b'P', epoch, &[]))
    {
        match payout {
            Ok(payout) => stored.payouts.push(payout.payout),
            Err(error) => report.problem(format!("epoch {epoch}: {error}")),
        }
    }
    for bill in
        view_records::<BillRecord>(view, EffectCf::Settlement, &crate::settlement::epoch_prefixed(b'B', epoch, &[]))
    {
        match bill {
            Ok(bill) => stored.bills.push(bill.bill),
            Err(error) => report.problem(format!("epoch {epoch}: {error}")),
        }
    }
    for carry in &expected.carries_out {
        match get(carry_key(carry.epoch_to, &carry.source)).map(|v| decode_bincode::<Carry>("carry", v)) {
            Some(Ok(stored_carry)) => stored.carries_out.push(stored_carry),
            _ => report.problem(format!("epoch {epoch}: carry {} is missing", carry.source)),
        }
    }
    if let Some(difference) = plan_difference(expected, &stored) {
        report.problem(format!("epoch {epoch}: the stored plan is not what the log nets to: {difference}"));
    }
    if record.payout_count != expected.payouts.len() as u64
        || record.bill_count != expected.bills.len() as u64
        || record.batch_count != batches.len() as u64
    {
        report.problem(format!("epoch {epoch}: the plan's counts differ from its payouts, bills and batches"));
    }
    for batch in batches {
        match get(batch_key(epoch, batch.index)).map(|v| decode_bincode::<BatchRecord>("batch", v)) {
            Some(Ok(stored_batch)) if stored_batch.batch == *batch => {}
            _ => report.problem(format!("epoch {epoch}: batch {} is not the one the plan cuts", batch.index)),
        }
    }
    for payout in &expected.payouts {
        match get(payout_key(epoch, &payout.id)).map(|v| decode_bincode::<PayoutRecord>("payout", v)) {
            Some(Ok(stored))
                if batches.get(stored.batch_index as usize).is_some_and(|b| b.payout_ids.contains(&payout.id)) => {}
            _ => report.problem(format!("epoch {epoch}: payout {} is not in the batch the plan puts it in", payout.id)),
        }
    }
    for bill in &expected.bills {
        if get(bill_key(epoch, &bill.id)).is_none() {
            report.problem(format!("epoch {epoch}: bill {} is missing", bill.id));
        }
    }
}

/// The view must be exactly what is stored: every key, every value.
fn compare_view(ledger: &Ledger, view: &View, report: &mut AuditReport) -> Result<(), LedgerError> {
    for cf in EffectCf::ALL {
        let mut expected = view.range((cf, Vec::new())..).take_while(|((c, _), _)| *c == cf).peekable();
        for item in ledger.db.iterator_cf(ledger.cf(cf.name()), IteratorMode::Start) {
            let (key, value) = item?;
            // Keys the journal holds that sort before this stored key were deleted behind its back.
            while let Some(((_, missing), _)) = expected.next_if(|((_, k), _)| k.as_slice() < &*key) {
                report.problem(format!("{}: record {} vanished (the journal wrote it)", cf.name(), printable(missing)));
            }
            match expected.next_if(|((_, k), _)| k.as_slice() == &*key) {
                Some((_, journaled)) if journaled.as_slice() == &*value => {}
                Some(_) => report.problem(format!(
                    "{}: record {} differs from what the journal wrote (rewritten)",
                    cf.name(),
                    printable(&key)
                )),
                None => report.problem(format!(
                    "{}: record {} was written by no journaled change",
                    cf.name(),
                    printable(&key)
                )),
            }
        }
        for ((_, missing), _) in expected {
            report.problem(format!("{}: record {} vanished (the journal wrote it)", cf.name(), printable(missing)));
        }
    }
    Ok(())
}

/// Payouts against their plans, counters against records.
fn check_settlement_records(
    view: &View,
    first_payouts: &HashMap<Vec<u8>, Payout>,
    first_batches: &HashMap<Vec<u8>, RailBatch>,
    report: &mut AuditReport,
) {
    for settlement in view_records::<EpochSettlement>(view, EffectCf::Settlement, b"E") {
        let record = match settlement {
            Ok(record) => record,
            Err(error) => {
                report.problem(format!("settlement: {error}"));
                continue;
            }
        };
        let epoch = record.epoch;
        let decode_all = |tag: u8| crate::settlement::epoch_prefixed(tag, epoch, &[]);
        let batches: Vec<BatchRecord> =
            view_records(view, EffectCf::Settlement, &decode_all(b'R')).into_iter().filter_map(Result::ok).collect();
        let payouts: Vec<PayoutRecord> =
            view_records(view, EffectCf::Settlement, &decode_all(b'P')).into_iter().filter_map(Result::ok).collect();
        for payout in &payouts {
            if first_payouts.get(&payout_key(epoch, &payout.payout.id)).is_some_and(|first| *first != payout.payout) {
                report.problem(format!("epoch {epoch}: payout {} differs from its plan", payout.payout.id));
            }
        }
        for batch in &batches {
            if first_batches.get(&batch_key(epoch, batch.batch.index)).is_some_and(|first| *first != batch.batch) {
                report.problem(format!("epoch {epoch}: batch {} differs from its plan", batch.batch.index));
            }
        }
        let derived = match derive_counters(&batches, &payouts) {
            Ok(derived) => derived,
            Err(error) => {
                report.problem(format!("epoch {epoch}: {error}"));
                continue;
            }
        };
        let mut rejected = record.rejected.clone();
        rejected.sort();
        if (record.batches_open, record.payouts_open, record.gas_used, rejected)
            != (derived.batches_open, derived.payouts_open, derived.gas_used, derived.rejected.clone())
        {
            report.problem(format!(
                "epoch {epoch}: counters say {} batches open, {} payouts open, gas {}, rejected {:?}; the records \
                 say {}, {}, {}, {:?}",
                record.batches_open,
                record.payouts_open,
                record.gas_used,
                record.rejected,
                derived.batches_open,
                derived.payouts_open,
                derived.gas_used,
                derived.rejected
            ));
        }
        if record.batch_count != batches.len() as u64 || record.payout_count != payouts.len() as u64 {
            report.problem(format!("epoch {epoch}: its counts of batches and payouts differ from its records"));
        }
        let status_ok = match terminal_status(derived.batches_open, derived.payouts_open) {
            Some(terminal) => record.status == terminal,
            None => !matches!(record.status, SettlementStatus::Settled | SettlementStatus::Submitted),
        };
        if !status_ok {
            report.problem(format!("epoch {epoch}: status {} does not follow from its records", record.status.label()));
        }
    }
}

/// A key for a report line: text where it is text, hex where it is not.
fn printable(key: &[u8]) -> String {
    let text: String = key.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '.' }).collect();
    format!("{text} ({})", hex::encode(key))
}
