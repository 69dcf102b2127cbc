//! Settlement configuration: the operator's policy and the rails' settings.
//!
//! It is read from the `[settlement]` table of `tally serve`'s TOML file.
//! Amounts are decimal strings in the asset's display unit (`"1.00"`),
//! parsed with the asset's scale when a plan is made, never floats. The
//! treasury key is read from a file or an environment variable and is never
//! logged or printed.
//!
//! ```toml
//! [settlement]
//! fee_bps = 25                    # operator fee per payout
//! schedule = "daily@23:30"        # or "every 15m"; absent: only on demand
//!
//! [settlement.assets.USDC]
//! rail = "evm"
//! payout_min = "1.00"
//!
//! [settlement.assets.EUR]
//! rail = "iso20022"
//! payout_min = "10.00"
//!
//! [settlement.evm]
//! rpc_url = "http://127.0.0.1:8545"
//! chain_id = 31337
//! token = "0x…"
//! token_decimals = 6
//! payout_contract = "0x…"
//! treasury_key_file = "/etc/tally/treasury.key"   # or treasury_key_env = "TALLY_TREASURY_KEY"
//!
//! [settlement.iso20022]
//! debtor_name = "Example Operator GmbH"
//! debtor_iban = "DE89370400440532013000"
//! debtor_bic = "COBADEFFXXX"
//!
//! [settlement.nacha]
//! immediate_destination = "011000015"
//! immediate_destination_name = "FEDERAL RESERVE BANK"
//! immediate_origin = "1234567890"
//! immediate_origin_name = "EXAMPLE OPERATOR"
//! company_name = "EXAMPLE OPERATOR"
//! company_id = "1234567890"
//! odfi_routing = "01100001"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tally_core::Rail;
use tally_core::settlement::BPS_ONE;

use crate::schedule::Schedule;

/// Bounds of the driver.
pub const PAYOUTS_PER_EVM_TX_DEFAULT: usize = 100;
/// Transfers per bank file; more payouts make more files for the epoch.
pub const TRANSFERS_PER_BANK_FILE_DEFAULT: usize = 10_000;

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SettlementConfig {
    #[serde(default)]
    pub fee_bps: u32,
    /// `daily@HH:MM` (UTC) or `every <n>m|h`.
    pub schedule: Option<String>,
    /// Where bank files are placed; default `<data dir>/outbox`.
    pub outbox_dir: Option<PathBuf>,
    #[serde(default)]
    pub assets: BTreeMap<String, AssetRailConfig>,
    pub evm: Option<EvmSettings>,
    pub iso20022: Option<Iso20022Settings>,
    pub nacha: Option<NachaSettings>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetRailConfig {
    /// `evm`, `iso20022` or `nacha`.
    pub rail: String,
    /// Smallest payout, in the asset's display unit; default 0 (any amount
    /// the rail can represent).
    #[serde(default)]
    pub payout_min: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvmSettings {
    pub rpc_url: String,
    pub chain_id: u64,
    pub token: String,
    pub token_decimals: u8,
    pub payout_contract: String,
    pub treasury_key_file: Option<PathBuf>,
    pub treasury_key_env: Option<String>,
    #[serde(default = "default_gas_per_tx_max")]
    pub gas_per_tx_max: u64,
    #[serde(default = "default_payouts_per_tx")]
    pub payouts_per_tx_max: usize,
    #[serde(default = "default_receipt_timeout_s")]
    pub receipt_timeout_s: u64,
}

fn default_gas_per_tx_max() -> u64 {
    10_000_000
}
fn default_payouts_per_tx() -> usize {
    PAYOUTS_PER_EVM_TX_DEFAULT
}
fn default_receipt_timeout_s() -> u64 {
    120
}

impl EvmSettings {
    pub fn receipt_timeout(&self) -> Duration {
        Duration::from_secs(self.receipt_timeout_s)
    }

    /// Reads the treasury key: the file (trimmed) or the environment
    /// variable. The error never contains the key.
    pub fn treasury_key(&self) -> Result<String, ConfigError> {
        if let Some(path) = &self.treasury_key_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Invalid(format!("treasury key file {}: {e}", path.display())))?;
            return Ok(text.trim().to_owned());
        }
        if let Some(name) = &self.treasury_key_env {
            return std::env::var(name)
                .map(|v| v.trim().to_owned())
                .map_err(|_| ConfigError::Invalid(format!("environment variable {name} (treasury key) is not set")));
        }
        Err(ConfigError::Invalid("settlement.evm needs treasury_key_file or treasury_key_env".into()))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Iso20022Settings {
    pub debtor_name: String,
    pub debtor_iban: String,
    pub debtor_bic: Option<String>,
    /// Business days are the bank's concern; Tally asks for execution this
    /// many calendar days after the file is prepared (never a date in the
    /// past, however late a settlement runs after its seal). Default 1.
    #[serde(default = "default_execution_delay_days")]
    pub execution_delay_days: u8,
    #[serde(default = "default_transfers_per_file")]
    pub transfers_per_file_max: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NachaSettings {
    pub immediate_destination: String,
    pub immediate_destination_name: String,
    pub immediate_origin: String,
    pub immediate_origin_name: String,
    pub company_name: String,
    pub company_id: String,
    /// The originating DFI: the first 8 digits of its routing number.
    pub odfi_routing: String,
    /// `CCD` (companies, the default) or `PPD` (consumers).
    #[serde(default = "default_sec_code")]
    pub sec_code: String,
    #[serde(default = "default_entry_description")]
    pub entry_description: String,
    #[serde(default = "default_execution_delay_days")]
    pub execution_delay_days: u8,
    #[serde(default = "default_transfers_per_file")]
    pub transfers_per_file_max: usize,
}

fn default_execution_delay_days() -> u8 {
    1
}
fn default_transfers_per_file() -> usize {
    TRANSFERS_PER_BANK_FILE_DEFAULT
}
fn default_sec_code() -> String {
    "CCD".into()
}
fn default_entry_description() -> String {
    "PAYOUT".into()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("settlement configuration: {0}")]
    Invalid(String),
}

impl SettlementConfig {
    /// Checks everything that does not need the ledger or the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.fee_bps > BPS_ONE {
            return invalid(format!("fee_bps {} exceeds 10000", self.fee_bps));
        }
        if let Some(schedule) = &self.schedule {
            Schedule::parse(schedule).map_err(ConfigError::Invalid)?;
        }
        let mut evm_assets = 0;
        for (asset, rail) in &self.assets {
            let Some(parsed) = Rail::parse(&rail.rail) else {
                return invalid(format!("asset {asset}: rail must be evm, iso20022 or nacha, got {:?}", rail.rail));
            };
            match parsed {
                Rail::Evm => {
                    evm_assets += 1;
                    if self.evm.is_none() {
                        return invalid(format!("asset {asset} settles on evm but [settlement.evm] is missing"));
                    }
                }
                Rail::Iso20022 | Rail::Nacha => {
                    if asset.len() != 3 || !asset.bytes().all(|b| b.is_ascii_uppercase()) {
                        return invalid(format!(
                            "asset {asset} settles on a bank rail, so it must be an ISO 4217 code"
                        ));
                    }
                    if parsed == Rail::Iso20022 && self.iso20022.is_none() {
                        return invalid(format!(
                            "asset {asset} settles on iso20022 but [settlement.iso20022] is missing"
                        ));
                    }
                    if parsed == Rail::Nacha && (self.nacha.is_none() || asset != "USD") {
                        return invalid(format!("asset {asset}: nacha pays USD only, and needs [settlement.nacha]"));
                    }
                }
            }
        }
        if evm_assets > 1 {
            return invalid("one token is configured, so at most one asset may settle on evm".into());
        }
        if let Some(evm) = &self.evm
            && !(1..=1_000).contains(&evm.payouts_per_tx_max)
        {
            return invalid("evm.payouts_per_tx_max must be 1..=1000".into());
        }
        Ok(())
    }

    pub fn rail_of(&self, asset: &str) -> Option<Rail> {
        self.assets.get(asset).and_then(|a| Rail::parse(&a.rail))
    }
}

/// Decimal places of an ISO 4217 currency's minor unit.
pub fn currency_minor_units(currency: &str) -> u8 {
    match currency {
        "JPY" | "KRW" | "ISK" | "CLP" | "VND" | "XOF" | "XAF" | "UGX" | "PYG" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "LYD" | "IQD" => 3,
        _ => 2,
    }
}
