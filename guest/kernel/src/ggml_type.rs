//! GGML tensor types: ids as stored in GGUF, block sizes, bytes per block.
//!
//! Every type GGUF may name is listed so that the parser can validate sizes
//! even for types the matmul does not support yet ([`GgmlType::is_supported`]).

/// A GGML tensor type, numbered as in `ggml.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

use GgmlType::*;

/// (type, GGUF id, elements per block, bytes per block)
const TABLE: &[(GgmlType, u32, usize, usize)] = &[
    (F32, 0, 1, 4),
    (F16, 1, 1, 2),
    (Q4_0, 2, 32, 18),
    (Q4_1, 3, 32, 20),
    (Q5_0, 6, 32, 22),
    (Q5_1, 7, 32, 24),
    (Q8_0, 8, 32, 34),
    (Q8_1, 9, 32, 36),
    (Q2_K, 10, 256, 84),
    (Q3_K, 11, 256, 110),
    (Q4_K, 12, 256, 144),
    (Q5_K, 13, 256, 176),
    (Q6_K, 14, 256, 210),
    (Q8_K, 15, 256, 292),
    (IQ2_XXS, 16, 256, 66),
    (IQ2_XS, 17, 256, 74),
    (IQ3_XXS, 18, 256, 98),
    (IQ1_S, 19, 256, 50),
    (IQ4_NL, 20, 32, 18),
    (IQ3_S, 21, 256, 110),
    (IQ2_S, 22, 256, 82),
    (IQ4_XS, 23, 256, 136),
    (I8, 24, 1, 1),
    (I16, 25, 1, 2),
    (I32, 26, 1, 4),
    (I64, 27, 1, 8),
    (F64, 28, 1, 8),
    (IQ1_M, 29, 256, 56),
    (BF16, 30, 1, 2),
    (TQ1_0, 34, 256, 54),
    (TQ2_0, 35, 256, 66),
    (MXFP4, 39, 32, 17),
];

impl GgmlType {
    /// The type with GGUF id `id`, if it is one.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|e| e.1 == id).map(|e| e.0)
    }

    fn entry(self) -> &'static (GgmlType, u32, usize, usize) {
        TABLE
            .iter()
            .find(|e| e.0 == self)
            .expect("every type is in TABLE")
    }

    /// GGUF id.
    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        self.entry().2
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.entry().3
    }

    /// Name as llama.cpp prints it ("Q4_1", "F32", ...).
    pub fn name(self) -> String {
        format!("{self:?}")
    }

    /// Bytes of a row of `n` elements, or None if `n` is not a whole number
    /// of blocks or overflows.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(self.type_size() as u64)
    }

    /// Whether the kernel's matmul supports weights of this type (the
    /// quant module's table of weight types).
    pub fn is_supported(self) -> bool {
        crate::quant::is_weight_type(self)
    }

    /// Every type, in GGUF id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TABLE.iter().map(|e| e.0)
    }

    /// The names of the supported weight types, comma-separated
    /// ("F32, F16, Q4_0, ...").
    pub fn supported_names() -> String {
        let names: Vec<String> = Self::all()
            .filter(|t| t.is_supported())
            .map(|t| t.name())
            .collect();
        names.join(", ")
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes() {
        for &(t, id, _, _) in TABLE {
            assert_eq!(GgmlType::from_id(id), Some(t));
            assert_eq!(t.id(), id);
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(1000), None);
        assert_eq!(Q4_1.row_bytes(576), Some(18 * 20));
        assert_eq!(Q4_1.row_bytes(33), None);
        assert_eq!(F32.row_bytes(u64::MAX), None);
    }
}
