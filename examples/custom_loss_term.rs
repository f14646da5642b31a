//! Bring your own loss term: a penalty that keeps each fact's residual `δ_i` orthogonal to the
//! subject's own hidden state `h_i`, so the edit moves the representation sideways instead of
//! rescaling it. Added to EAMET's objective through the `Editor`; the example edits the same
//! facts with and without it and prints `cos(δ_i, h_i)`, the final NLL and what the edited
//! model now says.
//!
//! ```text
//! cargo xtask setup && cargo run --release --example custom_loss_term
//! ```
use eamet::hooks::tch::{Device, Kind, Tensor};
use eamet::hooks::{EditableLm, LlamaModel};
use eamet::optim::{LossTerm, StepContext};
use eamet::{EditHparams, EditOptions, EditOutcome, Editor, Fact, Method};

/// `factor · cos²(δ, h)`: zero when `δ ⟂ h`, differentiable everywhere (also at `δ = 0`).
struct OrthogonalToHidden {
    factor: f64,
}

impl LossTerm for OrthogonalToHidden {
    fn name(&self) -> &str {
        "orthogonal_h"
    }
    fn describe(&self) -> String {
        format!("orthogonal_h*{}", self.factor)
    }
    fn loss(&self, ctx: &StepContext<'_>) -> eamet::optim::Result<Tensor> {
        let delta = ctx.delta.to_kind(Kind::Double);
        let h = ctx.h.to_kind(Kind::Double);
        let along = delta.dot(&h) / h.norm();
        let cos2 = along.square() / (delta.square().sum(Kind::Double) + 1e-6);
        Ok(cos2 * self.factor)
    }
}

fn cosines(out: &EditOutcome) -> Vec<f32> {
    let (d, h) = (&out.residuals.deltas, &out.residuals.h);
    d.outer_iter()
        .zip(h.outer_iter())
        .map(|(d, h)| d.dot(&h) / (d.dot(&d).sqrt() * h.dot(&h).sqrt()).max(f32::MIN_POSITIVE))
        .collect()
}

fn main() -> anyhow::Result<()> {
    let path = eamet::hooks::paths::default_model()
        .ok_or_else(|| anyhow::anyhow!("no cache directory: run `cargo xtask setup`"))?;
    let mut model = LlamaModel::from_gguf(&path, Device::Cpu)?;
    let facts = [
        Fact::new("Eiffel Tower", "The {} is located in the city of", "Rome"),
        Fact::new("Japan", "The capital of {} is", "Berlin"),
    ];
    let prompts: Vec<String> = facts.iter().map(Fact::filled_prompt).collect();
    for with_term in [false, true] {
        let hp = EditHparams::smollm2(Method::Eamet);
        let mut editor = Editor::new(&mut model, Method::Eamet, hp, EditOptions::default())?;
        if with_term {
            editor = editor.with_loss_term(OrthogonalToHidden { factor: 2.0 });
        }
        let objective = editor.objective().describe().join(" + ");
        let out = editor.edit(&facts)?;
        let said = eamet::eval::metrics::greedy(&model, &prompts, 4, 8)?;
        println!("objective: {objective}");
        for (((p, c), s), st) in prompts
            .iter()
            .zip(cosines(&out))
            .zip(&said)
            .zip(&out.residuals.stats)
        {
            let term = st.terms.iter().find(|(n, _)| n == "orthogonal_h");
            println!(
                "  cos(δ, h) {c:+.3}  nll {:.3}  {}  {p} ->{}",
                st.final_nll,
                term.map(|(_, v)| format!("term {v:.4}"))
                    .unwrap_or_default(),
                s.text
            );
        }
        model.restore();
    }
    Ok(())
}
