//! Bring your own solver: MEMIT with a norm anchor, `Δ (λC + μI + KᵀK) = RᵀK`, plugged into
//! the `Editor` without touching the library, then used to edit SmolLM2.
//!
//! ```text
//! cargo xtask setup && cargo run --release --example custom_solver
//! ```
use eamet::hooks::{tch::Device, EditableLm, LlamaModel};
use eamet::solve::{KeyStats, MemitSolver, SolveError, Update, UpdateSolver};
use eamet::{EditHparams, EditOptions, Editor, Fact, Method};
use ndarray::ArrayView2;

/// MEMIT whose preserved-key statistics get `μ/λ` added on the diagonal: Δ stays small also in
/// directions the statistics never saw.
struct AnchoredMemit {
    lambda: f64,
    mu: f64,
}

impl UpdateSolver for AnchoredMemit {
    fn name(&self) -> &str {
        "memit+anchor"
    }
    fn solve(
        &mut self,
        keys: ArrayView2<'_, f64>,
        residuals: ArrayView2<'_, f64>,
        stats: &KeyStats,
    ) -> Result<Update, SolveError> {
        let mut outer = stats.sum_outer();
        let extra = self.mu / self.lambda * stats.tokens() as f64;
        outer.diag_mut().mapv_inplace(|x| x + extra);
        let sum = stats.sum().to_owned();
        let anchored = KeyStats::from_sums(outer, sum, stats.tokens(), stats.samples())?;
        let mut update = MemitSolver::new(self.lambda)?.solve(keys, residuals, &anchored)?;
        update.diagnostics.solver = self.name().into();
        Ok(update)
    }
}

fn main() -> anyhow::Result<()> {
    let path = eamet::hooks::paths::default_model()
        .ok_or_else(|| anyhow::anyhow!("no cache directory: run `cargo xtask setup`"))?;
    let mut model = LlamaModel::from_gguf(&path, Device::Cpu)?;
    let facts = [
        Fact::new("Eiffel Tower", "The {} is located in the city of", "Rome"),
        Fact::new("Louvre", "The {} is located in the city of", "Madrid"),
        Fact::new("Japan", "The capital of {} is", "Berlin"),
    ];
    let hp = EditHparams::smollm2(Method::Memit);
    let solvers: Vec<Box<dyn UpdateSolver>> = (0..hp.layers.len())
        .map(|i| {
            Box::new(AnchoredMemit {
                lambda: hp.lambda(i),
                mu: 5.0,
            }) as Box<dyn UpdateSolver>
        })
        .collect();
    let outcome = Editor::new(&mut model, Method::Memit, hp, EditOptions::default())?
        .with_solvers(solvers)?
        .edit(&facts)?;
    for (layer, delta) in &outcome.deltas {
        let norm = delta.iter().map(|x| x * x).sum::<f32>().sqrt();
        println!("layer {layer}: ‖Δ‖ = {norm:.3}");
    }
    for s in &outcome.solves {
        println!("{s}");
    }
    let prompts: Vec<String> = facts.iter().map(Fact::filled_prompt).collect();
    let completions = eamet::eval::metrics::greedy(&model, &prompts, 4, 8)?;
    for (p, c) in prompts.iter().zip(completions) {
        println!("{p} ->{}", c.text);
    }
    model.restore();
    Ok(())
}
