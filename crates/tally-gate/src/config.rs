//! The gateway's price list: a TOML file a publisher writes by hand.
//!
//! ```toml
//! upstream = "http://127.0.0.1:8080"     # the origin (or --upstream)
//! network = "tally:local"                # the Tally network (or --network)
//! pay_to = "daily.example"               # the default payee
//! asset = "USD"                          # the default asset
//! [assets]
//! USD = 6                                # decimals: prices below are in display units
//!
//! [[route]]
//! path = "/articles/*"                   # `*` matches any run of characters, `/` included
//! price = "0.01"                         # exact: every response costs this
//!
//! [[route]]
//! host = "api.daily.example"             # optional: exact host, or `*.daily.example`
//! path = "/search"
//! price_max = "0.05"                     # a range: the origin narrows it per response
//! price_min = "0.001"                    # with a `tally-charge: 0.002` response header
//! deny = ["bad-crawler"]                 # per-payer rules (payer ids in Tally)
//! ```
//!
//! Free paths (`/robots.txt`, sitemaps, `/.well-known/*`) pass unpaid unless
//! `free` is set to something else; a request no route matches passes unpaid
//! too (`unmatched = "free"`, the default) or is refused (`"deny"`).
//!
//! Every amount is parsed here, once, into smallest units with the asset's
//! scale ([`tally_core::amount::parse_amount`]: more decimals than the scale is
//! an error, never a rounding), so the request path does integer arithmetic
//! only. Every list has a bound ([`ROUTES_MAX`], [`PATTERN_BYTES_MAX`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tally_core::amount::parse_amount;

use crate::rules::Pattern;

/// Most routes in one price list: matching is a linear scan per request.
pub const ROUTES_MAX: usize = 1_024;
/// Longest host or path pattern.
pub const PATTERN_BYTES_MAX: usize = 512;
/// Most payer ids in one allow or deny list.
pub const PAYERS_LISTED_MAX: usize = 4_096;
/// Largest price list file read.
pub const PRICE_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// The free paths when the price list names none.
pub const FREE_PATHS_DEFAULT: [&str; 4] = ["/robots.txt", "/sitemap.xml", "/sitemap*.xml", "/.well-known/*"];

/// The file as written (all optional but the routes; flags fill the rest).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceFile {
    pub upstream: Option<String>,
    pub network: Option<String>,
    pub facilitator: Option<String>,
    pub listen: Option<String>,
    pub pay_to: Option<String>,
    pub asset: Option<String>,
    /// The scheme of the URLs crawlers fetch (`https` behind a TLS terminator).
    pub public_scheme: Option<String>,
    pub description: Option<String>,
    pub registration_url: Option<String>,
    #[serde(default)]
    pub payment_id_required: bool,
    #[serde(default)]
    pub assets: BTreeMap<String, u8>,
    pub free: Option<Vec<String>>,
    pub unmatched: Option<Unmatched>,
    #[serde(default)]
    pub payers: PayerRules,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteFile>,
    /// Where the x402 discovery listing of the priced routes is served.
    pub discovery_path: Option<String>,
}

/// What happens to a request no route prices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// Passed to the origin unpaid.
    #[default]
    Free,
    /// Refused with 403.
    Deny,
}

/// Per-payer rules: a payer in `deny` is refused; a non-empty `allow` admits only its payers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayerRules {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

impl PayerRules {
    /// Whether `payer` may buy under these rules.
    pub fn admits(&self, payer: &str) -> bool {
        !self.deny.iter().any(|p| p == payer) && (self.allow.is_empty() || self.allow.iter().any(|p| p == payer))
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub connections_max: Option<usize>,
    pub header_bytes_max: Option<usize>,
    pub headers_max: Option<usize>,
    pub request_body_bytes_max: Option<usize>,
    pub origin_timeout_ms: Option<u64>,
    pub facilitator_timeout_ms: Option<u64>,
    pub origin_connections_idle_max: Option<usize>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Option<String>,
    pub host: Option<String>,
    pub path: String,
    pub price: Option<String>,
    pub price_min: Option<String>,
    pub price_max: Option<String>,
    pub asset: Option<String>,
    pub pay_to: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub free: bool,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

/// What one route charges, in smallest units of `asset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Price {
    /// Every successful response costs exactly this.
    Exact(u64),
    /// The offer is `max`; the origin may narrow the charge to `min..=max` per response.
    Range { min: u64, max: u64 },
}

impl Price {
    /// What the 402 offers (and the crawler commits): the most a response can cost.
    pub fn offer(&self) -> u64 {
        match *self {
            Price::Exact(price) => price,
            Price::Range { max, .. } => max,
        }
    }
}

/// One priced (or free) route, parsed.
#[derive(Clone, Debug)]
pub struct Route {
    /// The metrics label: `name`, or the host and path pattern.
    pub name: String,
    pub host: Option<Pattern>,
    pub path: Pattern,
    /// `None`: free.
    pub price: Option<Price>,
    pub asset: String,
    pub scale: u8,
    pub pay_to: String,
    pub description: String,
    pub payers: PayerRules,
}

/// The bounds the gateway holds itself to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub connections_max: usize,
    pub header_bytes_max: usize,
    pub headers_max: usize,
    /// Largest request body forwarded to the origin (larger: 413).
    pub request_body_bytes_max: usize,
    /// Longest wait for the origin's response head.
    pub origin_timeout: Duration,
    /// Longest wait for one facilitator call.
    pub facilitator_timeout: Duration,
    /// Idle keep-alive connections kept to the origin.
    pub origin_connections_idle_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_max: 1_024,
            header_bytes_max: 16 * 1024,
            headers_max: 64,
            request_body_bytes_max: 1024 * 1024,
            origin_timeout: Duration::from_secs(30),
            facilitator_timeout: Duration::from_secs(10),
            origin_connections_idle_max: 256,
        }
    }
}

/// The whole gateway configuration, checked.
#[derive(Clone, Debug)]
pub struct GateConfig {
    pub upstream: String,
    pub network: String,
    /// The remote facilitator (`None` inside `tally serve`: in process).
    pub facilitator: Option<String>,
    pub listen: String,
    pub public_scheme: String,
    pub registration_url: Option<String>,
    pub payment_id_required: bool,
    pub free: Vec<Pattern>,
    pub unmatched: Unmatched,
    pub payers: PayerRules,
    pub routes: Vec<Route>,
    pub limits: Limits,
    pub discovery_path: String,
    /// The asset scales the prices were parsed with (checked against the ledger's).
    pub assets: BTreeMap<String, u8>,
}

/// Why a price list is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{0}")]
    Toml(String),
    #[error("{0}")]
    Invalid(String),
}

/// What the command line says, overriding the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub upstream: Option<String>,
    pub network: Option<String>,
    pub facilitator: Option<String>,
    pub listen: Option<String>,
}

/// The gateway's default listen address.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8403";
/// Where the discovery listing is served by default (a free path).
pub const DISCOVERY_PATH_DEFAULT: &str = "/.well-known/x402/resources";

impl GateConfig {
    /// Reads and checks a price list file.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<GateConfig, ConfigError> {
        let read_error = |reason: String| ConfigError::Read { path: path.display().to_string(), reason };
        let size = std::fs::metadata(path).map_err(|e| read_error(e.to_string()))?.len();
        if size > PRICE_FILE_BYTES_MAX {
            return Err(read_error(format!("{size} bytes, more than {PRICE_FILE_BYTES_MAX}")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| read_error(e.to_string()))?;
        GateConfig::parse(&text, overrides)
    }

    /// Parses and checks price list text.
    pub fn parse(text: &str, overrides: &Overrides) -> Result<GateConfig, ConfigError> {
        let file: PriceFile = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        GateConfig::from_file(file, overrides)
    }

    pub fn from_file(file: PriceFile, overrides: &Overrides) -> Result<GateConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid(message);
        let upstream = overrides
            .upstream
            .clone()
            .or(file.upstream)
            .ok_or_else(|| invalid("no upstream: pass --upstream or set `upstream`".into()))?;
        if !(upstream.starts_with("http://")) {
            return Err(invalid(format!(
                "upstream {upstream:?} must be an http:// URL (the origin beside the gateway)"
            )));
        }
        let network = overrides.network.clone().or(file.network).unwrap_or_else(|| "tally:local".into());
        let public_scheme = file.public_scheme.unwrap_or_else(|| "http".into());
        if public_scheme != "http" && public_scheme != "https" {
            return Err(invalid(format!("public_scheme must be http or https, not {public_scheme:?}")));
        }
        if file.routes.len() > ROUTES_MAX {
            return Err(invalid(format!("{} routes, more than {ROUTES_MAX}", file.routes.len())));
        }
        for (code, scale) in &file.assets {
            tally_core::amount::Asset::new(code, *scale, true).map_err(|e| invalid(format!("asset {code}: {e}")))?;
        }
        let check_payers = |rules: &PayerRules, what: &str| {
            if rules.allow.len() > PAYERS_LISTED_MAX || rules.deny.len() > PAYERS_LISTED_MAX {
                return Err(invalid(format!("{what}: more than {PAYERS_LISTED_MAX} payers listed")));
            }
            Ok(())
        };
        check_payers(&file.payers, "payers")?;

        let mut routes = Vec::with_capacity(file.routes.len());
        for (index, route) in file.routes.into_iter().enumerate() {
            let at = format!("route {} ({})", index + 1, route.path);
            let host = route.host.as_deref().map(|h| Pattern::new(&h.to_ascii_lowercase())).transpose();
            let host = host.map_err(|e| invalid(format!("{at}: host: {e}")))?;
            let path = Pattern::new(&route.path).map_err(|e| invalid(format!("{at}: path: {e}")))?;
            if !route.path.starts_with('/') {
                return Err(invalid(format!("{at}: a path pattern starts with /")));
            }
            check_payers(&PayerRules { allow: route.allow.clone(), deny: route.deny.clone() }, &at)?;
            let asset = route.asset.or_else(|| file.asset.clone()).unwrap_or_else(|| "USD".into());
            let pay_to = route.pay_to.or_else(|| file.pay_to.clone()).unwrap_or_default();
            let scale = file.assets.get(&asset).copied();
            let price = if route.free {
                if route.price.is_some() || route.price_max.is_some() {
                    return Err(invalid(format!("{at}: a free route has no price")));
                }
                None
            } else {
                let scale = scale.ok_or_else(|| {
                    invalid(format!("{at}: asset {asset} has no scale: add `[assets] {asset} = <decimals>`"))
                })?;
                let units = |text: &str| -> Result<u64, ConfigError> {
                    let units = parse_amount(text, scale).map_err(|e| invalid(format!("{at}: price {text:?}: {e}")))?;
                    let units =
                        u64::try_from(units).map_err(|_| invalid(format!("{at}: price {text:?} is too large")))?;
                    if units == 0 {
                        return Err(invalid(format!("{at}: a price of 0 is a free route (`free = true`)")));
                    }
                    Ok(units)
                };
                match (&route.price, &route.price_min, &route.price_max) {
                    (Some(exact), None, None) => Some(Price::Exact(units(exact)?)),
                    (None, min, Some(max)) => {
                        let max = units(max)?;
                        let min = min.as_deref().map(units).transpose()?.unwrap_or(1);
                        if min > max {
                            return Err(invalid(format!("{at}: price_min is above price_max")));
                        }
                        Some(Price::Range { min, max })
                    }
                    _ => return Err(invalid(format!("{at}: give `price`, or `price_max` (and `price_min`)"))),
                }
            };
            if price.is_some() && pay_to.is_empty() {
                return Err(invalid(format!("{at}: no payee: set `pay_to` on the route or at the top")));
            }
            let name = route.name.unwrap_or_else(|| format!("{}{}", route.host.as_deref().unwrap_or(""), route.path));
            routes.push(Route {
                name,
                host,
                path,
                price,
                asset,
                scale: scale.unwrap_or(0),
                pay_to,
                description: route.description.or_else(|| file.description.clone()).unwrap_or_default(),
                payers: PayerRules { allow: route.allow, deny: route.deny },
            });
        }
        let free = match file.free {
            Some(paths) => paths,
            None => FREE_PATHS_DEFAULT.iter().map(|p| (*p).to_owned()).collect(),
        };
        if free.len() > ROUTES_MAX {
            return Err(invalid(format!("{} free paths, more than {ROUTES_MAX}", free.len())));
        }
        let free = free.iter().map(|p| Pattern::new(p).map_err(|e| invalid(format!("free path {p:?}: {e}"))));
        let free = free.collect::<Result<Vec<_>, _>>()?;
        let discovery_path = file.discovery_path.unwrap_or_else(|| DISCOVERY_PATH_DEFAULT.into());
        if !discovery_path.starts_with('/') {
            return Err(invalid("discovery_path starts with /".into()));
        }
        let limits = limits(&file.limits)?;
        Ok(GateConfig {
            upstream: upstream.trim_end_matches('/').to_owned(),
            network,
            facilitator: overrides.facilitator.clone().or(file.facilitator),
            listen: overrides.listen.clone().or(file.listen).unwrap_or_else(|| LISTEN_DEFAULT.into()),
            public_scheme,
            registration_url: file.registration_url,
            payment_id_required: file.payment_id_required,
            free,
            unmatched: file.unmatched.unwrap_or_default(),
            payers: file.payers,
            routes,
            limits,
            discovery_path,
            assets: file.assets,
        })
    }
}

/// Longest origin or facilitator timeout a price list may set.
pub const TIMEOUT_MS_MAX: u64 = 10 * 60 * 1000;

fn limits(file: &LimitsFile) -> Result<Limits, ConfigError> {
    let default = Limits::default();
    for (name, value) in
        [("origin_timeout_ms", file.origin_timeout_ms), ("facilitator_timeout_ms", file.facilitator_timeout_ms)]
    {
        if value.is_some_and(|ms| ms > TIMEOUT_MS_MAX) {
            return Err(ConfigError::Invalid(format!("limits.{name} is at most {TIMEOUT_MS_MAX} (10 minutes)")));
        }
    }
    let positive = |name: &str, value: Option<u64>, default: u64| -> Result<u64, ConfigError> {
        match value {
            Some(0) => Err(ConfigError::Invalid(format!("limits.{name} must be positive"))),
            Some(value) => Ok(value),
            None => Ok(default),
        }
    };
    let as_u64 = |v: Option<usize>| v.map(|v| v as u64);
    Ok(Limits {
        connections_max: positive("connections_max", as_u64(file.connections_max), default.connections_max as u64)?
            as usize,
        header_bytes_max: positive("header_bytes_max", as_u64(file.header_bytes_max), default.header_bytes_max as u64)?
            as usize,
        headers_max: positive("headers_max", as_u64(file.headers_max), default.headers_max as u64)? as usize,
        request_body_bytes_max: positive(
            "request_body_bytes_max",
            as_u64(file.request_body_bytes_max),
            default.request_body_bytes_max as u64,
        )? as usize,
        origin_timeout: Duration::from_millis(positive(
            "origin_timeout_ms",
            file.origin_timeout_ms,
            default.origin_timeout.as_millis() as u64,
        )?),
        facilitator_timeout: Duration::from_millis(positive(
            "facilitator_timeout_ms",
            file.facilitator_timeout_ms,
            default.facilitator_timeout.as_millis() as u64,
        )?),
        origin_connections_idle_max: positive(
            "origin_connections_idle_max",
            as_u64(file.origin_connections_idle_max),
            default.origin_connections_idle_max as u64,
        )? as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        upstream = "http://127.0.0.1:8080"
        pay_to = "daily.example"
        [assets]
        USD = 6
        [[route]]
        path = "/articles/*"
        price = "0.01"
        [[route]]
        host = "api.daily.example"
        path = "/search"
        price_max = "0.05"
        price_min = "0.001"
        deny = ["bad-crawler"]
    "#;

    #[test]
    fn prices_are_parsed_into_smallest_units_exactly() {
        let config = GateConfig::parse(FILE, &Overrides::default()).unwrap();
        assert_eq!(config.routes[0].price, Some(Price::Exact(10_000)));
        assert_eq!(config.routes[1].price, Some(Price::Range { min: 1_000, max: 50_000 }));
        assert_eq!(config.routes[1].name, "api.daily.example/search");
        assert_eq!(config.free.len(), FREE_PATHS_DEFAULT.len());
        assert!(!config.routes[1].payers.admits("bad-crawler"));
        assert!(config.routes[1].payers.admits("good-crawler"));
    }

    #[test]
    fn a_price_list_that_cannot_be_read_exactly_is_refused() {
        let bad = |replace: &str, with: &str| {
            let text = FILE.replacen(replace, with, 1);
            GateConfig::parse(&text, &Overrides::default()).unwrap_err().to_string()
        };
        assert!(bad("\"0.01\"", "\"0.0000001\"").contains("decimal places"), "{}", bad("\"0.01\"", "\"0.0000001\""));
        assert!(bad("\"0.01\"", "\"0\"").contains("free route"));
        assert!(bad("\"0.01\"", "\"-1\"").contains("price"));
        assert!(bad("USD = 6", "EUR = 2").contains("has no scale"));
        assert!(bad("price_min = \"0.001\"", "price_min = \"0.06\"").contains("above"));
        assert!(bad("upstream = \"http://127.0.0.1:8080\"", "").contains("no upstream"));
        assert!(bad("pay_to = \"daily.example\"", "").contains("no payee"));
        assert!(GateConfig::parse("surprise = 1", &Overrides::default()).is_err(), "unknown keys are refused");
    }
}
