//! The memory planner: intermediate buffers are reused once their last reader has run.
//! Inputs and parameters live outside the plan; requested values live to the end.

use muse_compiler::ir::{DType, Graph, NodeIndex, Op};
use muse_compiler::kernel::{KernelProgram, Step};
use std::collections::{HashMap, HashSet};

/// Where each intermediate value lives, and what that costs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryPlan {
    /// Slot of each planned value.
    pub slot_of: HashMap<NodeIndex, usize>,
    /// Element type and length of each slot.
    pub slots: Vec<(DType, usize)>,
    /// Bytes of all slots: the planned peak of intermediate memory.
    pub peak_bytes: usize,
    /// Bytes the intermediates would take without reuse.
    pub total_bytes: usize,
    /// Element offset of a planned value within its slot (0 unless pinned in an arena).
    pub offset_of: HashMap<NodeIndex, usize>,
    /// The slot that holds the pinned values side by side (see [`plan_pinned`]).
    pub arena: Option<usize>,
}

/// Plans the intermediates of `p` given each value's element count.
pub fn plan(g: &Graph, p: &KernelProgram, requested: &[NodeIndex], len: &dyn Fn(NodeIndex) -> usize) -> MemoryPlan {
    plan_pinned(g, p, requested, len, &[], 0)
}

/// As [`plan`], with `pinned` values (each with its element offset) placed side by side in
/// one f32 slot of `arena_len` elements that is never reused: the gradients of the trained
/// parameters, in the order of the parameters, so that an optimizer updates them all with
/// one kernel. A pinned value must be written by a step of `p`, be f32, and fit.
pub fn plan_pinned(
    g: &Graph,
    p: &KernelProgram,
    requested: &[NodeIndex],
    len: &dyn Fn(NodeIndex) -> usize,
    pinned: &[(NodeIndex, usize)],
    arena_len: usize,
) -> MemoryPlan {
    let keep: HashSet<NodeIndex> = requested.iter().map(|n| p.aliases.get(n).copied().unwrap_or(*n)).collect();
    // Each value once per step: `x @ transpose(x)` reads one buffer twice, and freeing its
    // slot twice would hand it to two values at once.
    let reads = Step::reads;
    let writes = Step::writes;
    let mut last_use: HashMap<NodeIndex, usize> = HashMap::new();
    for (i, s) in p.steps.iter().enumerate() {
        for r in reads(s) {
            last_use.insert(r, i);
        }
    }
    let external = |n: NodeIndex| matches!(g.node(n).op, Op::Input { .. } | Op::Param { .. });
    let mut plan = MemoryPlan::default();
    let pinned: HashMap<NodeIndex, usize> = pinned.iter().copied().collect();
    if arena_len > 0 {
        plan.slots.push((DType::F32, arena_len));
        plan.arena = Some(0);
    }
    let mut free: Vec<usize> = Vec::new();
    for (i, s) in p.steps.iter().enumerate() {
        for out in writes(s) {
            let (dtype, n) = (g.ty(out).dtype, len(out));
            plan.total_bytes += n * dtype.size_bytes();
            if let Some(&offset) = pinned.get(&out) {
                debug_assert!(dtype == DType::F32 && offset + n <= arena_len, "a pinned value fits the arena");
                plan.slot_of.insert(out, 0);
                plan.offset_of.insert(out, offset);
                continue;
            }
            // Best fit: the smallest free slot of the type that is large enough, else grow one.
            let fit = free
                .iter()
                .enumerate()
                .filter(|(_, &k)| plan.slots[k].0 == dtype && plan.slots[k].1 >= n)
                .min_by_key(|(_, &k)| plan.slots[k].1)
                .map(|(j, _)| j)
                .or_else(|| free.iter().position(|&k| plan.slots[k].0 == dtype));
            let slot = match fit {
                Some(j) => {
                    let k = free.swap_remove(j);
                    plan.slots[k].1 = plan.slots[k].1.max(n);
                    k
                }
                None => {
                    plan.slots.push((dtype, n));
                    plan.slots.len() - 1
                }
            };
            plan.slot_of.insert(out, slot);
        }
        for r in reads(s) {
            if last_use.get(&r) == Some(&i) && !keep.contains(&r) && !external(r) && !pinned.contains_key(&r) {
                if let Some(&k) = plan.slot_of.get(&r) {
                    debug_assert!(!free.contains(&k), "slot {k} freed twice");
                    free.push(k);
                }
            }
        }
        for out in writes(s) {
            if !last_use.contains_key(&out) && !keep.contains(&out) && !pinned.contains_key(&out) {
                free.push(plan.slot_of[&out]);
            }
        }
    }
    plan.peak_bytes = plan.slots.iter().map(|(d, n)| n * d.size_bytes()).sum();
    plan
}
