//! The x402 discovery listing of the gateway's priced routes.
//!
//! `GET <discovery_path>` (default `/.well-known/x402/resources`, a free
//! path) answers in the shape of x402's discovery API: one item per priced
//! route, with the offer a crawler will meet there. Routes with wildcards
//! are listed by their pattern (a crawler cannot enumerate them); exact
//! routes by their URL. Routes bound to another host than the request's are
//! left out. The list is as long as the price list ([`crate::config::ROUTES_MAX`]).

use axum::response::{IntoResponse, Response};
use serde_json::json;
use tally_x402::types::X402_VERSION;

use crate::config::GateConfig;
use crate::proxy::requirements;

/// The listing as seen from `host` (for host-bound routes) at `authority` (host and port, for URLs).
pub fn listing(config: &GateConfig, host: &str, authority: &str) -> Response {
    let items: Vec<serde_json::Value> = config
        .routes
        .iter()
        .filter(|route| route.price.is_some())
        .filter(|route| route.host.as_ref().is_none_or(|pattern| pattern.matches(host)))
        .map(|route| {
            let price = route.price.as_ref().expect("filtered to priced routes");
            let url = format!("{}://{authority}{}", config.public_scheme, route.path.as_str());
            json!({
                "resource": url,
                "type": "http",
                "x402Version": X402_VERSION,
                "accepts": [requirements(config, route, &url, price.offer())],
                "metadata": {
                    "description": route.description,
                    "pattern": !route.path.is_exact(),
                    "priceRange": matches!(price, crate::config::Price::Range { .. }),
                },
            })
        })
        .collect();
    let total = items.len();
    axum::Json(json!({
        "x402Version": X402_VERSION,
        "items": items,
        "pagination": { "limit": total, "offset": 0, "total": total },
    }))
    .into_response()
}
