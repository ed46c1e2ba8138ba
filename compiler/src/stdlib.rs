//! The standard library, embedded in the binary so `import "std/..."` works anywhere.

/// File names (under `std/`) and their text.
pub const FILES: &[(&str, &str)] = &[
    ("nn.muse", include_str!("../../models/std/nn.muse")),
    ("attention.muse", include_str!("../../models/std/attention.muse")),
    ("mamba.muse", include_str!("../../models/std/mamba.muse")),
    ("conv.muse", include_str!("../../models/std/conv.muse")),
    ("maskgit.muse", include_str!("../../models/std/maskgit.muse")),
    ("vq.muse", include_str!("../../models/std/vq.muse")),
];

/// The text of `std/<name>`.
pub fn get(name: &str) -> Option<&'static str> {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
