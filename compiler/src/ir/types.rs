//! Element types, dimensions (known sizes or symbolic monomials such as `B` or `4*B`) and shapes.

use std::fmt;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 32-bit signed integer (token ids, indices).
    I32,
    /// Boolean (masks, comparison results).
    Bool,
}

impl DType {
    /// Parses `f32`, `i32` or `bool`.
    pub fn from_name(s: &str) -> Option<DType> {
        match s {
            "f32" => Some(DType::F32),
            "i32" => Some(DType::I32),
            "bool" => Some(DType::Bool),
            _ => None,
        }
    }
    /// The name as written in `.muse` files.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I32 => "i32",
            DType::Bool => "bool",
        }
    }
    /// Size of one element in bytes. Truth values take 4 like the others: backends hold
    /// them as 32-bit ints so that vector units select on them without widening bytes.
    pub fn size_bytes(self) -> usize {
        4
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One dimension: `coeff * sym1 * sym2 * ...`; with no symbols it is a known size.
///
/// Symbols (the batch `B`) stay unknown until run time. Keeping a dimension a
/// monomial lets reshapes such as `[B, N, D] -> [B*N, D]` be checked exactly.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dim {
    /// Constant factor.
    pub coeff: i64,
    /// Symbol names, sorted, repeated for powers.
    pub syms: Vec<String>,
}

impl Dim {
    /// A known size.
    pub fn known(n: i64) -> Dim {
        Dim { coeff: n, syms: vec![] }
    }
    /// A symbolic size such as `B`.
    pub fn sym(name: &str) -> Dim {
        Dim { coeff: 1, syms: vec![name.to_string()] }
    }
    /// The size, when it has no symbols.
    pub fn as_known(&self) -> Option<i64> {
        self.syms.is_empty().then_some(self.coeff)
    }
    /// Whether this is the known size `n`.
    pub fn is(&self, n: i64) -> bool {
        self.as_known() == Some(n)
    }
    /// The product of two dimensions, or `None` on overflow.
    pub fn mul(&self, o: &Dim) -> Option<Dim> {
        let mut syms = self.syms.clone();
        syms.extend(o.syms.iter().cloned());
        syms.sort();
        Some(Dim { coeff: self.coeff.checked_mul(o.coeff)?, syms })
    }
    /// Exact division: `None` unless `o` divides `self` as a monomial.
    pub fn div(&self, o: &Dim) -> Option<Dim> {
        if o.coeff == 0 || self.coeff % o.coeff != 0 {
            return None;
        }
        let mut syms = self.syms.clone();
        for s in &o.syms {
            let i = syms.iter().position(|x| x == s)?;
            syms.remove(i);
        }
        Some(Dim { coeff: self.coeff / o.coeff, syms })
    }
    /// Evaluates with values for the symbols.
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<i64>) -> Option<i64> {
        let mut v = self.coeff;
        for s in &self.syms {
            v = v.checked_mul(lookup(s)?)?;
        }
        Some(v)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.syms.is_empty() {
            return write!(f, "{}", self.coeff);
        }
        if self.coeff != 1 {
            write!(f, "{}*", self.coeff)?;
        }
        write!(f, "{}", self.syms.join("*"))
    }
}

/// A tensor shape: one [`Dim`] per axis, outermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// A shape of known sizes.
    pub fn known(dims: &[i64]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::known(d)).collect())
    }
    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    /// Product of all dimensions (the element count), `None` on overflow.
    pub fn numel(&self) -> Option<Dim> {
        self.0.iter().try_fold(Dim::known(1), |acc, d| acc.mul(d))
    }
    /// Resolves a possibly negative axis; `None` when out of range.
    pub fn axis(&self, axis: i64) -> Option<usize> {
        let r = self.rank() as i64;
        let a = if axis < 0 { axis + r } else { axis };
        (0..r).contains(&a).then_some(a as usize)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

/// Element type and shape of a value in the graph.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Shape,
}

impl TensorType {
    /// A type from its parts.
    pub fn new(dtype: DType, shape: Shape) -> Self {
        TensorType { dtype, shape }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)
    }
}
