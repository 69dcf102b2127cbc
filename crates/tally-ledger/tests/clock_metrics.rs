//! A wall clock that jumps is logged and exported as metrics, measured
//! against the monotonic clock by the writer (`writer::group_now_ms`):
//! `tally_clock_jumps_total{direction}` counts each jump of more than a
//! second, and `tally_clock_behind_time_mark_ms` says how far the clock is
//! behind the ledger's time mark (how long a clock set back keeps judging
//! expiry by the mark instead).
//!
//! Its own test binary with one test: the metrics recorder is global to the
//! process, so no other test may move the same gauge meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tally_core::{Actor, Asset};
use tally_ledger::{AdminCommand, Ledger, LedgerOptions, Writer, WriterConfig};

const NOW_S: u64 = 1_800_000_000;

/// What the writer reported since the last snapshot (the debugging recorder
/// hands each value over once: counters count from the previous snapshot).
struct Reported(Vec<(String, Option<String>, DebugValue)>);

fn reported(snapshotter: &Snapshotter) -> Reported {
    Reported(
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let direction = key.key().labels().find(|l| l.key() == "direction").map(|l| l.value().to_owned());
                (key.key().name().to_owned(), direction, value)
            })
            .collect(),
    )
}

impl Reported {
    fn jumps(&self, direction: &str) -> u64 {
        self.0
            .iter()
            .filter(|(name, d, _)| name == "tally_clock_jumps_total" && d.as_deref() == Some(direction))
            .map(|(_, _, value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("not a counter: {other:?}"),
            })
            .sum()
    }

    fn behind_ms(&self) -> Option<f64> {
        self.0.iter().find(|(name, ..)| name == "tally_clock_behind_time_mark_ms").map(|(_, _, value)| match value {
            DebugValue::Gauge(v) => v.into_inner(),
            other => panic!("not a gauge: {other:?}"),
        })
    }
}

#[test]
fn a_clock_that_jumps_is_counted_and_its_lag_behind_the_time_mark_exported() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder of this test binary");

    let dir = tempfile::tempdir().unwrap();
    let clock_ms = Arc::new(AtomicU64::new(NOW_S * 1000));
    let clock = {
        let clock_ms = clock_ms.clone();
        Arc::new(move || clock_ms.load(Ordering::SeqCst)) as tally_ledger::Clock
    };
    let ledger = Ledger::open(dir.path(), LedgerOptions { clock: clock.clone(), ..LedgerOptions::default() }).unwrap();
    let writer = Writer::start(ledger.clone(), WriterConfig { clock, ..WriterConfig::default() }).unwrap();
    let w = writer.handle();
    let record = || {
        let usd = AdminCommand::UpsertAsset(Asset::new("USD", 6, true).unwrap());
        w.admin_blocking(Actor::admin_token("test"), usd).unwrap();
    };
    // Two changes a moment apart, by a clock that runs true: no jump.
    record();
    record();
    let steady = reported(&snapshotter);
    assert_eq!((steady.jumps("forward"), steady.jumps("backward"), steady.behind_ms()), (0, 0, Some(0.0)));

    // Two hours forward (and recorded there: the time mark follows).
    clock_ms.store((NOW_S + 7_200) * 1000, Ordering::SeqCst);
    record();
    let forward = reported(&snapshotter);
    assert_eq!((forward.jumps("forward"), forward.jumps("backward"), forward.behind_ms()), (1, 0, Some(0.0)));
    // Back to a minute past the start: a backward jump, and the clock is
    // 7,140 s behind the mark, by which expiry is judged meanwhile.
    clock_ms.store((NOW_S + 60) * 1000, Ordering::SeqCst);
    record();
    let back = reported(&snapshotter);
    assert_eq!((back.jumps("forward"), back.jumps("backward")), (0, 1));
    assert_eq!(back.behind_ms(), Some(7_140_000.0));
    assert!(ledger.journal_head().unwrap().at_ms >= (NOW_S + 7_200) * 1000, "recorded times never go back");
    writer.shutdown();
}
