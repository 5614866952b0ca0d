//! Where each layer's tensors live in the file, and views into a loaded layer.
//!
//! A "layer" is the unit of residency: transformer block `l` for
//! `l < n_layers`, and one more, the *head* (index `n_layers`): token
//! embedding, output norm and output matrix. Each layer's tensors are fetched
//! with one `load-layer` call into one buffer; weights stay quantized there.

use super::config::Config;
use super::shard::ShardSlice;
use crate::ggml_type::GgmlType;
use crate::gguf::GgufFile;
use crate::quant::{self, QTensor};
use crate::store::{ByteRange, ByteSource};
use crate::{Error, Result};

/// What a tensor of a layer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    AttnNorm,
    Wq,
    Wk,
    Wv,
    Wo,
    QNorm,
    KNorm,
    AttnPostNorm,
    FfnNorm,
    Gate,
    Up,
    Down,
    FfnPostNorm,
    TokenEmbd,
    OutputNorm,
    Output,
    /// Fused q, k, v rows (phi3's `attn_qkv`); viewed as [`Role::Wq`] etc.
    Wqkv,
    /// Fused gate and up rows (phi3's `ffn_up`); viewed as gate and up.
    GateUp,
    QBias,
    KBias,
    VBias,
    /// Bias of a fused `attn_qkv`.
    QkvBias,
}

impl Role {
    /// Whether the tensor is a vector (a norm's weights, a bias), decoded to
    /// f32 at load; the rest are matrices. Known from its role, never from
    /// its shape: a matrix may have a single row (one KV head of width 1, a
    /// one-token vocabulary).
    pub fn is_vector(self) -> bool {
        matches!(
            self,
            Role::AttnNorm
                | Role::QNorm
                | Role::KNorm
                | Role::AttnPostNorm
                | Role::FfnNorm
                | Role::FfnPostNorm
                | Role::OutputNorm
                | Role::QBias
                | Role::KBias
                | Role::VBias
                | Role::QkvBias
        )
    }
}

/// One tensor inside a layer buffer.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    pub name: String,
    pub role: Role,
    pub ty: GgmlType,
    /// Output dimension (GGUF ne1; 1 for vectors).
    pub rows: usize,
    /// Input dimension (GGUF ne0).
    pub cols: usize,
    /// Byte offset inside the layer buffer.
    pub at: usize,
    /// Bytes.
    pub len: usize,
    /// Row counts of the row ranges used as separate matrices (fused q/k/v,
    /// gate/up), in order; `[rows]` for the rest. Each is packed on its own.
    pub parts: Vec<usize>,
}

/// How to fetch one layer: the file ranges, and where each tensor lands.
#[derive(Clone, Debug)]
pub struct LayerPlan {
    /// Merged file ranges, in buffer order.
    pub ranges: Vec<ByteRange>,
    /// Tensors in buffer order, which is file order (the head: token_embd,
    /// output_norm and output unless tied).
    pub tensors: Vec<TensorPlan>,
    /// Total bytes of the buffer.
    pub bytes: u64,
}

impl LayerPlan {
    /// Bytes [`LayerData::load_chunked`] loads of this layer: the tensors
    /// it cannot leave in the store (vectors, matrices in several pieces).
    pub fn chunked_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .filter(|t| !streamable(self, t))
            .map(|t| t.len as u64)
            .sum()
    }
}

/// Whether `t` of `plan` can be streamed chunk by chunk: a matrix stored in
/// one piece of the file.
fn streamable(plan: &LayerPlan, t: &TensorPlan) -> bool {
    !t.role.is_vector() && t.rows > 0 && file_ranges(plan, t.at, t.len).len() == 1
}

/// Whether an architecture needs a block tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Loading fails without it.
    Required,
    /// Used when the file has it (llama.cpp's `TENSOR_NOT_REQUIRED`).
    Optional,
}

/// One tensor of a transformer block: what it is for, its name after
/// `blk.N.`, its (rows, cols), and whether it must be there.
pub struct BlockTensor {
    pub role: Role,
    pub suffix: &'static str,
    pub shape: (usize, usize),
    pub need: Need,
}

/// The tensors of a block of `c`'s architecture, in buffer order. The
/// llama set comes first, in the order older builds used; options add theirs.
pub fn block_tensors(c: &Config) -> Vec<BlockTensor> {
    let (d, q, kv, ff, hd) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff, c.head_dim);
    let t = |role, suffix, shape| BlockTensor {
        role,
        suffix,
        shape,
        need: Need::Required,
    };
    let opt = |role, suffix, shape| BlockTensor {
        role,
        suffix,
        shape,
        need: Need::Optional,
    };
    let mut v = vec![t(Role::AttnNorm, "attn_norm.weight", (1, d))];
    if c.fused_qkv {
        v.push(t(Role::Wqkv, "attn_qkv.weight", (q + 2 * kv, d)));
        v.push(opt(Role::QkvBias, "attn_qkv.bias", (1, q + 2 * kv)));
    } else {
        v.push(t(Role::Wq, "attn_q.weight", (q, d)));
        v.push(t(Role::Wk, "attn_k.weight", (kv, d)));
        v.push(t(Role::Wv, "attn_v.weight", (kv, d)));
    }
    v.push(t(Role::Wo, "attn_output.weight", (d, q)));
    v.push(t(Role::FfnNorm, "ffn_norm.weight", (1, d)));
    if c.fused_gate_up {
        v.push(t(Role::GateUp, "ffn_up.weight", (2 * ff, d)));
    } else {
        v.push(t(Role::Gate, "ffn_gate.weight", (ff, d)));
        v.push(t(Role::Up, "ffn_up.weight", (ff, d)));
    }
    v.push(t(Role::Down, "ffn_down.weight", (d, ff)));
    // Separate Q/K/V biases: optional wherever llama.cpp's create_tensor_qkv
    // loads them (qwen2 files always have them), also beside a fused weight.
    v.push(opt(Role::QBias, "attn_q.bias", (1, q)));
    v.push(opt(Role::KBias, "attn_k.bias", (1, kv)));
    v.push(opt(Role::VBias, "attn_v.bias", (1, kv)));
    if c.qk_norm {
        v.push(t(Role::QNorm, "attn_q_norm.weight", (1, hd)));
        v.push(t(Role::KNorm, "attn_k_norm.weight", (1, hd)));
    }
    if c.post_norms {
        v.push(t(Role::AttnPostNorm, "post_attention_norm.weight", (1, d)));
        v.push(t(Role::FfnPostNorm, "post_ffw_norm.weight", (1, d)));
    }
    v
}

fn plan_tensor(
    g: &GgufFile,
    name: &str,
    role: Role,
    shape: (usize, usize),
) -> Result<(TensorPlan, ByteRange)> {
    let t = g
        .tensor(name)
        .ok_or_else(|| Error::InvalidModel(format!("missing tensor {name}")))?;
    let (rows, cols) = shape;
    let dims_ok = match t.dims.as_slice() {
        [c] => rows == 1 && *c == cols as u64,
        [c, r] => *c == cols as u64 && *r == rows as u64,
        _ => false,
    };
    if !dims_ok {
        return Err(Error::InvalidModel(format!(
            "tensor {name} has shape {:?}, expected [{cols}, {rows}]",
            t.dims
        )));
    }
    if !t.ty.is_supported() {
        return Err(Error::Unsupported(format!(
            "tensor {name} has type {}, which this kernel does not support yet (supported: {})",
            t.ty,
            GgmlType::supported_names()
        )));
    }
    let len = usize::try_from(t.n_bytes).map_err(|_| {
        Error::OutOfMemory(format!(
            "tensor {name} ({} bytes) exceeds the address space",
            t.n_bytes
        ))
    })?;
    let plan = TensorPlan {
        name: name.to_string(),
        role,
        ty: t.ty,
        rows,
        cols,
        at: 0, // set by `finish`
        len,
        parts: vec![rows],
    };
    Ok((
        plan,
        ByteRange {
            offset: t.offset,
            len: t.n_bytes,
        },
    ))
}

/// The plan of one layer from its tensors: laid out in the buffer in file
/// order, so that tensors stored together (as every GGUF writer stores a
/// block) are one range, which a store can serve without gathering.
fn finish(mut parts: Vec<(TensorPlan, Vec<ByteRange>)>) -> Result<LayerPlan> {
    parts.sort_by_key(|(_, r)| r.first().map_or(0, |r| r.offset));
    let mut ranges: Vec<ByteRange> = Vec::new();
    let mut tensors = Vec::new();
    let mut bytes: u64 = 0;
    for (mut p, rs) in parts {
        // A layer whose size does not fit a usize is refused below, so a
        // truncated offset is never used.
        p.at = bytes as usize;
        for r in rs {
            bytes = bytes
                .checked_add(r.len)
                .ok_or_else(|| Error::InvalidModel("layer size overflows".into()))?;
            match ranges.last_mut() {
                Some(last) if last.offset + last.len == r.offset => last.len += r.len,
                _ => ranges.push(r),
            }
        }
        tensors.push(p);
    }
    usize::try_from(bytes).map_err(|_| {
        Error::OutOfMemory(format!(
            "a layer of {bytes} bytes exceeds the address space"
        ))
    })?;
    Ok(LayerPlan {
        ranges,
        tensors,
        bytes,
    })
}

/// The part of tensor `p` (file range `r`) that shard `sh` holds, and the
/// file ranges of that part in order: a row range of q, k, v (and their
/// biases), gate, up and output is one range; a column range of the
/// attention output and down is one range per row (quant blocks run along a
/// row, and [`super::shard::split`] put the slice on block boundaries).
/// Everything else is replicated.
fn shard_tensor(
    c: &Config,
    sh: &ShardSlice,
    mut p: TensorPlan,
    r: ByteRange,
) -> Result<(TensorPlan, Vec<ByteRange>)> {
    let hd = c.head_dim;
    let heads = sh.heads.start * hd..sh.heads.end * hd;
    let kv = sh.kv_heads.start * hd..sh.kv_heads.end * hd;
    let (rows, cols) = match p.role {
        _ if sh.is_whole() => (None, None),
        Role::Wq => (Some(heads), None),
        Role::Wk | Role::Wv => (Some(kv), None),
        Role::Gate | Role::Up => (Some(sh.ff.clone()), None),
        Role::Output => (Some(sh.vocab.clone()), None),
        Role::QBias => (None, Some(heads)),
        Role::KBias | Role::VBias => (None, Some(kv)),
        Role::Wo => (None, Some(heads)),
        Role::Down => (None, Some(sh.ff.clone())),
        Role::Wqkv | Role::GateUp | Role::QkvBias => {
            return Err(Error::Unsupported(
                "sharding a fused tensor is not implemented".into(),
            ))
        }
        _ => (None, None),
    };
    let row_bytes = (p.len / p.rows) as u64;
    if let Some(rr) = rows {
        p.rows = rr.len();
        p.parts = vec![p.rows];
        p.len = rr.len() * row_bytes as usize;
        let range = ByteRange {
            offset: r.offset + rr.start as u64 * row_bytes,
            len: p.len as u64,
        };
        return Ok((p, vec![range]));
    }
    if let Some(cr) = cols {
        let (bs, ts) = (p.ty.block_size(), p.ty.type_size());
        if !cr.start.is_multiple_of(bs) || !cr.end.is_multiple_of(bs) {
            return Err(Error::InvalidModel(format!(
                "tensor {}: columns {cr:?} are not on {} blocks",
                p.name, p.ty
            )));
        }
        let (b0, blen) = ((cr.start / bs * ts) as u64, (cr.len() / bs * ts) as u64);
        let ranges = (0..p.rows as u64)
            .map(|row| ByteRange {
                offset: r.offset + row * row_bytes + b0,
                len: blen,
            })
            .collect();
        p.cols = cr.len();
        p.len = p.rows * blen as usize;
        return Ok((p, ranges));
    }
    Ok((p, vec![r]))
}

/// Plans of all layers: blocks `0..n_layers`, then the head, of the shard
/// `sh` (the whole model for an unsplit slice).
pub fn plan_layers(g: &GgufFile, c: &Config, sh: &ShardSlice) -> Result<Vec<LayerPlan>> {
    let block = block_tensors(c);
    let mut plans = Vec::with_capacity(c.n_layers + 1);
    for l in 0..c.n_layers {
        let mut parts = Vec::with_capacity(block.len());
        for bt in &block {
            let name = format!("blk.{l}.{}", bt.suffix);
            if bt.need == Need::Optional && g.tensor(&name).is_none() {
                continue;
            }
            let (mut p, r) = plan_tensor(g, &name, bt.role, bt.shape)?;
            match bt.role {
                Role::Wqkv => p.parts = vec![c.q_dim(), c.kv_dim(), c.kv_dim()],
                Role::GateUp => p.parts = vec![c.n_ff, c.n_ff],
                _ => {}
            }
            parts.push(shard_tensor(c, sh, p, r)?);
        }
        plans.push(finish(parts)?);
    }
    let mut parts = Vec::with_capacity(3);
    let whole = |(p, r)| (p, vec![r]);
    let (mut embd, r) = plan_tensor(
        g,
        "token_embd.weight",
        Role::TokenEmbd,
        (c.n_vocab, c.n_embd),
    )?;
    if !sh.is_whole() && g.tensor("output.weight").is_none() {
        // Tied output: this shard's logits are a row range of the embedding,
        // packed on its own so that it can be viewed as a matrix.
        let v = &sh.vocab;
        embd.parts = [v.start, v.len(), c.n_vocab - v.end]
            .into_iter()
            .filter(|&n| n > 0)
            .collect();
    }
    parts.push((embd, vec![r]));
    parts.push(whole(plan_tensor(
        g,
        "output_norm.weight",
        Role::OutputNorm,
        (1, c.n_embd),
    )?));
    if g.tensor("output.weight").is_some() {
        let (p, r) = plan_tensor(g, "output.weight", Role::Output, (c.n_vocab, c.n_embd))?;
        parts.push(shard_tensor(c, sh, p, r)?);
    }
    plans.push(finish(parts)?);
    Ok(plans)
}

/// A layer in guest memory: one buffer, vectors (norms, biases) decoded to
/// f32, and when asked, matrices of the types with a packed layout repacked
/// in place ([`quant::pack_in_place`]; the same bytes, so no extra memory).
pub struct LayerData {
    pub plan_index: usize,
    buf: Vec<u8>,
    /// Per tensor of the plan: where its bytes start in `buf` (meaningless
    /// for a streamed tensor).
    at: Vec<usize>,
    /// Per tensor of the plan: for a matrix left in the store and streamed
    /// in chunks by each matmul ([`LayerData::load_chunked`]), its offset in
    /// the model file.
    streamed: Vec<Option<u64>>,
    /// Per tensor of the plan: whether its parts are packed.
    packed: Vec<bool>,
    /// Per tensor of the plan: its values as f32 if it is a vector.
    vecs: Vec<Option<Vec<f32>>>,
    tensors: Vec<TensorPlan>,
}

impl LayerData {
    /// Fetch layer `index` through `src`; `pack`: repack its matrices.
    pub fn load(
        src: &dyn ByteSource,
        index: usize,
        plan: &LayerPlan,
        pack: bool,
    ) -> Result<LayerData> {
        let mut buf = src.load_layer(index as u32, &plan.ranges)?;
        if buf.len() as u64 != plan.bytes {
            return Err(Error::InvalidModel(format!(
                "layer {index}: the store returned {} bytes, expected {}",
                buf.len(),
                plan.bytes
            )));
        }
        let at: Vec<usize> = plan.tensors.iter().map(|t| t.at).collect();
        let vecs = decode_vectors(&plan.tensors, &at, &buf)?;
        let packed = plan
            .tensors
            .iter()
            .map(|t| pack && !t.role.is_vector() && pack_tensor(t, &mut buf[t.at..t.at + t.len]))
            .collect();
        Ok(LayerData {
            plan_index: index,
            buf,
            at,
            streamed: vec![None; plan.tensors.len()],
            packed,
            vecs,
            tensors: plan.tensors.clone(),
        })
    }

    /// Fetch layer `index` for one pass without its matrices: the vectors
    /// (norms, biases) are loaded and decoded, and every matrix stored in
    /// one piece of the file is left in the store, to be streamed by each
    /// matmul in chunks that stay in the cache while they are used
    /// ([`Mat::matmul`]): each weight byte then crosses DRAM once, not three
    /// times (copied into a layer-sized buffer, then read again). Matrices
    /// in several pieces (a shard's column slice) are loaded as before.
    pub fn load_chunked(src: &dyn ByteSource, index: usize, plan: &LayerPlan) -> Result<LayerData> {
        let n = plan.tensors.len();
        let mut streamed = vec![None; n];
        let mut at = vec![0usize; n];
        let mut ranges: Vec<ByteRange> = Vec::new();
        let mut bytes = 0usize;
        for (i, t) in plan.tensors.iter().enumerate() {
            let rs = file_ranges(plan, t.at, t.len);
            if streamable(plan, t) {
                streamed[i] = Some(rs[0].offset);
                continue;
            }
            at[i] = bytes;
            bytes += t.len;
            for r in rs {
                match ranges.last_mut() {
                    Some(last) if last.offset + last.len == r.offset => last.len += r.len,
                    _ => ranges.push(r),
                }
            }
        }
        let buf = if ranges.is_empty() {
            Vec::new()
        } else {
            src.load_layer(index as u32, &ranges)?
        };
        if buf.len() != bytes {
            return Err(Error::InvalidModel(format!(
                "layer {index}: the store returned {} bytes, expected {bytes}",
                buf.len()
            )));
        }
        let vecs = decode_vectors(&plan.tensors, &at, &buf)?;
        Ok(LayerData {
            plan_index: index,
            buf,
            at,
            streamed,
            packed: vec![false; n],
            vecs,
            tensors: plan.tensors.clone(),
        })
    }

    /// Bytes of weights held.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Index in the plan of the tensor for `role`, if the layer has one.
    fn find(&self, role: Role) -> Option<usize> {
        self.tensors.iter().position(|t| t.role == role)
    }

    /// Quantized view of the tensor for `role`, if the layer has one in
    /// memory (a streamed matrix has none: see [`LayerData::mat`]).
    pub fn tensor(&self, role: Role) -> Option<QTensor<'_>> {
        self.find(role)
            .filter(|&i| self.streamed[i].is_none())
            .map(|i| {
                let t = &self.tensors[i];
                let at = self.at[i];
                QTensor {
                    ty: t.ty,
                    rows: t.rows,
                    cols: t.cols,
                    data: &self.buf[at..at + t.len],
                    packed: self.packed[i],
                }
            })
    }

    /// The matrix for `role`, in memory or streamed from `src`.
    pub fn mat<'a>(&'a self, role: Role, src: &'a dyn ByteSource) -> Option<Mat<'a>> {
        let i = self.find(role)?;
        match self.streamed[i] {
            None => self.tensor(role).map(|q| Mat { q, stream: None }),
            Some(offset) => {
                let t = &self.tensors[i];
                Some(Mat {
                    q: QTensor {
                        ty: t.ty,
                        rows: t.rows,
                        cols: t.cols,
                        data: &[],
                        packed: false,
                    },
                    stream: Some(Streamed {
                        src,
                        layer: self.plan_index as u32,
                        offset,
                    }),
                })
            }
        }
    }

    /// Whether any matrix of the layer is streamed.
    pub fn is_streamed(&self) -> bool {
        self.streamed.iter().any(Option::is_some)
    }

    /// The vector (norm, bias) for `role` as f32, if the layer has one.
    pub fn vector(&self, role: Role) -> Option<&[f32]> {
        self.find(role).and_then(|i| self.vecs[i].as_deref())
    }

    fn need_tensor(&self, role: Role) -> Result<QTensor<'_>> {
        self.tensor(role).ok_or_else(|| self.missing(role))
    }

    fn need_mat<'a>(&'a self, role: Role, src: &'a dyn ByteSource) -> Result<Mat<'a>> {
        self.mat(role, src).ok_or_else(|| self.missing(role))
    }

    fn need_vector(&self, role: Role) -> Result<&[f32]> {
        self.vector(role).ok_or_else(|| self.missing(role))
    }

    fn missing(&self, role: Role) -> Error {
        Error::InvalidModel(format!("layer {} has no {role:?} tensor", self.plan_index))
    }

    /// Views of a transformer block (its streamed matrices read through
    /// `src`). Fused tensors are split into row-range views of one buffer
    /// (no copies): `attn_qkv` into q, k and v, phi3's `ffn_up` into gate
    /// and up.
    pub fn block<'a>(&'a self, c: &Config, src: &'a dyn ByteSource) -> Result<BlockWeights<'a>> {
        let (q, kv, ff) = (c.q_dim(), c.kv_dim(), c.n_ff);
        let (wq, wk, wv) = match self.mat(Role::Wqkv, src) {
            Some(qkv) => (qkv.rows(0, q), qkv.rows(q, kv), qkv.rows(q + kv, kv)),
            None => (
                self.need_mat(Role::Wq, src)?,
                self.need_mat(Role::Wk, src)?,
                self.need_mat(Role::Wv, src)?,
            ),
        };
        let (w_gate, w_up) = match self.mat(Role::GateUp, src) {
            Some(gu) => (gu.rows(0, ff), gu.rows(ff, ff)),
            None => (
                self.need_mat(Role::Gate, src)?,
                self.need_mat(Role::Up, src)?,
            ),
        };
        let (bq, bk, bv) = match self.vector(Role::QkvBias) {
            Some(b) => (
                Some(&b[..q]),
                Some(&b[q..q + kv]),
                Some(&b[q + kv..q + 2 * kv]),
            ),
            None => (
                self.vector(Role::QBias),
                self.vector(Role::KBias),
                self.vector(Role::VBias),
            ),
        };
        Ok(BlockWeights {
            attn_norm: self.need_vector(Role::AttnNorm)?,
            wq,
            wk,
            wv,
            bq,
            bk,
            bv,
            q_norm: self.vector(Role::QNorm),
            k_norm: self.vector(Role::KNorm),
            wo: self.need_mat(Role::Wo, src)?,
            attn_post_norm: self.vector(Role::AttnPostNorm),
            ffn_norm: self.need_vector(Role::FfnNorm)?,
            w_gate,
            w_up,
            w_down: self.need_mat(Role::Down, src)?,
            ffn_post_norm: self.vector(Role::FfnPostNorm),
        })
    }

    /// Views of the head layer. `vocab`: the output rows of this instance
    /// (a separate output matrix was sliced when loaded; a tied one is a row
    /// range of the whole embedding, which every shard keeps for lookups).
    pub fn head(&self, vocab: std::ops::Range<usize>) -> Result<HeadWeights<'_>> {
        let i = self
            .find(Role::TokenEmbd)
            .ok_or_else(|| self.missing(Role::TokenEmbd))?;
        let whole = self.need_tensor(Role::TokenEmbd)?;
        // The embedding's parts (one unless a shard's tied output is a part).
        let mut token_embd = Vec::with_capacity(self.tensors[i].parts.len());
        let mut r0 = 0;
        for &n in &self.tensors[i].parts {
            token_embd.push((r0, row_view(&whole, r0, n)));
            r0 += n;
        }
        let output = match self.tensor(Role::Output) {
            Some(o) => o,
            None => token_embd
                .iter()
                .find(|(r0, t)| *r0 == vocab.start && t.rows == vocab.len())
                .map(|(_, t)| *t)
                .ok_or_else(|| self.missing(Role::Output))?,
        };
        Ok(HeadWeights {
            token_embd,
            output_norm: self.need_vector(Role::OutputNorm)?,
            output,
        })
    }
}

/// Decode the vector tensors (norms, biases) of `tensors` (at `at` in
/// `buf`) to f32.
fn decode_vectors(
    tensors: &[TensorPlan],
    at: &[usize],
    buf: &[u8],
) -> Result<Vec<Option<Vec<f32>>>> {
    let mut vecs = Vec::with_capacity(tensors.len());
    for (t, &at) in tensors.iter().zip(at) {
        vecs.push(if t.role.is_vector() {
            let q = QTensor::new(t.ty, 1, t.cols, &buf[at..at + t.len])?;
            let mut v = vec![0f32; t.cols];
            quant::dequantize_row(&q, 0, &mut v);
            Some(v)
        } else {
            None
        });
    }
    Ok(vecs)
}

/// The file ranges holding bytes `at..at + len` of a layer buffer laid out
/// by `plan` (its ranges, concatenated).
fn file_ranges(plan: &LayerPlan, at: usize, len: usize) -> Vec<ByteRange> {
    let (start, end) = (at as u64, (at + len) as u64);
    let mut out = Vec::new();
    let mut pos = 0u64;
    for r in &plan.ranges {
        let (a, b) = (pos.max(start), (pos + r.len).min(end));
        if a < b {
            out.push(ByteRange {
                offset: r.offset + (a - pos),
                len: b - a,
            });
        }
        pos += r.len;
    }
    out
}

/// A matrix of a layer: in memory, or left in the store and streamed by
/// [`Mat::matmul`] in chunks of whole rows. Derefs to its [`QTensor`], whose
/// `data` is empty when streamed.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub q: QTensor<'a>,
    stream: Option<Streamed<'a>>,
}

#[derive(Clone, Copy)]
struct Streamed<'a> {
    src: &'a dyn ByteSource,
    layer: u32,
    /// File offset of row 0.
    offset: u64,
}

/// Bytes of weights a streamed matmul fetches at a time: small enough that
/// a chunk stays in the L2 cache while every vector of the batch is dotted
/// against it, large enough that the per-call cost stays small.
pub const STREAM_CHUNK: usize = 256 * 1024;

/// Rows of a streamed chunk of rows of `row_bytes`: as many whole groups of
/// [`quant::GROUP_ROWS`] as fit in [`STREAM_CHUNK`], at least one group. The
/// kernels take rows a group at a time (packed or side by side) and the
/// rows left over one at a time: a chunk that ended inside a group left
/// every chunk a row or two for those slower single-row dots (the scalar
/// reference in a packed chunk), 2 of the 22 rows of a 10752-column Q8_0
/// chunk.
fn chunk_rows(row_bytes: usize) -> usize {
    let g = quant::GROUP_ROWS;
    (STREAM_CHUNK / row_bytes.max(1) / g * g).max(g)
}

/// Batches of at least this many vectors repack each streamed chunk.
const PACK_BATCH: usize = 2;

impl<'a> std::ops::Deref for Mat<'a> {
    type Target = QTensor<'a>;
    fn deref(&self) -> &QTensor<'a> {
        &self.q
    }
}

impl<'a> Mat<'a> {
    /// A matrix in memory.
    pub fn resident(q: QTensor<'a>) -> Mat<'a> {
        Mat { q, stream: None }
    }

    /// Whether the matrix is streamed from the store.
    pub fn is_streamed(&self) -> bool {
        self.stream.is_some()
    }

    /// Bytes of one row.
    fn row_bytes(&self) -> usize {
        self.q.cols / self.q.ty.block_size() * self.q.ty.type_size()
    }

    /// Rows `r0..r0 + n`, as a view of the same bytes (or file range).
    pub fn rows(&self, r0: usize, n: usize) -> Mat<'a> {
        match self.stream {
            None => Mat::resident(row_view(&self.q, r0, n)),
            Some(s) => Mat {
                q: QTensor { rows: n, ..self.q },
                stream: Some(Streamed {
                    offset: s.offset + (r0 * self.row_bytes()) as u64,
                    ..s
                }),
            },
        }
    }

    /// `out = self · x` ([`quant::matmul`]; `out` is `x.n()` vectors of
    /// `rows` values). A streamed matrix is fetched a chunk of rows at a
    /// time and each chunk applied to every vector while it is in cache;
    /// every output is the same dot product of the same row as in memory,
    /// so the result is bit-identical.
    pub fn matmul(&self, out: &mut [f32], x: &quant::QActs) -> Result<()> {
        let Some(s) = self.stream else {
            quant::matmul(out, &self.q, x);
            return Ok(());
        };
        let (rows, n) = (self.q.rows, x.n());
        let row_bytes = self.row_bytes();
        let chunk_rows = chunk_rows(row_bytes);
        let mut tmp = if n > 1 {
            vec![0f32; n * chunk_rows.min(rows)]
        } else {
            Vec::new()
        };
        // A batch's chunks repacked into here.
        let mut packed_buf = Vec::new();
        for r0 in (0..rows).step_by(chunk_rows) {
            let k = chunk_rows.min(rows - r0);
            let want = k * row_bytes;
            let bytes = s.src.load_layer(
                s.layer,
                &[ByteRange {
                    offset: s.offset + (r0 * row_bytes) as u64,
                    len: want as u64,
                }],
            )?;
            if bytes.len() != want {
                return Err(Error::InvalidModel(format!(
                    "layer {}: the store returned {} bytes, expected {want}",
                    s.layer,
                    bytes.len()
                )));
            }
            // For a batch, repacked for the fast kernels while the chunk is
            // in cache (types without a packed layout stay as they are); a
            // single vector is faster on the bytes as they came.
            let packed = n >= PACK_BATCH && {
                packed_buf.resize(want, 0);
                quant::pack_into(self.q.ty, &bytes, &mut packed_buf, k, self.q.cols)
            };
            let data = if packed { &packed_buf[..] } else { &bytes[..] };
            let w = QTensor {
                packed,
                ..QTensor::new(self.q.ty, k, self.q.cols, data)?
            };
            if n == 1 {
                quant::matmul(&mut out[r0..r0 + k], &w, x);
            } else {
                quant::matmul(&mut tmp[..n * k], &w, x);
                for b in 0..n {
                    out[b * rows + r0..b * rows + r0 + k].copy_from_slice(&tmp[b * k..(b + 1) * k]);
                }
            }
        }
        Ok(())
    }
}

/// Packs `t`'s parts (`data`: its bytes) in place if its type has a packed
/// layout; returns whether it did.
fn pack_tensor(t: &TensorPlan, data: &mut [u8]) -> bool {
    if !quant::packable(t.ty, data) || t.parts.iter().sum::<usize>() != t.rows {
        return false;
    }
    let row = t.len / t.rows;
    let mut r0 = 0;
    for &n in &t.parts {
        let packed = quant::pack_in_place(t.ty, &mut data[r0 * row..(r0 + n) * row], n, t.cols);
        debug_assert!(packed);
        r0 += n;
    }
    true
}

/// Rows `r0..r0 + n` of `t`, as a view of the same bytes. Rows of every
/// type are whole blocks, so a row range is a byte range; the plan checked
/// the fused tensor's shape, so the range is inside it. A packed tensor's
/// views are its parts, each packed on its own (see [`TensorPlan::parts`]).
fn row_view<'a>(t: &QTensor<'a>, r0: usize, n: usize) -> QTensor<'a> {
    let row = t.data.len() / t.rows;
    QTensor {
        ty: t.ty,
        rows: n,
        cols: t.cols,
        data: &t.data[r0 * row..(r0 + n) * row],
        packed: t.packed,
    }
}

/// One transformer block's weights (views into a [`LayerData`]). `Option`s
/// are the tensors only some architectures have.
pub struct BlockWeights<'a> {
    pub attn_norm: &'a [f32],              // (n_embd,)
    pub wq: Mat<'a>,                       // (q_dim, n_embd)
    pub wk: Mat<'a>,                       // (kv_dim, n_embd)
    pub wv: Mat<'a>,                       // (kv_dim, n_embd)
    pub bq: Option<&'a [f32]>,             // (q_dim,)
    pub bk: Option<&'a [f32]>,             // (kv_dim,)
    pub bv: Option<&'a [f32]>,             // (kv_dim,)
    pub q_norm: Option<&'a [f32]>,         // (head_dim,)
    pub k_norm: Option<&'a [f32]>,         // (head_dim,)
    pub wo: Mat<'a>,                       // (n_embd, q_dim)
    pub attn_post_norm: Option<&'a [f32]>, // (n_embd,)
    pub ffn_norm: &'a [f32],               // (n_embd,)
    pub w_gate: Mat<'a>,                   // (n_ff, n_embd)
    pub w_up: Mat<'a>,                     // (n_ff, n_embd)
    pub w_down: Mat<'a>,                   // (n_embd, n_ff)
    pub ffn_post_norm: Option<&'a [f32]>,  // (n_embd,)
}

/// Embedding and output weights.
pub struct HeadWeights<'a> {
    /// (n_vocab, n_embd) in parts: (first row, rows from it).
    pub token_embd: Vec<(usize, QTensor<'a>)>,
    pub output_norm: &'a [f32], // (n_embd,)
    pub output: QTensor<'a>,    // (logit rows, n_embd); a part of token_embd when tied
}

impl HeadWeights<'_> {
    /// Dequantize the embedding of token `t` into `out`.
    pub fn embed(&self, t: usize, out: &mut [f32]) {
        if let Some((r0, part)) = self
            .token_embd
            .iter()
            .find(|(r0, p)| (*r0..r0 + p.rows).contains(&t))
        {
            quant::dequantize_row(part, t - r0, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml_type::GgmlType;
    use crate::store::MemSource;

    /// A one-row matrix stays a matrix and a vector is decoded, by role (a
    /// one-row matrix was decoded as a vector too).
    #[test]
    fn vectors_are_known_by_role_not_by_shape() {
        let f32s: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let tensor = |role, at| TensorPlan {
            name: format!("{role:?}"),
            role,
            ty: GgmlType::F32,
            rows: 1,
            cols: 4,
            at,
            len: 16,
            parts: vec![1],
        };
        let plan = LayerPlan {
            ranges: vec![ByteRange { offset: 0, len: 32 }],
            tensors: vec![tensor(Role::Wk, 0), tensor(Role::AttnNorm, 16)],
            bytes: 32,
        };
        let layer = LayerData::load(&MemSource::new(f32s), 0, &plan, true).unwrap();
        assert_eq!(layer.vector(Role::Wk), None);
        assert_eq!(layer.tensor(Role::Wk).map(|t| t.rows), Some(1));
        assert_eq!(
            layer.vector(Role::AttnNorm),
            Some(&[4.0, 5.0, 6.0, 7.0][..])
        );
    }
}
