//! The journal read as a history of values: who changed what, when, from
//! what, to what (`tally audit log`).
//!
//! Every journal entry ([`crate::journal`]) carries its actor and the exact
//! writes it made to the `accounts`, `epochs`, `settlement` and `meta`
//! column families. The value a write replaced is the value the previous
//! write to the same key left, so the history needs no extra record: it
//! replays the journal. That is what makes it trustworthy; the chain is the
//! one `tally ledger verify` checks, and the "before" of every change is
//! derived from it, never stored beside it where it could disagree.
//!
//! Memory is bounded whatever the journal's length: the first pass picks at
//! most [`HISTORY_ENTRIES_MAX`] entries (and at most
//! [`HISTORY_WRITES_PER_ENTRY_MAX`] of each entry's writes), the second
//! replays the journal from its start tracking only the keys those writes
//! touch, reading [`HISTORY_PAGE_ENTRIES`] entries at a time. Values are
//! shown decoded where the key says what they are (a payee with its payout
//! destination, a payer with its limits, an epoch, a payout, a bill, a
//! token's scope), else as their length and first bytes.

use std::collections::{BTreeMap, BTreeSet};

use tally_core::settlement::{BatchRecord, BillRecord, Carry, EpochSettlement, PayoutRecord};
use tally_core::{Actor, Asset, Payee, Payer};

use crate::LedgerError;
use crate::journal::{Action, EffectCf, JournalEntry};
use crate::layout::{
    ACCOUNT_ASSET_PREFIX, ACCOUNT_KEY_PREFIX, ACCOUNT_PAYEE_PREFIX, ACCOUNT_PAYER_PREFIX, ACCOUNT_QUERY_TOKEN_PREFIX,
    EpochRecord, decode_bincode,
};
use crate::store::Ledger;
use crate::tokens::QueryToken;

/// Most entries one history shows.
pub const HISTORY_ENTRIES_MAX: usize = 1_000;
/// Most writes shown per entry (a plan writes one per payout); the rest are counted.
pub const HISTORY_WRITES_PER_ENTRY_MAX: usize = 64;
/// Longest text shown for one value, in bytes.
pub const HISTORY_VALUE_TEXT_MAX: usize = 600;
/// Journal entries read per page while replaying.
pub const HISTORY_PAGE_ENTRIES: usize = 1_024;

/// What to show.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    /// The first journal sequence number considered.
    pub from_seq: u64,
    /// Most entries shown (capped at [`HISTORY_ENTRIES_MAX`]).
    pub limit: usize,
    /// Only writes to this key as shown (e.g. `payee/site-a.example`), or
    /// under it when it ends in `/` (`payee/`: every payee), and only
    /// entries with such a write.
    pub touching: Option<String>,
}

/// One write as a change of value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueChange {
    pub cf: EffectCf,
    pub key: String,
    /// `None`: no earlier journal entry wrote the key (a migration's snapshot
    /// entries journal what was already there).
    pub before: Option<String>,
    /// `None`: the key was deleted.
    pub after: Option<String>,
}

/// One journal entry as a set of changes.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEntry {
    pub seq: u64,
    pub at_ms: u64,
    pub actor: Actor,
    pub action: Action,
    /// At most [`HISTORY_WRITES_PER_ENTRY_MAX`], in the order written.
    pub changes: Vec<ValueChange>,
    /// Every write of the entry that matched the query, shown or not.
    pub changes_total: usize,
}

impl Ledger {
    /// The history `query` asks for, oldest first.
    pub fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryEntry>, LedgerError> {
        let limit = query.limit.clamp(1, HISTORY_ENTRIES_MAX);
        let matches = |cf: EffectCf, key: &[u8]| match &query.touching {
            None => true,
            // The key itself, or every key under a prefix ending in `/`.
            Some(text) => {
                let shown = render_key(cf, key);
                shown == *text || (text.ends_with('/') && shown.starts_with(text.as_str()))
            }
        };

        // Pass 1: pick the entries and the writes to show.
        let mut picked: BTreeMap<u64, (Vec<usize>, usize)> = BTreeMap::new();
        let mut tracked: BTreeSet<(EffectCf, Vec<u8>)> = BTreeSet::new();
        self.each_entry(query.from_seq.max(1), |entry| {
            let mut shown = Vec::new();
            let mut total = 0;
            for (index, effect) in entry.body.effects.iter().enumerate() {
                if matches(effect.cf, &effect.key) {
                    total += 1;
                    if shown.len() < HISTORY_WRITES_PER_ENTRY_MAX {
                        shown.push(index);
                        tracked.insert((effect.cf, effect.key.clone()));
                    }
                }
            }
            // With a filter, an entry without a matching write is not shown.
            if query.touching.is_none() || total > 0 {
                picked.insert(entry.seq, (shown, total));
            }
            picked.len() < limit
        })?;
        let Some(&last_seq) = picked.keys().next_back() else {
            return Ok(Vec::new());
        };

        // Pass 2: replay from the start, tracking the picked writes' keys.
        let mut values: BTreeMap<(EffectCf, Vec<u8>), Vec<u8>> = BTreeMap::new();
        let mut out = Vec::with_capacity(picked.len());
        self.each_entry(1, |entry| {
            let shown = picked.get(&entry.seq);
            let mut changes = Vec::new();
            for (index, effect) in entry.body.effects.iter().enumerate() {
                let slot = (effect.cf, effect.key.clone());
                if !tracked.contains(&slot) {
                    continue;
                }
                if shown.is_some_and(|(indices, _)| indices.binary_search(&index).is_ok()) {
                    changes.push(ValueChange {
                        cf: effect.cf,
                        key: render_key(effect.cf, &effect.key),
                        before: values.get(&slot).map(|v| render_value(effect.cf, &effect.key, v)),
                        after: effect.value.as_ref().map(|v| render_value(effect.cf, &effect.key, v)),
                    });
                }
                match &effect.value {
                    Some(value) => values.insert(slot, value.clone()),
                    None => values.remove(&slot),
                };
            }
            if let Some((_, total)) = shown {
                out.push(HistoryEntry {
                    seq: entry.seq,
                    at_ms: entry.at_ms,
                    actor: entry.body.actor.clone(),
                    action: entry.body.action.clone(),
                    changes,
                    changes_total: *total,
                });
            }
            entry.seq < last_seq
        })?;
        debug_assert_eq!(out.len(), picked.len(), "every picked entry is replayed");
        Ok(out)
    }

    /// Calls `visit` on every journal entry from `seq_from` on, a page at a
    /// time, until it returns `false` or the journal ends.
    fn each_entry(&self, seq_from: u64, mut visit: impl FnMut(&JournalEntry) -> bool) -> Result<(), LedgerError> {
        let mut next = seq_from;
        loop {
            let page = self.journal(next, HISTORY_PAGE_ENTRIES)?;
            for entry in &page {
                if !visit(entry) {
                    return Ok(());
                }
            }
            match page.last() {
                Some(last) if page.len() == HISTORY_PAGE_ENTRIES => next = last.seq + 1,
                _ => return Ok(()),
            }
        }
    }
}

/// A key as text: printable bytes as they are, an epoch number after the
/// settlement column family's one-letter tag, anything else in hex.
pub fn render_key(cf: EffectCf, key: &[u8]) -> String {
    let printable = |b: &u8| b.is_ascii_graphic();
    match cf {
        EffectCf::Epochs if key.len() == 8 => format!("epoch/{}", u64::from_be_bytes(key.try_into().unwrap_or([0; 8]))),
        EffectCf::Settlement if key.len() >= 9 && matches!(key[0], b'E' | b'P' | b'B' | b'R' | b'C') => {
            let epoch = u64::from_be_bytes(key[1..9].try_into().unwrap_or([0; 8]));
            let rest = &key[9..];
            let rest =
                if rest.iter().all(printable) { String::from_utf8_lossy(rest).into_owned() } else { hex::encode(rest) };
            format!("{}/{epoch}/{rest}", key[0] as char)
        }
        // A binary id after a text prefix (a public key, a token's digest) is
        // hex from its first byte, so a printable first byte is never read as text.
        EffectCf::Accounts if key.starts_with(ACCOUNT_KEY_PREFIX) || key.starts_with(ACCOUNT_QUERY_TOKEN_PREFIX) => {
            let split = key.iter().position(|b| *b == b'/').map_or(0, |i| i + 1);
            format!("{}{}", String::from_utf8_lossy(&key[..split]), hex::encode(&key[split..]))
        }
        _ => {
            let text_len = key.iter().position(|b| !printable(b)).unwrap_or(key.len());
            let (text, rest) = key.split_at(text_len);
            let text = String::from_utf8_lossy(text);
            if rest.is_empty() { text.into_owned() } else { format!("{text}{}", hex::encode(rest)) }
        }
    }
}

/// A value as text, decoded when its key says what it is.
pub fn render_value(cf: EffectCf, key: &[u8], value: &[u8]) -> String {
    fn debug<T: serde::de::DeserializeOwned + std::fmt::Debug>(value: &[u8]) -> Option<String> {
        decode_bincode::<T>("history value", value).ok().map(|v| format!("{v:?}"))
    }
    let decoded = match cf {
        EffectCf::Accounts if key.starts_with(ACCOUNT_PAYEE_PREFIX) => debug::<Payee>(value),
        EffectCf::Accounts if key.starts_with(ACCOUNT_PAYER_PREFIX) => debug::<Payer>(value),
        EffectCf::Accounts if key.starts_with(ACCOUNT_ASSET_PREFIX) => debug::<Asset>(value),
        EffectCf::Accounts if key.starts_with(ACCOUNT_QUERY_TOKEN_PREFIX) => debug::<QueryToken>(value),
        EffectCf::Epochs => debug::<EpochRecord>(value),
        EffectCf::Settlement => match key.first() {
            Some(b'E') => debug::<EpochSettlement>(value),
            Some(b'P') => debug::<PayoutRecord>(value),
            Some(b'B') => debug::<BillRecord>(value),
            Some(b'R') => debug::<BatchRecord>(value),
            Some(b'C') => debug::<Carry>(value),
            _ => None,
        },
        _ => None,
    };
    let text = decoded.or_else(|| {
        // Short printable values (an index naming a payer) read as they are.
        (value.len() <= 128 && !value.is_empty() && value.iter().all(u8::is_ascii_graphic))
            .then(|| String::from_utf8_lossy(value).into_owned())
    });
    let text = text.unwrap_or_else(|| {
        let head = &value[..value.len().min(32)];
        format!("<{} bytes: {}{}>", value.len(), hex::encode(head), if value.len() > 32 { "…" } else { "" })
    });
    bounded(text)
}

fn bounded(mut text: String) -> String {
    if text.len() > HISTORY_VALUE_TEXT_MAX {
        let mut end = HISTORY_VALUE_TEXT_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_render_as_their_parts() {
        assert_eq!(render_key(EffectCf::Accounts, b"payee/site-a.example"), "payee/site-a.example");
        assert_eq!(render_key(EffectCf::Accounts, &[b'k', b'e', b'y', b'/', 0xAB, 0x01]), "key/ab01");
        assert_eq!(render_key(EffectCf::Accounts, &[b'k', b'e', b'y', b'/', b'a', 0x01]), "key/6101");
        assert_eq!(render_key(EffectCf::Epochs, &7u64.to_be_bytes()), "epoch/7");
        let mut payout = vec![b'P'];
        payout.extend_from_slice(&3u64.to_be_bytes());
        payout.extend_from_slice(b"Pabc");
        assert_eq!(render_key(EffectCf::Settlement, &payout), "P/3/Pabc");
    }

    #[test]
    fn values_are_bounded_and_never_misread() {
        let long = render_value(EffectCf::Meta, b"x", &[0u8; 5_000]);
        assert!(long.starts_with("<5000 bytes: 0000") && long.len() < 200, "{long}");
        // Bytes that are not a payee under a payee key show as bytes, not as a guess.
        let junk = render_value(EffectCf::Accounts, b"payee/x", &[0xFF; 3]);
        assert_eq!(junk, "<3 bytes: ffffff>");
        assert!(bounded("é".repeat(1_000)).len() <= HISTORY_VALUE_TEXT_MAX + '…'.len_utf8());
    }
}
