//! Settlement records on disk: their keys and every read.
//!
//! Settlement state lives in the `settlement` column family, written only
//! by the single writer (invariant 2, `crate::writer::settlement`), so a
//! plan, a batch's progress, a bank status and a carry are ordered with
//! sealing and with each other, and each write is journaled
//! (`crate::journal`). Nothing here writes, and nothing talks to a rail.
//!
//! Keys (all integers big-endian):
//!
//! | key | value |
//! |---|---|
//! | `E` ‖ epoch | [`EpochSettlement`] |
//! | `P` ‖ epoch ‖ payout id | [`PayoutRecord`] |
//! | `I` ‖ payout id | epoch (lookup for bank status reports) |
//! | `B` ‖ epoch ‖ bill id | [`BillRecord`] |
//! | `R` ‖ epoch ‖ batch index (u32) | [`BatchRecord`] |
//! | `C` ‖ epoch to ‖ source | [`Carry`] |
//! | `O` ‖ lp(payer) ‖ lp(asset) ‖ epoch ‖ bill id | amount u128: an open bill holding `payer`'s credit; deleted when paid |

use std::collections::HashMap;

use rocksdb::{Direction, IteratorMode, ReadOptions};
use tally_core::settlement::{BatchRecord, BillRecord, Carry, EpochSettlement, PayoutRecord};

use crate::LedgerError;
use crate::layout::{CF_SETTLEMENT, decode_bincode, pop_lp, push_lp};
use crate::store::Ledger;

/// Most batches one plan may hold (bounds the plan record and the driver's
/// loop). 1,000,000 payouts at 100 per transaction is 10,000.
pub const BATCHES_PER_EPOCH_MAX: usize = 100_000;
/// Most payouts (and bills, and carries) one plan may hold.
pub const PAYOUTS_PER_EPOCH_MAX: usize = 10_000_000;
/// Most bill records (all epochs) read when rebuilding credit exposure.
pub const OPEN_BILLS_SCAN_MAX: usize = 100_000_000;

pub fn epoch_key(epoch: u64) -> Vec<u8> {
    let mut key = vec![b'E'];
    key.extend_from_slice(&epoch.to_be_bytes());
    key
}

pub(crate) fn epoch_prefixed(tag: u8, epoch: u64, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + rest.len());
    key.push(tag);
    key.extend_from_slice(&epoch.to_be_bytes());
    key.extend_from_slice(rest);
    key
}

pub fn payout_key(epoch: u64, payout_id: &str) -> Vec<u8> {
    epoch_prefixed(b'P', epoch, payout_id.as_bytes())
}

pub fn payout_index_key(payout_id: &str) -> Vec<u8> {
    let mut key = vec![b'I'];
    key.extend_from_slice(payout_id.as_bytes());
    key
}

pub fn bill_key(epoch: u64, bill_id: &str) -> Vec<u8> {
    epoch_prefixed(b'B', epoch, bill_id.as_bytes())
}

pub fn batch_key(epoch: u64, index: u32) -> Vec<u8> {
    epoch_prefixed(b'R', epoch, &index.to_be_bytes())
}

pub fn carry_key(epoch_to: u64, source: &str) -> Vec<u8> {
    epoch_prefixed(b'C', epoch_to, source.as_bytes())
}

/// The open-bill index: one key per (holder, bill), so a payer's open bills
/// are one short prefix scan, whatever the history holds.
fn open_bill_prefix(payer: Option<&str>) -> Vec<u8> {
    let mut key = vec![b'O'];
    if let Some(payer) = payer {
        push_lp(&mut key, payer);
    }
    key
}

pub(crate) fn open_bill_key(payer: &str, asset: &str, epoch: u64, bill_id: &str) -> Vec<u8> {
    let mut key = open_bill_prefix(Some(payer));
    push_lp(&mut key, asset);
    key.extend_from_slice(&epoch.to_be_bytes());
    key.extend_from_slice(bill_id.as_bytes());
    key
}

impl Ledger {
    pub(crate) fn settlement_get<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, LedgerError> {
        match self.db.get_cf(self.cf(CF_SETTLEMENT), key)? {
            None => Ok(None),
            Some(value) => Ok(Some(decode_bincode(what, &value)?)),
        }
    }

    fn settlement_scan<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        what: &str,
        limit: usize,
    ) -> Result<Vec<T>, LedgerError> {
        let mut read = ReadOptions::default();
        read.set_iterate_range(rocksdb::PrefixRange(prefix));
        let iter =
            self.db.iterator_cf_opt(self.cf(CF_SETTLEMENT), read, IteratorMode::From(prefix, Direction::Forward));
        let mut out = Vec::new();
        for item in iter {
            if out.len() == limit {
                // A silently shortened list could drop a payout or a carry:
                // refuse instead.
                return Err(LedgerError::Unavailable(format!("more than {limit} {what} records under one prefix")));
            }
            let (_, value) = item?;
            out.push(decode_bincode(what, &value)?);
        }
        Ok(out)
    }

    /// The settlement record of `epoch`, if it has been planned.
    pub fn settlement(&self, epoch: u64) -> Result<Option<EpochSettlement>, LedgerError> {
        self.settlement_get(&epoch_key(epoch), "epoch settlement")
    }

    /// Every planned epoch's settlement record, oldest first.
    pub fn settlements(&self) -> Result<Vec<EpochSettlement>, LedgerError> {
        self.settlement_scan(b"E", "epoch settlement", usize::MAX)
    }

    /// The payouts of `epoch`, sorted by id.
    pub fn payouts(&self, epoch: u64) -> Result<Vec<PayoutRecord>, LedgerError> {
        self.settlement_scan(&epoch_prefixed(b'P', epoch, &[]), "payout", PAYOUTS_PER_EPOCH_MAX)
    }

    /// One payout by id, wherever its epoch.
    pub fn payout(&self, payout_id: &str) -> Result<Option<PayoutRecord>, LedgerError> {
        let Some(epoch) = self.payout_epoch(payout_id)? else { return Ok(None) };
        self.settlement_get(&payout_key(epoch, payout_id), "payout")
    }

    pub(crate) fn payout_epoch(&self, payout_id: &str) -> Result<Option<u64>, LedgerError> {
        match self.db.get_cf(self.cf(CF_SETTLEMENT), payout_index_key(payout_id))? {
            None => Ok(None),
            Some(value) => Ok(Some(u64::from_be_bytes(
                value[..].try_into().map_err(|_| LedgerError::Corruption("payout index value".into()))?,
            ))),
        }
    }

    /// The bills of `epoch`, sorted by id.
    pub fn bills(&self, epoch: u64) -> Result<Vec<BillRecord>, LedgerError> {
        self.settlement_scan(&epoch_prefixed(b'B', epoch, &[]), "bill", PAYOUTS_PER_EPOCH_MAX)
    }

    /// The batches of `epoch`, in execution order.
    pub fn batches(&self, epoch: u64) -> Result<Vec<BatchRecord>, LedgerError> {
        self.settlement_scan(&epoch_prefixed(b'R', epoch, &[]), "batch", BATCHES_PER_EPOCH_MAX)
    }

    /// The credit carried into `epoch` (from earlier plans and rejections).
    pub fn carries_into(&self, epoch: u64) -> Result<Vec<Carry>, LedgerError> {
        self.settlement_scan(&epoch_prefixed(b'C', epoch, &[]), "carry", PAYOUTS_PER_EPOCH_MAX)
    }

    /// The highest planned epoch (0 when none is).
    pub fn planned_through(&self) -> Result<u64, LedgerError> {
        let mut iter = self.db.iterator_cf(self.cf(CF_SETTLEMENT), IteratorMode::From(b"F", Direction::Reverse));
        match iter.next() {
            Some(item) => {
                let (key, _) = item?;
                if key.first() != Some(&b'E') {
                    return Ok(0);
                }
                let epoch: [u8; 8] =
                    key[1..].try_into().map_err(|_| LedgerError::Corruption("settlement epoch key".into()))?;
                Ok(u64::from_be_bytes(epoch))
            }
            None => Ok(0),
        }
    }

    /// What payers owe and have not settled, per `(payer, asset)`: IOUs in
    /// epochs not yet planned plus open bills. This is what credit limits
    /// bound; the writer keeps the same figure in memory.
    pub fn unsettled_owed(&self, payer: Option<&str>) -> Result<HashMap<(String, String), u128>, LedgerError> {
        let mut owed = self.owed(payer, self.planned_through()? + 1)?;
        for (key, billed) in self.open_bills_by_payer(payer)? {
            let slot = owed.entry(key).or_default();
            *slot = slot.checked_add(billed).ok_or_else(|| LedgerError::Corruption("exposure overflows".into()))?;
        }
        Ok(owed)
    }

    /// Open bills per holding payer (all payers, or one): `(payer, asset) →
    /// amount`. Reads the open-bill index, never the bill history.
    pub fn open_bills_by_payer(&self, payer: Option<&str>) -> Result<HashMap<(String, String), u128>, LedgerError> {
        let prefix = open_bill_prefix(payer);
        let mut read = ReadOptions::default();
        read.set_iterate_range(rocksdb::PrefixRange(prefix.as_slice()));
        let iter =
            self.db.iterator_cf_opt(self.cf(CF_SETTLEMENT), read, IteratorMode::From(&prefix, Direction::Forward));
        let corrupt = || LedgerError::Corruption("open-bill index entry".into());
        let mut out: HashMap<(String, String), u128> = HashMap::new();
        for (scanned, item) in iter.enumerate() {
            if scanned == OPEN_BILLS_SCAN_MAX {
                return Err(LedgerError::Unavailable(format!("more than {OPEN_BILLS_SCAN_MAX} open bills")));
            }
            let (key, value) = item?;
            let (holder, rest) = pop_lp(&key[1..]).ok_or_else(corrupt)?;
            let (asset, _) = pop_lp(rest).ok_or_else(corrupt)?;
            let amount = u128::from_be_bytes(value[..].try_into().map_err(|_| corrupt())?);
            let slot = out.entry((holder.to_owned(), asset.to_owned())).or_default();
            *slot = slot
                .checked_add(amount)
                .ok_or_else(|| LedgerError::Corruption(format!("open bills of {holder} overflow")))?;
        }
        Ok(out)
    }
}
