//! Keys: the input of `W_out` at the subject's last token, averaged over templates (§2).

use eamet_hooks::tch::{self, Kind, Tensor};
use eamet_hooks::{Batch, Capture, EditableLm, Padding, Plan, Site};
use ndarray::Array2;

use crate::error::{OptimError, Result};
use crate::fact::PreparedFact;

/// Prompts per forward pass in [`compute_keys`].
pub const KEY_BATCH_ROWS: usize = 128;

/// Keys of all facts at `layer` (`N × d_ff`): `k = ½·k(bare prompt) + ½·mean over the
/// prefixed templates` of the `W_out` input at the subject's last token (just `k(bare)` when
/// there are no prefixed templates). Batched ([`KEY_BATCH_ROWS`] prompts per pass, right
/// padding, stopping after `layer`), no gradient, on the model as it is now (the caller decides
/// whether it is edited).
///
/// # Errors
/// [`OptimError::Input`] for facts with different template counts or no facts; model errors.
pub fn compute_keys<M: EditableLm + ?Sized>(
    model: &M,
    facts: &[PreparedFact],
    layer: usize,
) -> Result<Array2<f32>> {
    let _g = tch::no_grad_guard();
    let d_ff = model.config().d_ff;
    let n_layers = model.config().n_layers;
    if layer >= n_layers {
        return Err(OptimError::Input(format!(
            "layer {layer} does not exist (the model has {n_layers} layers)"
        )));
    }
    let t = match facts.first() {
        Some(f) => f.templates(),
        None => return Ok(Array2::zeros((0, d_ff))),
    };
    if let Some(f) = facts.iter().find(|f| f.templates() != t || t == 0) {
        return Err(OptimError::Input(format!(
            "fact {} has {} templates, the first fact {t}: prepare all facts with the same prefixes",
            f.index,
            f.templates()
        )));
    }
    // Every (fact, template) prompt, in order.
    let jobs: Vec<(usize, usize)> = (0..facts.len())
        .flat_map(|i| (0..t).map(move |j| (i, j)))
        .collect();
    let mut rows: Vec<Tensor> = Vec::with_capacity(jobs.len());
    let pad = model.tokenizer().pad_id;
    for chunk in jobs.chunks(KEY_BATCH_ROWS) {
        let seqs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|&(i, j)| facts[i].key_prompts[j].clone())
            .collect();
        let batch = Batch::new(&seqs, pad, Padding::Right, model.device())?;
        let at = chunk
            .iter()
            .enumerate()
            .map(|(r, &(i, j))| Ok((r, batch.slot(r, facts[i].subject_last[j])?)))
            .collect::<Result<Vec<_>>>()?;
        let out = model.forward(
            &batch,
            &Plan {
                captures: vec![Capture {
                    layer,
                    site: Site::MlpKey,
                    at: Some(at),
                }],
                stop_after: Some(layer),
                ..Default::default()
            },
        )?;
        rows.push(out.captures[0].to_kind(Kind::Double));
    }
    let all = Tensor::cat(&rows, 0).view([facts.len() as i64, t as i64, d_ff as i64]);
    let bare = all.select(1, 0);
    let k = if t > 1 {
        let rest = all
            .narrow(1, 1, t as i64 - 1)
            .mean_dim(1, false, Kind::Double);
        (bare + rest) * 0.5
    } else {
        bare
    };
    crate::tensor_to_array2(&k)
}
