//! Tensor-parallel shards (issue 19): which rows and columns of each weight
//! one of N kernel instances holds. See docs/parallel.md.
//!
//! Shard i holds a range of query heads and the key/value heads they read
//! (a key/value head whose group straddles two shards is computed on both),
//! the rows of q, k, v for them and the matching columns of the attention
//! output; a range of the
//! feed-forward rows (gate, up) and the matching columns of down; a range of
//! the vocabulary rows of the output matrix. Norms, embeddings and the
//! residual stream are replicated. After the attention output and after down
//! each shard holds a partial `n_embd` vector; the host sums them.

use std::ops::Range;

use super::config::{Arch, Config, ShardHeads};
use super::weights::{block_tensors, Role};
use crate::gguf::GgufFile;
use crate::{Error, Result};

/// Which shard of how many an instance is (as the host asks for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    pub index: u32,
    pub count: u32,
}

/// What one shard holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSlice {
    pub index: usize,
    /// Shards of the split (may be fewer than asked for, see [`split`]).
    pub count: usize,
    /// Query heads.
    pub heads: Range<usize>,
    /// Key/value heads.
    pub kv_heads: Range<usize>,
    /// Feed-forward rows (of gate and up; columns of down).
    pub ff: Range<usize>,
    /// Vocabulary rows of the output matrix (the logits this shard computes).
    pub vocab: Range<usize>,
}

/// Architectures whose forward pass is sharded: llama and gemma3 (tested on
/// synthetic models against the unsharded pass, llama on SmolLM2 against
/// llama.cpp), qwen2 (q/k/v biases, sliced with their rows), qwen3 (q/k
/// norms) and mistral3 (attention temperature), tested on SmolLM2 re-laid as
/// each against one instance (tests/tests/shards.rs). phi3's fused tensors
/// are not sliced.
const SHARDED_ARCHS: &[Arch] = &[
    Arch::Llama,
    Arch::Gemma3,
    Arch::Qwen2,
    Arch::Qwen3,
    Arch::Mistral3,
];

/// Least common multiple of the block sizes of the tensors of `role` in
/// every block of `g` (a slice of their columns must start on a block).
fn col_block(g: &GgufFile, c: &Config, role: Role) -> Result<usize> {
    let suffix = block_tensors(c)
        .into_iter()
        .find(|t| t.role == role)
        .map(|t| t.suffix)
        .ok_or_else(|| Error::InvalidModel(format!("no {role:?} tensor in a block")))?;
    let mut b = 1usize;
    for l in 0..c.n_layers {
        let name = format!("blk.{l}.{suffix}");
        let t = g
            .tensor(&name)
            .ok_or_else(|| Error::InvalidModel(format!("missing tensor {name}")))?;
        let bs = t.ty.block_size();
        b = b / gcd(b, bs) * bs;
    }
    Ok(b)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `n` items in `parts` contiguous ranges, the first `n % parts` one longer.
fn even(n: usize, parts: usize, i: usize) -> Range<usize> {
    let (q, r) = (n / parts, n % parts);
    let start = i * q + i.min(r);
    start..start + q + usize::from(i < r)
}

/// The split of `c` (the file `g`) into at most `requested` shards (and at
/// most one per key/value head): the largest count <= `requested` whose
/// slices keep heads whole and start the column slices of the attention
/// output and down on a quant block. Preferably [`balanced`] (query heads
/// and feed-forward rows each split evenly), else [`whole_groups`].
pub fn split(g: &GgufFile, c: &Config, requested: usize) -> Result<Vec<ShardSlice>> {
    if requested == 0 {
        return Err(Error::InvalidInput(
            "a shard count must be at least 1".into(),
        ));
    }
    if requested > 1 && !SHARDED_ARCHS.contains(&c.kind) {
        return Err(Error::Unsupported(format!(
            "sharding is not implemented for the '{}' architecture; use one shard",
            c.arch
        )));
    }
    if requested > 1 && (c.fused_qkv || c.fused_gate_up) {
        return Err(Error::Unsupported(
            "sharding a model with fused q/k/v or gate/up tensors is not implemented; use one shard"
                .into(),
        ));
    }
    let whole = |count: usize| ShardSlice {
        index: 0,
        count,
        heads: 0..c.n_head,
        kv_heads: 0..c.n_head_kv,
        ff: 0..c.n_ff,
        vocab: 0..c.n_vocab,
    };
    if requested == 1 {
        return Ok(vec![whole(1)]);
    }
    let wo_block = col_block(g, c, Role::Wo)?;
    let down_block = col_block(g, c, Role::Down)?;
    let group = c.n_head / c.n_head_kv.max(1);
    for n in (2..=requested.min(c.n_head_kv)).rev() {
        if c.n_ff / down_block < n || !c.n_ff.is_multiple_of(down_block) {
            continue;
        }
        if let Some(s) = balanced(c, n, group, wo_block, down_block) {
            return Ok(s);
        }
        if let Some(s) = whole_groups(c, n, group, wo_block, down_block) {
            return Ok(s);
        }
    }
    Ok(vec![whole(1)])
}

/// Each half-layer balanced on its own (the exchange after the attention
/// waits for the slowest shard's attention, the one after the FFN for the
/// slowest FFN): query heads and feed-forward blocks split as evenly as they
/// go. A shard holds the key/value heads its query heads read, so a
/// key/value head whose group straddles two shards is computed on both
/// (SmolLM2's 9 query heads in 2 shards: 5 + 4, key/value heads 0..2 and
/// 1..3). None if a query-head boundary is not on a block of the attention
/// output's columns.
fn balanced(
    c: &Config,
    n: usize,
    group: usize,
    wo_block: usize,
    down_block: usize,
) -> Option<Vec<ShardSlice>> {
    let hd = c.head_dim;
    let heads: Vec<Range<usize>> = (0..n).map(|i| even(c.n_head, n, i)).collect();
    if heads
        .iter()
        .any(|r| r.is_empty() || !(r.start * hd).is_multiple_of(wo_block))
    {
        return None;
    }
    let blocks = c.n_ff / down_block;
    Some(
        (0..n)
            .map(|i| {
                let h = heads[i].clone();
                let b = even(blocks, n, i);
                ShardSlice {
                    index: i,
                    count: n,
                    kv_heads: h.start / group..h.end.div_ceil(group),
                    heads: h,
                    ff: b.start * down_block..b.end * down_block,
                    vocab: even(c.n_vocab, n, i),
                }
            })
            .collect(),
    )
}

/// Whole groups of query heads per shard (no key/value head on two shards),
/// the key/value heads spread as evenly as they go and the feed-forward rows
/// evening out the work per token: the fallback when [`balanced`]'s head
/// boundaries are not on a quant block.
fn whole_groups(
    c: &Config,
    n: usize,
    group: usize,
    wo_block: usize,
    down_block: usize,
) -> Option<Vec<ShardSlice>> {
    let (d, hd) = (c.n_embd, c.head_dim);
    let kv: Vec<Range<usize>> = (0..n).map(|i| even(c.n_head_kv, n, i)).collect();
    // The attention output's column slices start at whole query heads.
    if kv
        .iter()
        .any(|r| !(r.start * group * hd).is_multiple_of(wo_block))
    {
        return None;
    }
    // Work per token in weights: q and o (group * hd rows/cols each per
    // kv head), k and v (hd each), and 3 * n_embd per feed-forward row.
    let attn = |r: &Range<usize>| r.len() * (2 * group * hd + 2 * hd) * d;
    let total: usize = kv.iter().map(attn).sum::<usize>() + 3 * d * c.n_ff;
    let target = total / n;
    let mut ff = Vec::with_capacity(n);
    let mut start = 0usize;
    let blocks_total = c.n_ff / down_block;
    for (i, r) in kv.iter().enumerate() {
        let left = n - i - 1; // shards after this one, each at least a block
        let end = if left == 0 {
            blocks_total
        } else {
            let want = target.saturating_sub(attn(r)) as f64 / (3 * d * down_block) as f64;
            let b0 = start / down_block;
            let blocks = (want.round() as usize).max(1);
            (b0 + blocks).min(blocks_total - left)
        };
        let end_rows = end * down_block;
        if end_rows <= start {
            return None;
        }
        ff.push(start..end_rows);
        start = end_rows;
    }
    Some(
        (0..n)
            .map(|i| ShardSlice {
                index: i,
                count: n,
                heads: kv[i].start * group..kv[i].end * group,
                kv_heads: kv[i].clone(),
                ff: ff[i].clone(),
                vocab: even(c.n_vocab, n, i),
            })
            .collect(),
    )
}

/// The slice of `spec` in the split of `c`: `InvalidInput` if the index is
/// outside the split (the split may have fewer shards than asked for; the
/// host learns the count from shard 0).
pub fn slice_for(g: &GgufFile, c: &Config, spec: ShardSpec) -> Result<ShardSlice> {
    if spec.index >= spec.count {
        return Err(Error::InvalidInput(format!(
            "shard index {} is not below the shard count {}",
            spec.index, spec.count
        )));
    }
    let all = split(g, c, spec.count as usize)?;
    all.get(spec.index as usize).cloned().ok_or_else(|| {
        Error::InvalidInput(format!(
            "this model splits into {} shard(s), not {}: shard {} does not exist",
            all.len(),
            spec.count,
            spec.index
        ))
    })
}

impl ShardSlice {
    /// The configuration this shard computes with: its heads and
    /// feed-forward rows (the residual width and vocabulary stay whole).
    pub fn local_config(&self, c: &Config) -> Config {
        let mut l = c.clone();
        l.n_head = self.heads.len();
        l.n_head_kv = self.kv_heads.len();
        l.n_ff = self.ff.len();
        if !self.is_whole() {
            l.shard_heads = Some(ShardHeads {
                head0: self.heads.start,
                kv0: self.kv_heads.start,
                group: c.n_head / c.n_head_kv,
            });
        }
        l
    }

    /// True for the one shard of an unsplit model.
    pub fn is_whole(&self) -> bool {
        self.count == 1
    }
}

#[cfg(test)]
mod tests {
    use super::even;

    #[test]
    fn even_ranges_cover_everything() {
        let r: Vec<_> = (0..2).map(|i| even(3, 2, i)).collect();
        assert_eq!(r, vec![0..2, 2..3]);
        let r: Vec<_> = (0..4).map(|i| even(10, 4, i)).collect();
        assert_eq!(r, vec![0..3, 3..6, 6..8, 8..10]);
    }
}
