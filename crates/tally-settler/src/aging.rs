//! The aged list of open bills: what payers still owe, and for how long.
//!
//! A bill is issued when its epoch's plan is recorded (`planned_at_ms`) and
//! stays open until it is collected (`tally bill paid`). Finance reads the
//! open ones the way every receivables desk does: by age, in the customary
//! buckets (0–30, 31–60, 61–90 and over 90 days), with a total per asset and
//! bucket. Ages are whole days of 86,400,000 ms counted from issue to
//! `as_of_ms`; a bill issued after `as_of_ms` is left out, and one collected
//! after it counts as open, so the report is a pure function of the ledger
//! and the moment asked: a past day's question keeps its answer, and tests
//! can ask about any day.
//!
//! Amounts stay integers in each asset's smallest unit; totals use checked
//! addition, and an overflow is an error, never a wrapped or saturated sum.
//! The listing is bounded ([`OPEN_BILLS_LISTED_MAX`]); the totals always
//! cover every open bill examined, so a truncated listing never understates
//! what is owed.

use std::collections::BTreeMap;

use tally_core::settlement::BillRecord;

use crate::SettleError;
pub use crate::schedule::DAY_MS;

/// Most open bills one report lists; the totals cover them all.
pub const OPEN_BILLS_LISTED_MAX: usize = 10_000;

/// An age bucket, youngest first. Wire labels are permanent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AgeBucket {
    Days0To30,
    Days31To60,
    Days61To90,
    Over90Days,
}

impl AgeBucket {
    pub const ALL: [AgeBucket; 4] =
        [AgeBucket::Days0To30, AgeBucket::Days31To60, AgeBucket::Days61To90, AgeBucket::Over90Days];

    /// The bucket of a bill `age_days` old.
    pub fn of(age_days: u64) -> AgeBucket {
        match age_days {
            0..=30 => AgeBucket::Days0To30,
            31..=60 => AgeBucket::Days31To60,
            61..=90 => AgeBucket::Days61To90,
            _ => AgeBucket::Over90Days,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            AgeBucket::Days0To30 => "0-30",
            AgeBucket::Days31To60 => "31-60",
            AgeBucket::Days61To90 => "61-90",
            AgeBucket::Over90Days => "over-90",
        }
    }
}

/// One open bill with its age.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgedBill {
    pub record: BillRecord,
    /// When its epoch's plan was recorded.
    pub issued_at_ms: u64,
    pub age_days: u64,
    pub bucket: AgeBucket,
}

/// What is open per asset and bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketTotal {
    pub count: u64,
    pub amount: u128,
}

/// The aged list as of one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgedBills {
    pub as_of_ms: u64,
    /// Oldest first (then by epoch and id), at most [`OPEN_BILLS_LISTED_MAX`].
    pub listed: Vec<AgedBill>,
    /// Every open bill examined, by asset and bucket.
    pub totals: BTreeMap<(String, AgeBucket), BucketTotal>,
    /// Open bills examined (listed or not).
    pub open_count: u64,
    pub truncated: bool,
}

/// Ages `bills`, each with the time its epoch's plan was recorded. Paid
/// bills are left out.
pub fn age_bills(
    bills: impl IntoIterator<Item = (BillRecord, u64)>,
    as_of_ms: u64,
    listed_max: usize,
) -> Result<AgedBills, SettleError> {
    let mut report = AgedBills { as_of_ms, ..AgedBills::default() };
    let mut open = Vec::new();
    for (record, issued_at_ms) in bills {
        // As of a moment: a bill issued later did not exist yet, and one
        // collected later was still open, so a past day's report never changes.
        let open_then = issued_at_ms <= as_of_ms && record.paid_at_ms.is_none_or(|paid| paid > as_of_ms);
        if !open_then {
            continue;
        }
        let age_days = (as_of_ms - issued_at_ms) / DAY_MS;
        let bucket = AgeBucket::of(age_days);
        let total = report.totals.entry((record.bill.asset.clone(), bucket)).or_default();
        total.count = total.count.checked_add(1).ok_or_else(|| overflow("bill count"))?;
        total.amount = total.amount.checked_add(record.bill.amount).ok_or_else(|| overflow(&record.bill.asset))?;
        report.open_count = report.open_count.checked_add(1).ok_or_else(|| overflow("bill count"))?;
        open.push(AgedBill { record, issued_at_ms, age_days, bucket });
    }
    open.sort_by(|a, b| {
        (a.issued_at_ms, a.record.bill.epoch, &a.record.bill.id).cmp(&(
            b.issued_at_ms,
            b.record.bill.epoch,
            &b.record.bill.id,
        ))
    });
    report.truncated = open.len() > listed_max;
    open.truncate(listed_max);
    report.listed = open;
    debug_assert!(report.listed.len() as u64 <= report.open_count);
    Ok(report)
}

fn overflow(what: &str) -> SettleError {
    SettleError::Ledger(format!("the open bills' total of {what} overflows"))
}

/// Every open bill of every planned epoch, aged as of `as_of_ms`.
pub fn open_bills(ledger: &tally_ledger::Ledger, as_of_ms: u64) -> Result<AgedBills, SettleError> {
    let mut bills = Vec::new();
    for settlement in ledger.settlements()? {
        for record in ledger.bills(settlement.epoch)? {
            bills.push((record, settlement.planned_at_ms));
        }
    }
    age_bills(bills, as_of_ms, OPEN_BILLS_LISTED_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tally_core::settlement::{Bill, Party};

    fn bill(id: u32, asset: &str, amount: u128, paid: bool) -> BillRecord {
        BillRecord {
            bill: Bill {
                id: format!("bill-{id}"),
                epoch: 1,
                party: Party::Payer(format!("crawler-{id}")),
                asset: asset.into(),
                amount,
                iou_count: 1,
            },
            paid_at_ms: paid.then_some(1),
            holders: vec![],
        }
    }

    #[test]
    fn buckets_have_their_customary_edges() {
        let edges = [(0, "0-30"), (30, "0-30"), (31, "31-60"), (60, "31-60"), (61, "61-90"), (90, "61-90")];
        for (days, label) in edges {
            assert_eq!(AgeBucket::of(days).label(), label, "{days} days");
        }
        assert_eq!(AgeBucket::of(91), AgeBucket::Over90Days);
        assert_eq!(AgeBucket::of(u64::MAX), AgeBucket::Over90Days);
    }

    #[test]
    fn paid_bills_are_left_out_and_ages_count_whole_days() {
        let issued = 1_000 * DAY_MS;
        let bills = vec![(bill(1, "USD", 5, false), issued), (bill(2, "USD", 7, true), issued)];
        let report = age_bills(bills, issued + 45 * DAY_MS - 1, 10).unwrap();
        assert_eq!(report.listed.len(), 1);
        assert_eq!((report.listed[0].age_days, report.listed[0].bucket), (44, AgeBucket::Days31To60));
        assert_eq!(report.totals[&("USD".into(), AgeBucket::Days31To60)], BucketTotal { count: 1, amount: 5 });
        // Issued after the moment asked: not yet a bill then.
        let early = age_bills(vec![(bill(3, "USD", 1, false), issued)], issued - DAY_MS, 10).unwrap();
        assert_eq!(early.open_count, 0);
        // Collected after the moment asked: still open then.
        let mut later = bill(4, "USD", 9, true);
        later.paid_at_ms = Some(issued + 10 * DAY_MS);
        let then = age_bills(vec![(later, issued)], issued + 5 * DAY_MS, 10).unwrap();
        assert_eq!((then.open_count, then.listed[0].age_days), (1, 5));
    }

    #[test]
    fn a_total_that_overflows_is_an_error() {
        let bills = vec![(bill(1, "USD", u128::MAX, false), 0), (bill(2, "USD", 1, false), 0)];
        assert!(age_bills(bills, 0, 10).is_err());
    }

    #[test]
    fn truncation_keeps_the_oldest_and_every_total() {
        let bills = (0..5u32).map(|i| (bill(i, "USD", 10, false), u64::from(i) * DAY_MS)).collect::<Vec<_>>();
        let report = age_bills(bills, 100 * DAY_MS, 2).unwrap();
        assert!(report.truncated);
        assert_eq!(report.listed.iter().map(|b| b.record.bill.id.as_str()).collect::<Vec<_>>(), ["bill-0", "bill-1"]);
        assert_eq!(report.open_count, 5);
        let sum: u128 = report.totals.values().map(|t| t.amount).sum();
        assert_eq!(sum, 50);
    }

    proptest! {
        /// The buckets partition the open bills: every open bill is in exactly
        /// one, and the totals add up to the open bills' sum per asset.
        #[test]
        fn buckets_partition_what_is_open(
            bills in proptest::collection::vec((0u64..200, 1u128..1_000_000, any::<bool>(), 0usize..2), 0..64),
            as_of_days in 0u64..400,
        ) {
            let assets = ["USD", "EUR"];
            let input: Vec<(BillRecord, u64)> = bills
                .iter()
                .enumerate()
                .map(|(i, (day, amount, paid, asset))| (bill(i as u32, assets[*asset], *amount, *paid), day * DAY_MS))
                .collect();
            let report = age_bills(input.clone(), as_of_days * DAY_MS, usize::MAX).unwrap();
            for asset in assets {
                let as_of_ms = as_of_days * DAY_MS;
                let open: u128 = input
                    .iter()
                    .filter(|(r, issued)| *issued <= as_of_ms && r.paid_at_ms.is_none_or(|paid| paid > as_of_ms))
                    .filter(|(r, _)| r.bill.asset == asset)
                    .map(|(r, _)| r.bill.amount)
                    .sum();
                let bucketed: u128 = AgeBucket::ALL.iter().filter_map(|b| report.totals.get(&(asset.to_owned(), *b))).map(|t| t.amount).sum();
                prop_assert_eq!(open, bucketed);
            }
            prop_assert_eq!(report.listed.len() as u64, report.open_count);
            for aged in &report.listed {
                prop_assert_eq!(aged.bucket, AgeBucket::of(aged.age_days));
            }
        }
    }
}
