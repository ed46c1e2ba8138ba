//! Gradient buckets for data parallelism that overlaps the backward pass (PyTorch DDP's
//! design): the trained gradients, laid side by side in the gradient arena, are cut into
//! stretches of about a bucket's size, and each stretch is summed over the ranks as soon as
//! the last step that writes or reads any gradient in it is done, while the rest of the
//! backward pass runs.
//!
//! Backward passes produce the last layers' gradients first, so stretches are taken from
//! the arena's end (parameters lie in declaration order). Which step finishes a gradient
//! comes from the compiled program itself, not from that assumption: a bucket waits for
//! its latest member, so any order is correct and only the overlap depends on it.

use crate::layout::Layout;
use muse_compiler::ir::NodeIndex;
use muse_compiler::kernel::KernelProgram;
use std::collections::{BTreeMap, HashSet};

/// A stretch of the gradient arena summed over the ranks as one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// First element in the arena.
    pub offset: usize,
    /// Elements.
    pub len: usize,
    /// The step after which every gradient in it is final; the program's step count means
    /// after the pass's copies of gradients computed outside the arena.
    pub after: usize,
}

/// The buffer `n` is stored in: itself, or the value it is a view of (through any chain).
fn owner(aliases: &[&BTreeMap<NodeIndex, NodeIndex>], mut n: NodeIndex) -> NodeIndex {
    for _ in 0..64 {
        match aliases.iter().find_map(|a| a.get(&n)) {
            Some(&m) if m != n => n = m,
            _ => break,
        }
    }
    n
}

/// Cuts the trained gradients of `trained` (parameter, gradient), as `layout` placed them
/// in the gradient arena, into buckets of at least `bucket` elements (a parameter is never
/// split), each with the step that finishes it; in the order they become ready.
pub fn plan(program: &KernelProgram, layout: &Layout, trained: &[(String, NodeIndex)], bucket: usize) -> Vec<Bucket> {
    let end = program.steps.len();
    let aliases = [&program.aliases, &layout.aliases];
    let copied: HashSet<usize> = layout.grad_copies.iter().map(|&(off, _)| off).collect();
    // The last step touching each buffer.
    let mut last: BTreeMap<NodeIndex, usize> = BTreeMap::new();
    for (i, step) in program.steps.iter().enumerate() {
        for n in step.reads().into_iter().chain(step.writes()) {
            last.insert(owner(&aliases, n), i);
        }
    }
    // Each trained gradient in the arena: (offset, length, the step that finishes it).
    let mut members: Vec<(usize, usize, usize)> = trained
        .iter()
        .filter_map(|(name, grad)| {
            let &(off, len) = layout.param_at.get(layout.params.get(name)?)?;
            let ready =
                if copied.contains(&off) { end } else { last.get(&owner(&aliases, *grad)).copied().unwrap_or(end) };
            Some((off, len, ready))
        })
        .filter(|m| m.1 > 0)
        .collect();
    members.sort();
    let mut buckets: Vec<Bucket> = Vec::new();
    let mut open: Option<Bucket> = None;
    for (off, len, ready) in members.into_iter().rev() {
        let b = match open.take() {
            // Contiguous with the open bucket (which lies above it): grow it downwards.
            Some(b) if off + len == b.offset => Bucket { offset: off, len: b.len + len, after: b.after.max(ready) },
            Some(b) => {
                buckets.push(b);
                Bucket { offset: off, len, after: ready }
            }
            None => Bucket { offset: off, len, after: ready },
        };
        if b.len >= bucket.max(1) {
            buckets.push(b);
        } else {
            open = Some(b);
        }
    }
    buckets.extend(open);
    buckets.sort_by_key(|b| (b.after, std::cmp::Reverse(b.offset)));
    buckets
}
