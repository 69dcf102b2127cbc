//! Human tables (comfy-table) and `--json` output.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};

/// A table with a header row; columns named in `right` are right-aligned
/// (amounts and counts).
pub fn table(header: &[&str], right: &[&str], rows: Vec<Vec<String>>) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    for (i, name) in header.iter().enumerate() {
        if right.contains(name)
            && let Some(column) = table.column_mut(i)
        {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

pub fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("JSON values always serialize"));
}

/// Prints a listing either as a JSON array (one object per item) or as a
/// table (one row per item): the shape every `list` command shares.
pub fn print_listing<T>(
    json: bool,
    items: &[T],
    to_json: impl Fn(&T) -> serde_json::Value,
    header: &[&str],
    right: &[&str],
    to_row: impl Fn(&T) -> Vec<String>,
) {
    if json {
        print_json(&serde_json::Value::Array(items.iter().map(to_json).collect()));
    } else {
        println!("{}", table(header, right, items.iter().map(to_row).collect()));
    }
}
