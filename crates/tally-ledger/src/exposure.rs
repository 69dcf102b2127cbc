//! The writer's unsettled totals, published for readers that preview credit.
//!
//! The single writer keeps, in memory, what each payer owes per asset and has
//! not settled (`crate::state::State::exposure`), and decides every credit
//! limit against it. A front door that *previews* that decision (the x402
//! facilitator's `/verify`) used to recompute it from the aggregates on disk:
//! a scan per request that sorts the aggregate memtable, milliseconds each,
//! which made `/verify` the slowest call of a paid request. The writer now
//! publishes its totals here after deciding each group, under one lock per
//! group (not per IOU), and the preview reads one entry.
//!
//! What is published is the writer's view: it includes groups decided and
//! handed to the committer but not yet fsynced. A preview may therefore count
//! an IOU a moment before it is durable, and if that group fails the writer
//! reloads from disk and republishes everything. That is the right side to
//! err on for a preview (it can only be stricter than what is durable), and
//! the decision that counts is still the writer's own, at settle.

use std::sync::RwLock;

use crate::state::{FastMap, State};

/// payer id → asset → unsettled total, as the writer last decided it.
#[derive(Default)]
pub struct ExposureBoard {
    by_payer: RwLock<FastMap<String, FastMap<String, u128>>>,
}

impl ExposureBoard {
    /// What `payer` owes in `asset`, unsettled, in smallest units.
    pub fn exposure(&self, payer: &str, asset: &str) -> u128 {
        let map = self.by_payer.read().expect("exposure board lock poisoned");
        map.get(payer).and_then(|by_asset| by_asset.get(asset)).copied().unwrap_or(0)
    }

    /// Publishes the totals the state changed since the last call.
    pub(crate) fn publish_changed(&self, state: &mut State) {
        if state.exposure_changed.is_empty() {
            return;
        }
        let changed = std::mem::take(&mut state.exposure_changed);
        let mut map = self.by_payer.write().expect("exposure board lock poisoned");
        for (payer, asset) in changed {
            let owed = state.exposure(&payer, &asset);
            map.entry(payer).or_default().insert(asset, owed);
        }
    }

    /// Replaces everything with the state's totals (at start, and after a reload from disk).
    pub(crate) fn replace_all(&self, state: &mut State) {
        state.exposure_changed.clear();
        let mut map = self.by_payer.write().expect("exposure board lock poisoned");
        *map = state.exposure.clone();
    }
}
