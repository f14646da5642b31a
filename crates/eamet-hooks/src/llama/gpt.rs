//! GPT-2 and GPT-J weights: transformers' tensor names and layouts read into [`Block`]s, and
//! written back out under the same names for [`LlamaModel::named_weights`].
//!
//! GPT-2 stores its projections as `Conv1D` weights, `[in, out]`: transposed at load into the
//! `nn.Linear` orientation every [`Block`] holds (`[out, in]`), and its fused `c_attn` (`[d, 3d]`,
//! columns q | k | v, biases likewise) split into q, k and v. GPT-J's weights are `nn.Linear`
//! already. See `docs/design/gpt2-gptj.md` for the full mapping.

use super::{require, Block, LlamaModel, Norm, Place, TensorSource, Weights};
use crate::config::ModelConfig;
use crate::error::Result;
use tch::Tensor;

/// The prefix of the tensor names: `transformer.` as `GPT2LMHeadModel` / `GPTJForCausalLM`
/// save them, or none for checkpoints saved from the bare `GPT2Model` / `GPTJModel` (the
/// original `gpt2` checkpoint on the Hub is one).
fn prefix(src: &dyn TensorSource) -> &'static str {
    if !src.has("transformer.wte.weight") && src.has("wte.weight") {
        ""
    } else {
        "transformer."
    }
}

/// A LayerNorm's weight and bias (`{name}.weight`, `{name}.bias`).
fn layer_norm(src: &dyn TensorSource, name: &str, d: i64, place: Place) -> Result<Norm> {
    Ok(Norm {
        w: place.put(require(src, &format!("{name}.weight"), &[d])?),
        b: Some(place.put(require(src, &format!("{name}.bias"), &[d])?)),
    })
}

/// A `Conv1D` weight stored `[d_in, d_out]`, as an `nn.Linear` one: `[d_out, d_in]`.
fn conv1d(src: &dyn TensorSource, name: &str, d_in: i64, d_out: i64) -> Result<Tensor> {
    Ok(require(src, name, &[d_in, d_out])?
        .transpose(0, 1)
        .contiguous())
}

fn sizes(cfg: &ModelConfig) -> (i64, i64, i64) {
    (cfg.vocab_size as i64, cfg.d_model as i64, cfg.d_ff as i64)
}

/// GPT-2: `wte`, `wpe`, per block `ln_1`, `attn.c_attn` (fused q|k|v), `attn.c_proj`, `ln_2`,
/// `mlp.c_fc`, `mlp.c_proj`, all with biases; `ln_f`; the LM head tied to `wte` unless the
/// configuration unties it (then `lm_head.weight`, no bias).
pub(super) fn load_gpt2(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    place: Place,
) -> Result<Weights> {
    let (v, d, f) = sizes(cfg);
    let p = prefix(src);
    let dev = |t: Tensor| place.put(t);
    let embed = dev(require(src, &format!("{p}wte.weight"), &[v, d])?);
    let wpe = dev(require(
        src,
        &format!("{p}wpe.weight"),
        &[cfg.max_positions as i64, d],
    )?);
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let n = |s: &str| format!("{p}h.{l}.{s}");
        let bias = |s: &str, len: i64| -> Result<Option<Tensor>> {
            Ok(Some(dev(require(src, &n(s), &[len])?)))
        };
        // Rows of the transposed c_attn (and entries of its bias): q, then k, then v.
        let qkv = conv1d(src, &n("attn.c_attn.weight"), d, 3 * d)?;
        let qkv_bias = require(src, &n("attn.c_attn.bias"), &[3 * d])?;
        let third = |t: &Tensor, i: i64| dev(t.narrow(0, i * d, d).contiguous());
        blocks.push(Block {
            attn_norm: layer_norm(src, &n("ln_1"), d, place)?,
            wq: third(&qkv, 0),
            wk: third(&qkv, 1),
            wv: third(&qkv, 2),
            bq: Some(third(&qkv_bias, 0)),
            bk: Some(third(&qkv_bias, 1)),
            bv: Some(third(&qkv_bias, 2)),
            wo: dev(conv1d(src, &n("attn.c_proj.weight"), d, d)?),
            bo: bias("attn.c_proj.bias", d)?,
            q_norm: None,
            k_norm: None,
            post_attn_norm: None,
            mlp_norm: Some(layer_norm(src, &n("ln_2"), d, place)?),
            w_gate: None,
            w_up: dev(conv1d(src, &n("mlp.c_fc.weight"), d, f)?),
            b_up: bias("mlp.c_fc.bias", f)?,
            // Stored [d_ff, d_model]: W_out is its transpose, key -> residual.
            w_down: dev(conv1d(src, &n("mlp.c_proj.weight"), f, d)?),
            b_down: bias("mlp.c_proj.bias", d)?,
            post_mlp_norm: None,
        });
    }
    let norm = layer_norm(src, &format!("{p}ln_f"), d, place)?;
    let lm_head = if cfg.tied_embeddings {
        None
    } else {
        Some(dev(require(src, "lm_head.weight", &[v, d])?))
    };
    Ok(Weights {
        embed,
        pos_embed: Some(wpe),
        blocks,
        norm,
        lm_head,
        lm_head_bias: None,
    })
}

/// GPT-J: `wte`, per block `ln_1`, `attn.{q,k,v,out}_proj` (no biases), `mlp.fc_in`,
/// `mlp.fc_out` (with biases); `ln_f`; `lm_head` with its bias (the weight tied to `wte` only
/// when the configuration says so).
pub(super) fn load_gptj(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    place: Place,
) -> Result<Weights> {
    let (v, d, f) = sizes(cfg);
    let p = prefix(src);
    let dev = |t: Tensor| place.put(t);
    let embed = dev(require(src, &format!("{p}wte.weight"), &[v, d])?);
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let n = |s: &str| format!("{p}h.{l}.{s}");
        let get =
            |s: &str, shape: &[i64]| -> Result<Tensor> { Ok(dev(require(src, &n(s), shape)?)) };
        blocks.push(Block {
            attn_norm: layer_norm(src, &n("ln_1"), d, place)?,
            wq: get("attn.q_proj.weight", &[d, d])?,
            wk: get("attn.k_proj.weight", &[d, d])?,
            wv: get("attn.v_proj.weight", &[d, d])?,
            bq: None,
            bk: None,
            bv: None,
            wo: get("attn.out_proj.weight", &[d, d])?,
            bo: None,
            q_norm: None,
            k_norm: None,
            post_attn_norm: None,
            // Parallel block: the MLP reads ln_1's output too.
            mlp_norm: None,
            w_gate: None,
            w_up: get("mlp.fc_in.weight", &[f, d])?,
            b_up: Some(get("mlp.fc_in.bias", &[f])?),
            w_down: get("mlp.fc_out.weight", &[d, f])?,
            b_down: Some(get("mlp.fc_out.bias", &[d])?),
            post_mlp_norm: None,
        });
    }
    let norm = layer_norm(src, &format!("{p}ln_f"), d, place)?;
    let lm_head = if cfg.tied_embeddings {
        None
    } else {
        Some(dev(require(src, "lm_head.weight", &[v, d])?))
    };
    let lm_head_bias = Some(dev(require(src, "lm_head.bias", &[v])?));
    Ok(Weights {
        embed,
        pos_embed: None,
        blocks,
        norm,
        lm_head,
        lm_head_bias,
    })
}

/// A LayerNorm's two entries.
fn push_norm(out: &mut Vec<(String, Tensor)>, name: &str, n: &Norm) {
    out.push((format!("{name}.weight"), n.w.shallow_clone()));
    if let Some(b) = &n.b {
        out.push((format!("{name}.bias"), b.shallow_clone()));
    }
}

fn push_bias(out: &mut Vec<(String, Tensor)>, name: String, b: &Option<Tensor>) {
    if let Some(b) = b {
        out.push((name, b.shallow_clone()));
    }
}

/// The embedding, the final norm and the LM head (shared by both layouts).
fn push_ends(m: &LlamaModel, out: &mut Vec<(String, Tensor)>) {
    push_norm(out, "transformer.ln_f", &m.norm);
    if let Some(h) = &m.lm_head {
        out.push(("lm_head.weight".into(), h.shallow_clone()));
    }
    push_bias(out, "lm_head.bias".into(), &m.lm_head_bias);
}

/// GPT-2's tensors as `GPT2LMHeadModel` names and lays them out (`Conv1D`: `[in, out]`).
pub(super) fn gpt2_named(m: &LlamaModel) -> Vec<(String, Tensor)> {
    let t = |x: &Tensor| x.transpose(0, 1);
    let mut out = vec![(
        "transformer.wte.weight".to_string(),
        m.embed.shallow_clone(),
    )];
    if let Some(wpe) = &m.pos_embed {
        out.push(("transformer.wpe.weight".into(), wpe.shallow_clone()));
    }
    for (l, b) in m.blocks.iter().enumerate() {
        let n = |s: &str| format!("transformer.h.{l}.{s}");
        push_norm(&mut out, &n("ln_1"), &b.attn_norm);
        out.push((
            n("attn.c_attn.weight"),
            t(&Tensor::cat(&[&b.wq, &b.wk, &b.wv], 0)),
        ));
        if let (Some(q), Some(k), Some(v)) = (&b.bq, &b.bk, &b.bv) {
            out.push((n("attn.c_attn.bias"), Tensor::cat(&[q, k, v], 0)));
        }
        out.push((n("attn.c_proj.weight"), t(&b.wo)));
        push_bias(&mut out, n("attn.c_proj.bias"), &b.bo);
        if let Some(norm) = &b.mlp_norm {
            push_norm(&mut out, &n("ln_2"), norm);
        }
        out.push((n("mlp.c_fc.weight"), t(&b.w_up)));
        push_bias(&mut out, n("mlp.c_fc.bias"), &b.b_up);
        out.push((n("mlp.c_proj.weight"), t(&b.w_down)));
        push_bias(&mut out, n("mlp.c_proj.bias"), &b.b_down);
    }
    push_ends(m, &mut out);
    out
}

/// GPT-J's tensors as `GPTJForCausalLM` names them.
pub(super) fn gptj_named(m: &LlamaModel) -> Vec<(String, Tensor)> {
    let mut out = vec![(
        "transformer.wte.weight".to_string(),
        m.embed.shallow_clone(),
    )];
    for (l, b) in m.blocks.iter().enumerate() {
        let n = |s: &str| format!("transformer.h.{l}.{s}");
        push_norm(&mut out, &n("ln_1"), &b.attn_norm);
        out.push((n("attn.q_proj.weight"), b.wq.shallow_clone()));
        out.push((n("attn.k_proj.weight"), b.wk.shallow_clone()));
        out.push((n("attn.v_proj.weight"), b.wv.shallow_clone()));
        out.push((n("attn.out_proj.weight"), b.wo.shallow_clone()));
        out.push((n("mlp.fc_in.weight"), b.w_up.shallow_clone()));
        push_bias(&mut out, n("mlp.fc_in.bias"), &b.b_up);
        out.push((n("mlp.fc_out.weight"), b.w_down.shallow_clone()));
        push_bias(&mut out, n("mlp.fc_out.bias"), &b.b_down);
    }
    push_ends(m, &mut out);
    out
}
