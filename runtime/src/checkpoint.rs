//! safetensors files: load parameters by name, save them atomically (temporary file, then
//! rename, so a half-written file is never taken for a checkpoint).

use crate::interp::{check_params, RunError};
use crate::tensor::{Data, HostTensor};
use muse_compiler::ir::Graph;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::Path;

fn file_err(path: &Path, what: impl std::fmt::Display) -> RunError {
    RunError::File(format!("{}: {what}", path.display()))
}

/// Reads every tensor of a safetensors file. Floats keep the precision of their width (an
/// f64 tensor stays f64, for the interpreter's `--f64`; an f32 device rounds as it uploads);
/// integer types become i32 (an out-of-range value is an error); bool and u8 become bool.
/// A file muse wrote is verified against the checksum in its metadata first (files of other
/// tools have none and load as they are).
pub fn load(path: &Path) -> Result<HashMap<String, HostTensor>, RunError> {
    load_with_metadata(path).map(|(t, _)| t)
}

/// [`load`], with the file's metadata (`__metadata__`: string keys and values).
pub fn load_with_metadata(path: &Path) -> Result<(HashMap<String, HostTensor>, Metadata), RunError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| file_err(path, format!("not a valid safetensors file ({e})")))?;
    let metadata: Metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| file_err(path, format!("not a valid safetensors file ({e})")))?;
    if let Some(want) = metadata.get(CHECKSUM_KEY) {
        let views: Vec<(String, TensorView)> = st.tensors();
        let have = checksum(views.iter().map(|(n, v)| (n.as_str(), v.data())));
        if *want != have {
            return Err(file_err(
                path,
                format!("the tensors' checksum is {have}, but {want} was written: the file is damaged"),
            ));
        }
    }
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let t = decode(&view).map_err(|e| file_err(path, format!("tensor `{name}`: {e}")))?;
        out.insert(name, t);
    }
    Ok((out, metadata))
}

/// A safetensors file's metadata.
pub type Metadata = std::collections::BTreeMap<String, String>;

/// The metadata key of the checksum muse writes into every file it saves.
pub const CHECKSUM_KEY: &str = "muse.crc32";

/// CRC-32 of every tensor's name and bytes in name order: independent of where the format
/// places the tensors in the file.
fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut sorted: Vec<(&str, &[u8])> = tensors.collect();
    sorted.sort_by_key(|(n, _)| *n);
    let mut h = crc32fast::Hasher::new();
    for (name, data) in sorted {
        h.update(name.as_bytes());
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(data);
    }
    format!("{:08x}", h.finalize())
}

fn decode(v: &TensorView) -> Result<HostTensor, String> {
    let shape = v.shape().to_vec();
    let b = v.data();
    let words = |n: usize| b.chunks_exact(n);
    let data = match v.dtype() {
        Dtype::F32 => Data::F(words(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64).collect()),
        Dtype::F64 => Data::F(words(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()),
        Dtype::F16 => Data::F(words(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])) as f64).collect()),
        Dtype::BF16 => {
            Data::F(words(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64).collect())
        }
        Dtype::I32 => Data::I(words(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()),
        Dtype::I64 => Data::I(
            words(8)
                .map(|c| {
                    i32::try_from(i64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .map_err(|_| "an i64 value does not fit in i32".to_string())
                })
                .collect::<Result<_, _>>()?,
        ),
        Dtype::BOOL | Dtype::U8 => Data::B(b.iter().map(|&x| x != 0).collect()),
        other => {
            return Err(format!("element type {other:?} is not supported (use f32, f16, bf16, f64, i32, i64 or bool)"))
        }
    };
    Ok(HostTensor { shape, data })
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: normalise.
            let mut e = 127 - 15 + 1;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Loads a model's parameters from a safetensors file: each must be present with its
/// declared shape; extra tensors in the file are ignored.
pub fn load_params(g: &Graph, path: &Path) -> Result<HashMap<String, HostTensor>, RunError> {
    let all = load(path)?;
    let mut params = HashMap::new();
    for p in &g.params {
        let t = all
            .get(&p.name)
            .ok_or_else(|| RunError::File(format!("{}: parameter `{}` is not in the file", path.display(), p.name)))?;
        params.insert(p.name.clone(), t.clone());
    }
    check_params(g, &params).map_err(|e| RunError::File(format!("{}: {e}", path.display())))?;
    Ok(params)
}

/// How wide floats are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatWidth {
    /// f32 (checkpoints, and every value an f32 device computed).
    F32,
    /// f64 (what the interpreter computed with `--f64`).
    F64,
}

/// Writes tensors (floats as f32) to `path` atomically: a temporary file in the same
/// folder, flushed to disk, then renamed over `path`.
pub fn save(path: &Path, tensors: &HashMap<String, HostTensor>) -> Result<(), RunError> {
    save_as(path, tensors, FloatWidth::F32)
}

/// Writes tensors with floats of `width` to `path` atomically (see [`save`]).
pub fn save_as(path: &Path, tensors: &HashMap<String, HostTensor>, width: FloatWidth) -> Result<(), RunError> {
    save_with(path, tensors, width, &Metadata::new())
}

/// Writes tensors with `metadata` (and the checksum [`load`] verifies) to `path` atomically.
pub fn save_with(
    path: &Path,
    tensors: &HashMap<String, HostTensor>,
    width: FloatWidth,
    metadata: &Metadata,
) -> Result<(), RunError> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let bufs: Vec<(Dtype, Vec<u8>)> = names
        .iter()
        .map(|n| match &tensors[*n].data {
            Data::F(v) if width == FloatWidth::F64 => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Data::F(v) => (Dtype::F32, v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect()),
            Data::I(v) => (Dtype::I32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Data::B(v) => (Dtype::BOOL, v.iter().map(|&x| u8::from(x)).collect()),
        })
        .collect();
    let mut views = Vec::new();
    for (n, (dt, b)) in names.iter().zip(&bufs) {
        let v = TensorView::new(*dt, tensors[*n].shape.clone(), b).map_err(|e| file_err(path, e))?;
        views.push((n.as_str(), v));
    }
    let mut meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    meta.insert(CHECKSUM_KEY.into(), checksum(names.iter().zip(&bufs).map(|(n, (_, b))| (n.as_str(), b.as_slice()))));
    let bytes = safetensors::serialize(views, &Some(meta)).map_err(|e| file_err(path, e))?;
    crate::cache::write_atomic(path, &bytes).map_err(|e| file_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_decoding() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
    }

    #[test]
    fn floats_keep_the_width_they_are_saved_in() {
        let dir = std::env::temp_dir().join(format!("muse-st64-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.safetensors");
        let t: HashMap<String, HostTensor> = [("x".to_string(), HostTensor::f(&[2], vec![0.1, 1.0 / 3.0]))].into();
        save_as(&path, &t, FloatWidth::F64).unwrap();
        assert_eq!(load(&path).unwrap(), t);
        save(&path, &t).unwrap();
        assert_eq!(load(&path).unwrap()["x"].to_f64(), vec![0.1f32 as f64, (1.0f32 / 3.0) as f64]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn round_trip_and_corrupt_file() {
        let dir = std::env::temp_dir().join(format!("muse-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.safetensors");
        let mut t = HashMap::new();
        t.insert("a.weight".to_string(), HostTensor::f(&[2, 2], vec![1.0, -2.5, 3.25, 0.0]));
        t.insert("ids".to_string(), HostTensor::i(&[3], vec![1, 2, -3]));
        save(&path, &t).unwrap();
        assert_eq!(load(&path).unwrap(), t);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("not a valid safetensors file"), "{e}");
        // Damaged in place at the same size: one bit of one tensor's data.
        save(&path, &t).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 5;
        bytes[at] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("checksum") && e.contains("damaged"), "{e}");
        // A file without muse's checksum (another tool's) loads as it is.
        let view = TensorView::new(Dtype::F32, vec![1], &[0, 0, 128, 63]).unwrap();
        std::fs::write(&path, safetensors::serialize([("x", view)], &None).unwrap()).unwrap();
        assert_eq!(load(&path).unwrap()["x"].to_f64(), vec![1.0]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
