//! Tables that fit the terminal: comfy-table sized to the terminal's width when standard output
//! is one, and to `COLUMNS` (or unlimited) when it is piped.

use comfy_table::{ContentArrangement, Table};

/// An empty table that wraps its cells to fit the terminal's width.
pub fn fitted() -> Table {
    let mut t = Table::new();
    t.set_content_arrangement(ContentArrangement::Dynamic);
    if let Some(w) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<u16>().ok())
        .filter(|w| *w >= 20)
    {
        t.set_width(w);
    }
    t
}
