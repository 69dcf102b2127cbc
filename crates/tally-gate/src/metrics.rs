//! The gateway's Prometheus metrics, per route (the price list's route
//! names, so the label set is bounded by the file).
//!
//! - `tally_gate_requests_total{route, outcome}`: every request, by what
//!   became of it ([`Outcome`]);
//! - `tally_gate_refusals_total{route, reason}`: refused payments by reason
//!   code (x402's, Tally's, or pay-per-crawl's `crawler-error`);
//! - `tally_gate_revenue_total{route, asset}`: what was charged, in the
//!   asset's smallest units (an integer counter: no float near an amount).

use tally_x402::pay_per_crawl::CrawlerError;
use tally_x402::types::Reason;

/// What became of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A free path or route: passed through unpaid.
    Free,
    /// Answered 402 with the offer (no payment came).
    PaymentRequired,
    /// Paid, settled, served.
    Paid,
    /// A payment was refused.
    Refused,
    /// The payer (or the path) may not buy here.
    Forbidden,
    /// The origin answered an error (not charged) or could not be reached.
    OriginError,
    /// The facilitator gave no verdict: nothing served.
    Unavailable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Free => "free",
            Outcome::PaymentRequired => "payment_required",
            Outcome::Paid => "paid",
            Outcome::Refused => "refused",
            Outcome::Forbidden => "forbidden",
            Outcome::OriginError => "origin_error",
            Outcome::Unavailable => "unavailable",
        }
    }
}

pub fn count(route: &str, outcome: Outcome) {
    metrics::counter!("tally_gate_requests_total", "route" => route.to_owned(), "outcome" => outcome.as_str())
        .increment(1);
}

/// The gateway's own refusal codes (beside x402's [`Reason`]s and pay-per-crawl's).
const GATE_REASONS: [&str; 3] = ["tally_payer_forbidden", "tally_invalid_charge", "tally_facilitator_charge_mismatch"];

/// Counts a refusal under its code, or `other`: a remote facilitator's codes
/// never grow the label set beyond the known ones.
pub fn count_refusal(route: &str, reason: &str) {
    let known = Reason::from_code(reason)
        .map(Reason::as_str)
        .or_else(|| CrawlerError::ALL.into_iter().map(CrawlerError::as_str).find(|c| *c == reason))
        .or_else(|| GATE_REASONS.into_iter().find(|c| *c == reason));
    metrics::counter!("tally_gate_refusals_total", "route" => route.to_owned(), "reason" => known.unwrap_or("other"))
        .increment(1);
}
pub fn count_revenue(route: &str, asset: &str, units: u64) {
    metrics::counter!("tally_gate_revenue_total", "route" => route.to_owned(), "asset" => asset.to_owned())
        .increment(units);
}

/// Describes the metrics for the exporter.
pub fn describe() {
    metrics::describe_counter!("tally_gate_requests_total", "Gateway requests by route and outcome");
    metrics::describe_counter!("tally_gate_refusals_total", "Gateway payments refused, by route and reason code");
    metrics::describe_counter!(
        "tally_gate_revenue_total",
        "Charged through the gateway, by route and asset, in the asset's smallest units"
    );
}
