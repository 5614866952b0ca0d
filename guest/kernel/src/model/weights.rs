//! Where each layer's tensors live in the file, and views into a loaded layer.
//!
//! A "layer" is the unit of residency: transformer block `l` for
//! `l < n_layers`, and one more, the *head* (index `n_layers`): token
//! embedding, output norm and output matrix. Each layer's tensors are fetched
//! with one `load-layer` call into one buffer; weights stay quantized there.

use super::config::Config;
use crate::ggml_type::GgmlType;
use crate::gguf::GgufFile;
use crate::quant::{self, QTensor};
use crate::store::{ByteRange, ByteSource};
use crate::{Error, Result};

/// One tensor inside a layer buffer.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    pub name: String,
    pub ty: GgmlType,
    /// Output dimension (GGUF ne1).
    pub rows: usize,
    /// Input dimension (GGUF ne0).
    pub cols: usize,
    /// Byte offset inside the layer buffer.
    pub at: usize,
    /// Bytes.
    pub len: usize,
}

/// How to fetch one layer: the file ranges, and where each tensor lands.
#[derive(Clone, Debug)]
pub struct LayerPlan {
    /// Merged file ranges, in buffer order.
    pub ranges: Vec<ByteRange>,
    /// Tensors in a fixed order (see [`BLOCK_TENSORS`] / [`HEAD_TENSORS`]).
    pub tensors: Vec<TensorPlan>,
    /// Total bytes of the buffer.
    pub bytes: u64,
}

/// Tensor suffixes of a transformer block, in buffer order.
pub const BLOCK_TENSORS: [&str; 9] = [
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];
/// Tensors of the head layer, in buffer order (`output` is absent when tied).
pub const HEAD_TENSORS: [&str; 3] = ["token_embd", "output_norm", "output"];

/// Expected (rows, cols) of block tensor `i` of [`BLOCK_TENSORS`]; norms are (1, n_embd).
fn block_shape(c: &Config, i: usize) -> (usize, usize) {
    match i {
        0 | 5 => (1, c.n_embd),
        1 => (c.q_dim(), c.n_embd),
        2 | 3 => (c.kv_dim(), c.n_embd),
        4 => (c.n_embd, c.q_dim()),
        6 | 7 => (c.n_ff, c.n_embd),
        _ => (c.n_embd, c.n_ff),
    }
}

fn plan_tensor(
    g: &GgufFile,
    name: &str,
    shape: (usize, usize),
    at: usize,
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
        ty: t.ty,
        rows,
        cols,
        at,
        len,
    };
    Ok((
        plan,
        ByteRange {
            offset: t.offset,
            len: t.n_bytes,
        },
    ))
}

fn finish(parts: Vec<(TensorPlan, ByteRange)>) -> Result<LayerPlan> {
    let mut ranges: Vec<ByteRange> = Vec::new();
    let mut tensors = Vec::new();
    let mut bytes: u64 = 0;
    for (p, r) in parts {
        bytes = bytes
            .checked_add(r.len)
            .ok_or_else(|| Error::InvalidModel("layer size overflows".into()))?;
        match ranges.last_mut() {
            Some(last) if last.offset + last.len == r.offset => last.len += r.len,
            _ => ranges.push(r),
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

/// Plans of all layers: blocks `0..n_layers`, then the head.
pub fn plan_layers(g: &GgufFile, c: &Config) -> Result<Vec<LayerPlan>> {
    let mut plans = Vec::with_capacity(c.n_layers + 1);
    for l in 0..c.n_layers {
        let mut parts = Vec::with_capacity(BLOCK_TENSORS.len());
        let mut at = 0usize;
        for (i, suffix) in BLOCK_TENSORS.iter().enumerate() {
            let (p, r) = plan_tensor(
                g,
                &format!("blk.{l}.{suffix}.weight"),
                block_shape(c, i),
                at,
            )?;
            at += p.len;
            parts.push((p, r));
        }
        plans.push(finish(parts)?);
    }
    let mut parts = Vec::with_capacity(3);
    let (emb, r) = plan_tensor(g, "token_embd.weight", (c.n_vocab, c.n_embd), 0)?;
    let mut at = emb.len;
    parts.push((emb, r));
    let (p, r) = plan_tensor(g, "output_norm.weight", (1, c.n_embd), at)?;
    at += p.len;
    parts.push((p, r));
    if g.tensor("output.weight").is_some() {
        parts.push(plan_tensor(g, "output.weight", (c.n_vocab, c.n_embd), at)?);
    }
    plans.push(finish(parts)?);
    Ok(plans)
}

/// A layer in guest memory: one buffer, norms decoded to f32.
pub struct LayerData {
    pub plan_index: usize,
    buf: Vec<u8>,
    /// Norm weights as f32, in plan order of the norm tensors.
    norms: Vec<Vec<f32>>,
    tensors: Vec<TensorPlan>,
}

impl LayerData {
    /// Fetch layer `index` through `src`.
    pub fn load(src: &dyn ByteSource, index: usize, plan: &LayerPlan) -> Result<LayerData> {
        let buf = src.load_layer(index as u32, &plan.ranges)?;
        if buf.len() as u64 != plan.bytes {
            return Err(Error::InvalidModel(format!(
                "layer {index}: the store returned {} bytes, expected {}",
                buf.len(),
                plan.bytes
            )));
        }
        let mut norms = Vec::new();
        for t in plan.tensors.iter().filter(|t| t.rows == 1) {
            let q = QTensor::new(t.ty, 1, t.cols, &buf[t.at..t.at + t.len])?;
            let mut v = vec![0f32; t.cols];
            quant::dequantize_row(&q, 0, &mut v);
            norms.push(v);
        }
        Ok(LayerData {
            plan_index: index,
            buf,
            norms,
            tensors: plan.tensors.clone(),
        })
    }

    /// Bytes of weights held.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Quantized view of tensor `i` (plan order).
    pub fn tensor(&self, i: usize) -> QTensor<'_> {
        let t = &self.tensors[i];
        QTensor {
            ty: t.ty,
            rows: t.rows,
            cols: t.cols,
            data: &self.buf[t.at..t.at + t.len],
        }
    }

    /// Views of a transformer block.
    pub fn block(&self) -> BlockWeights<'_> {
        BlockWeights {
            attn_norm: &self.norms[0],
            wq: self.tensor(1),
            wk: self.tensor(2),
            wv: self.tensor(3),
            wo: self.tensor(4),
            ffn_norm: &self.norms[1],
            w_gate: self.tensor(6),
            w_up: self.tensor(7),
            w_down: self.tensor(8),
        }
    }

    /// Views of the head layer.
    pub fn head(&self) -> HeadWeights<'_> {
        let token_embd = self.tensor(0);
        HeadWeights {
            token_embd,
            output_norm: &self.norms[0],
            output: if self.tensors.len() > 2 {
                self.tensor(2)
            } else {
                token_embd
            },
        }
    }
}

/// One transformer block's weights (views into a [`LayerData`]).
pub struct BlockWeights<'a> {
    pub attn_norm: &'a [f32], // (n_embd,)
    pub wq: QTensor<'a>,      // (q_dim, n_embd)
    pub wk: QTensor<'a>,      // (kv_dim, n_embd)
    pub wv: QTensor<'a>,      // (kv_dim, n_embd)
    pub wo: QTensor<'a>,      // (n_embd, q_dim)
    pub ffn_norm: &'a [f32],  // (n_embd,)
    pub w_gate: QTensor<'a>,  // (n_ff, n_embd)
    pub w_up: QTensor<'a>,    // (n_ff, n_embd)
    pub w_down: QTensor<'a>,  // (n_embd, n_ff)
}

/// Embedding and output weights.
pub struct HeadWeights<'a> {
    pub token_embd: QTensor<'a>, // (n_vocab, n_embd)
    pub output_norm: &'a [f32],  // (n_embd,)
    pub output: QTensor<'a>,     // (n_vocab, n_embd); token_embd when tied
}
