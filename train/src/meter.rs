//! Progress bars for long loops (sampling thousands of images, extracting features): drawn
//! on stderr when it is a terminal, silent otherwise so logs stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar over a known number of items.
pub struct Meter(ProgressBar);

impl Meter {
    /// A bar labelled `what` over `total` items.
    pub fn new(what: &str, total: usize) -> Meter {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return Meter::hidden();
        }
        let bar = ProgressBar::new(total as u64);
        let style = ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(what.to_string());
        Meter(bar)
    }

    /// A bar that draws nothing.
    pub fn hidden() -> Meter {
        Meter(ProgressBar::hidden())
    }

    /// `n` more items done.
    pub fn advance(&self, n: usize) {
        self.0.inc(n as u64);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
