//! Random inputs for a model, for `muse run --inputs random` and the tests: f32 inputs
//! standard normal, bool inputs fair coins, and i32 inputs uniform over the range their
//! uses accept (the rows of the table they index, or the size of the axis they are
//! compared with), so that random ids never index out of range.

use crate::rng;
use crate::tensor::HostTensor;
use muse_compiler::ir::{BinaryOp, DType, Graph, NodeIndex, Op};
use std::collections::HashMap;

/// The range `0..bound` random ids are drawn from for each i32 input: its index limit where
/// the graph uses it as an index, else `0..2`.
pub fn index_bounds(g: &Graph) -> HashMap<String, i64> {
    let limits = index_limits(g);
    g.inputs
        .iter()
        .filter(|(_, n)| g.ty(*n).dtype == DType::I32)
        .map(|(name, _)| (name.clone(), limits.get(name).copied().unwrap_or(2)))
        .collect()
}

/// For each i32 input used as an index, one past the largest valid value: the rows of the
/// table it gathers from or scatters into, or the size of the axis an iota compares it with.
pub fn index_limits(g: &Graph) -> HashMap<String, i64> {
    let mut out = HashMap::new();
    for (name, n) in &g.inputs {
        if g.ty(*n).dtype != DType::I32 {
            continue;
        }
        let mut bound: Option<i64> = None;
        let mut tighten = |b: Option<i64>| {
            if let Some(b) = b {
                bound = Some(bound.map_or(b, |x| x.min(b)));
            }
        };
        // Follow the value through views to the ops that interpret it.
        let mut stack = vec![*n];
        let mut seen = std::collections::HashSet::new();
        while let Some(v) = stack.pop() {
            if !seen.insert(v) {
                continue;
            }
            for u in g.users(v) {
                let ops = g.operands(u);
                match &g.node(u).op {
                    op if op.is_view() => stack.push(u),
                    Op::Gather if ops[1] == v => tighten(g.ty(ops[0]).shape.0[0].as_known()),
                    Op::ScatterAdd { rows } if ops[0] == v => tighten(rows.as_known()),
                    Op::Binary(BinaryOp::Eq) => {
                        let other = if ops[0] == v { ops[1] } else { ops[0] };
                        tighten(iota_extent(g, other));
                    }
                    _ => {}
                }
            }
        }
        if let Some(b) = bound {
            out.insert(name.clone(), b.max(1));
        }
    }
    out
}

/// The extent of the iota behind `n` (through views), if `n` is one.
fn iota_extent(g: &Graph, mut n: NodeIndex) -> Option<i64> {
    loop {
        let node = g.node(n);
        match &node.op {
            Op::Iota { axis } => return node.ty.shape.0[*axis].as_known(),
            op if op.is_view() => n = g.operands(n)[0],
            _ => return None,
        }
    }
}

/// Random inputs for every input of `g`, with every symbolic size (the batch) set to `batch`.
pub fn random_inputs(g: &Graph, batch: usize, seed: u64) -> HashMap<String, HostTensor> {
    let bounds = index_bounds(g);
    let mut out = HashMap::new();
    for (k, (name, n)) in g.inputs.iter().enumerate() {
        let ty = g.ty(*n);
        let shape: Vec<usize> =
            ty.shape.0.iter().map(|d| d.eval(&|_| Some(batch as i64)).expect("sizes fit") as usize).collect();
        let len: usize = shape.iter().product();
        let key = rng::stream_key(seed, 0x1000 + k as u64);
        let t = match ty.dtype {
            DType::F32 => HostTensor::f(&shape, (0..len as u64).map(|i| rng::normal(key, i) as f32 as f64).collect()),
            DType::Bool => HostTensor::b(&shape, (0..len as u64).map(|i| rng::uniform(key, i) < 0.5).collect()),
            DType::I32 => {
                let hi = bounds[name] as f64;
                HostTensor::i(&shape, (0..len as u64).map(|i| (rng::uniform(key, i) * hi) as i32).collect())
            }
        };
        out.insert(name.clone(), t);
    }
    out
}

/// A model's inputs taken by name from `file` (a safetensors file's tensors, for `muse run
/// --inputs FILE`): each input must be there with its element kind and rank, its known sizes
/// as declared; the batch (the value of the symbolic sizes) is read off the shapes and must
/// agree across inputs. Tensors of other names are ignored.
pub fn file_inputs(
    g: &Graph,
    file: &HashMap<String, HostTensor>,
) -> Result<(HashMap<String, HostTensor>, usize), String> {
    let mut batch: Option<(i64, String)> = None;
    let mut out = HashMap::new();
    for (name, n) in &g.inputs {
        let ty = g.ty(*n);
        let t = file.get(name).ok_or_else(|| {
            let mut have: Vec<&String> = file.keys().collect();
            have.sort();
            format!(
                "input `{name}` is not in the file (it has: {})",
                have.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )
        })?;
        let kind_ok = matches!(
            (ty.dtype, &t.data),
            (DType::F32, crate::tensor::Data::F(_))
                | (DType::I32, crate::tensor::Data::I(_))
                | (DType::Bool, crate::tensor::Data::B(_))
        );
        if !kind_ok {
            return Err(format!("input `{name}` is {} in the model but {} in the file", ty.dtype, t.dtype()));
        }
        if t.shape.len() != ty.shape.0.len() {
            return Err(format!(
                "input `{name}` has {} axes in the model ({}) but {} in the file ({:?})",
                ty.shape.0.len(),
                ty.shape,
                t.shape.len(),
                t.shape
            ));
        }
        for (d, &have) in ty.shape.0.iter().zip(&t.shape) {
            if let [sym] = &d.syms[..] {
                if d.coeff == 1 {
                    match &batch {
                        Some((b, from)) if *b != have as i64 => {
                            return Err(format!("`{sym}` is {b} in input `{from}` but {have} in input `{name}`"))
                        }
                        Some(_) => {}
                        None => batch = Some((have as i64, name.clone())),
                    }
                }
            }
        }
        out.insert(name.clone(), t.clone());
    }
    let b = batch.map_or(1, |(b, _)| b);
    for (name, n) in &g.inputs {
        let ty = g.ty(*n);
        let want: Vec<usize> = ty.shape.0.iter().map(|d| d.eval(&|_| Some(b)).unwrap_or(-1) as usize).collect();
        if out[name].shape != want {
            return Err(format!(
                "input `{name}` must be {} = {want:?} at batch {b}, not {:?}",
                ty.shape, out[name].shape
            ));
        }
    }
    if b < 1 {
        return Err("the inputs have a batch of 0".into());
    }
    Ok((out, b as usize))
}
