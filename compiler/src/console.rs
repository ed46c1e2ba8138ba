//! Lines for the user on stderr that never panic: `eprintln!` panics when stderr is a closed
//! pipe (`muse train ... 2>&1 | head`), which would end a training run over a progress line.

use std::io::Write;

/// Writes one line to stderr; a failed write is dropped (there is no one left to read it).
pub fn line(args: std::fmt::Arguments) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// `eprintln!` that never panics: see [`line`].
#[macro_export]
macro_rules! note {
    () => {
        $crate::console::line(format_args!(""))
    };
    ($($t:tt)*) => {
        $crate::console::line(format_args!($($t)*))
    };
}
