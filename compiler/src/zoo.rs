//! The model files muse ships in `models/` and the smallest config of each that still has
//! every part: what the tests and the GPU check run every model at.

/// The variants of SPEC-models.md section 7, one file each.
pub const MODELS: &[&str] = &[
    "muse_base",
    "muse_small",
    "mamba_concat",
    "mamba_seq_linear_out",
    "mamba_seq_linear_in",
    "mamba_xattn_xz",
    "mamba_then_xattn",
    "mamba_text_a",
    "mamba_text_b",
    "mamba_text_c",
    "mamba_text_d",
    "mamba_text_skip",
    "mamba_parallel",
    "mamba_layer_critic",
    "token_critic",
    "vq_tokenizer",
    "vq_discriminator",
    "shapes_classifier",
];

/// Feature networks imported from PyTorch for evaluation (FID, CLIP score): checked against
/// PyTorch itself at their real sizes (tests/torch_reference.rs), not at tiny configs.
pub const FEATURE_NETWORKS: &[&str] = &["inception_fid", "clip_vit_b32"];

/// The models of [`MODELS`] over pixels rather than image tokens.
pub const IMAGE_MODELS: &[&str] = &["vq_tokenizer", "vq_discriminator", "shapes_classifier"];

/// Options of a model file that take another path through it than its tiny config: each is
/// checked fused against the interpreter too.
pub const OPTIONS: &[(&str, &str, &str)] = &[("vq_tokenizer", "encoder", "patch")];

/// The smallest config of each model that still has every part (`grid` sets the tokens per side).
pub fn tiny(name: &str, grid: &'static str) -> Vec<(&'static str, &'static str)> {
    if name == "vq_tokenizer" {
        return vec![
            ("resolution", "8"),
            ("channels", "4"),
            ("levels", "1"),
            ("codebook", "5"),
            ("code_dim", "3"),
            ("groups", "2"),
            // The PatchGAN generator term, so its path through the frozen discriminator runs.
            ("adversarial", "0.5"),
            ("disc_channels", "4"),
            ("disc_layers", "1"),
        ];
    }
    if name == "shapes_classifier" {
        return vec![("resolution", "8"), ("classes", "5"), ("channels", "4"), ("groups", "2"), ("features", "6")];
    }
    if name == "vq_discriminator" {
        return vec![("resolution", "8"), ("disc_channels", "4"), ("disc_layers", "1"), ("groups", "2")];
    }
    let mut v = vec![
        ("codebook", "7"),
        ("grid", grid),
        ("text_vocab", "11"),
        ("text_len", "3"),
        ("dim", "8"),
        ("depth", "2"),
        ("heads", "2"),
        ("text_depth", "1"),
    ];
    if name.starts_with("mamba") {
        v.push(("d_state", "2"));
    }
    if name == "mamba_xattn_xz" {
        // The built-in example's form; every other Mamba variant runs the causal block.
        v.push(("bidirectional", "true"));
    }
    v
}
