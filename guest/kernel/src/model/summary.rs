//! What a model file's header says — GGUF metadata and tensor table, no
//! weights — so that `info` can describe a file that [`super::Model::load`]
//! rejects (an unsupported architecture or tensor type).

use std::collections::BTreeMap;

use super::split;
use crate::ggml_type::GgmlType;
use crate::store::ByteSource;
use crate::Result;

/// The header-level facts of a model file.
#[derive(Clone, Debug, PartialEq)]
pub struct FileSummary {
    /// `general.architecture`, or empty.
    pub architecture: String,
    /// `general.name`, or empty.
    pub name: String,
    /// Size of the source in bytes (as [`super::ModelInfo::file_size`]).
    pub file_size: u64,
    /// Number of tensors (every shard of a split model).
    pub n_tensors: u64,
    /// Elements of all tensors.
    pub n_params: u64,
    /// Bytes of all tensor data.
    pub tensor_bytes: u64,
    /// Tensor count per type, in GGUF type-id order.
    pub tensor_types: Vec<(GgmlType, u32)>,
}

impl FileSummary {
    /// The types in the file that the kernel cannot compute with.
    pub fn unsupported(&self) -> impl Iterator<Item = (GgmlType, u32)> + '_ {
        self.tensor_types
            .iter()
            .copied()
            .filter(|(t, _)| !t.is_supported())
    }
}

/// Read the header of the model behind `src` (every shard of a split model):
/// metadata and tensor table only, never tensor data.
pub fn summarize(src: &dyn ByteSource) -> Result<FileSummary> {
    let g = split::parse_all(src)?;
    let mut types: BTreeMap<GgmlType, u32> = BTreeMap::new();
    for t in &g.tensors {
        *types.entry(t.ty).or_default() += 1;
    }
    Ok(FileSummary {
        architecture: g.get_str("general.architecture")?.unwrap_or("").to_string(),
        name: g.get_str("general.name")?.unwrap_or("").to_string(),
        file_size: src.size(),
        n_tensors: g.tensors.len() as u64,
        n_params: g.tensors.iter().map(|t| t.n_elements()).sum(),
        tensor_bytes: g.tensors.iter().map(|t| t.n_bytes).sum(),
        tensor_types: types.into_iter().collect(),
    })
}
