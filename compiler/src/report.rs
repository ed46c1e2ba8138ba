//! Pass reports: every pass says what it did, so `muse check -v` can show the pipeline.

use std::fmt;
use std::time::Instant;

/// What one pass did to a graph.
#[derive(Clone, Debug, PartialEq)]
pub struct PassReport {
    /// Pass name (`parse`, `elaborate`, `prune`, ...).
    pub name: &'static str,
    /// Nodes before the pass.
    pub nodes_in: usize,
    /// Nodes after the pass.
    pub nodes_out: usize,
    /// Wall time in microseconds.
    pub micros: u128,
    /// One line of pass-specific detail.
    pub note: String,
}

impl fmt::Display for PassReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<10} {:>7} -> {:<7} nodes {:>9.3} ms  {}",
            self.name,
            self.nodes_in,
            self.nodes_out,
            self.micros as f64 / 1e3,
            self.note
        )
    }
}

/// Times a pass from its start.
pub struct PassTimer {
    name: &'static str,
    start: Instant,
    nodes_in: usize,
}

impl PassTimer {
    /// Starts timing pass `name` on a graph of `nodes_in` nodes.
    pub fn start(name: &'static str, nodes_in: usize) -> PassTimer {
        PassTimer { name, start: Instant::now(), nodes_in }
    }
    /// Stops timing and writes the report.
    pub fn finish(self, nodes_out: usize, note: impl Into<String>) -> PassReport {
        PassReport {
            name: self.name,
            nodes_in: self.nodes_in,
            nodes_out,
            micros: self.start.elapsed().as_micros(),
            note: note.into(),
        }
    }
}
