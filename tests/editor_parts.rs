//! The Editor composes a schedule, an objective and per-layer solvers that callers supply
//! (tiny Llama): a toy solver and a toy loss term run through it, AlphaEdit remembers earlier
//! batches across `edit` calls, and failures keep their types.

use eamet::hooks::tch::{Device, Kind, Tensor};
use eamet::hooks::{EditableLm, LlamaModel};
use eamet::optim::{LossTerm, OptimError, Schedule, StepContext};
use eamet::solve::{Diagnostics, Factorization, KeyStats, SolveError, Update, UpdateSolver};
use eamet::stats::Corpus;
use eamet::{EditHparams, EditOptions, Editor, Error, Fact, Method};
use ndarray::{Array2, ArrayView2};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

fn tiny() -> LlamaModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/eamet-hooks/tests/golden/tiny-llama");
    LlamaModel::from_hf_dir(dir, Device::Cpu).unwrap()
}

fn facts() -> Vec<Fact> {
    vec![
        Fact::new("Eiffel Tower", "The {} is located in the city of", "Rome"),
        Fact::new("Toko Yasuda", "{} plays the", "guitar"),
        Fact::new("Japan", "The capital of {} is", "Berlin"),
    ]
}

fn hp(method: Method) -> EditHparams {
    let mut hp = EditHparams::smollm2(method);
    hp.layers = vec![1, 2];
    hp.residual.v_num_grad_steps = 4;
    hp.nullspace_threshold = 1e-3;
    hp.prefixes.seeds.truncate(2);
    hp
}

fn opts(cache: &std::path::Path) -> EditOptions {
    EditOptions {
        cache_dir: Some(cache.to_path_buf()),
        corpus: Some(Corpus::from_docs(
            "tiny",
            ["Rome is the capital of Italy.", "Berlin is in Germany."]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )),
        ..Default::default()
    }
}

/// Writes a fixed rank-one update `Δ = u vᵀ` (scaled by the layer's position) and records what
/// it was given.
struct RankOne {
    calls: Arc<Mutex<Vec<(usize, usize, usize)>>>,
    scale: f64,
}

impl UpdateSolver for RankOne {
    fn name(&self) -> &str {
        "rank-one"
    }
    fn solve(
        &mut self,
        keys: ArrayView2<'_, f64>,
        residuals: ArrayView2<'_, f64>,
        stats: &KeyStats,
    ) -> Result<Update, SolveError> {
        let shape = eamet::solve::validate_problem(keys, residuals, stats)?;
        self.calls
            .lock()
            .unwrap()
            .push((shape.n, shape.d_k, shape.d_r));
        let delta = Array2::from_shape_fn((shape.d_r, shape.d_k), |(i, j)| {
            self.scale * ((i % 3) as f64 - 1.0) * ((j % 2) as f64)
        });
        Ok(Update {
            delta,
            diagnostics: Diagnostics::new("rank-one", Factorization::None),
        })
    }
}

/// `factor · ‖δ‖²`, counting its calls.
struct SquaredNorm {
    factor: f64,
    calls: Arc<AtomicUsize>,
}

impl LossTerm for SquaredNorm {
    fn name(&self) -> &str {
        "sq_norm"
    }
    fn describe(&self) -> String {
        format!("sq_norm*{}", self.factor)
    }
    fn loss(&self, ctx: &StepContext<'_>) -> eamet::optim::Result<Tensor> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(ctx.delta.to_kind(Kind::Double).square().sum(Kind::Double) * self.factor)
    }
}

#[test]
fn a_toy_solver_and_a_toy_loss_term_run_through_the_editor() {
    let cache = tempfile::tempdir().unwrap();
    let mut m = tiny();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let term_calls = Arc::new(AtomicUsize::new(0));
    let solvers: Vec<Box<dyn UpdateSolver>> = [1.0, 2.0]
        .iter()
        .map(|&scale| {
            Box::new(RankOne {
                calls: calls.clone(),
                scale: scale * 1e-3,
            }) as Box<dyn UpdateSolver>
        })
        .collect();
    let (d_model, d_ff) = (m.config().d_model, m.config().d_ff);
    let out = Editor::new(&mut m, Method::Memit, hp(Method::Memit), opts(cache.path()))
        .unwrap()
        .with_schedule(Schedule::Batched { batch: 2 })
        .with_loss_term(SquaredNorm {
            factor: 1e3,
            calls: term_calls.clone(),
        })
        .with_solvers(solvers)
        .unwrap()
        .edit(&facts())
        .unwrap();
    // The solvers were called once per layer, in order, with the batch's shapes.
    assert_eq!(*calls.lock().unwrap(), vec![(3, d_ff, d_model); 2]);
    // What they returned is exactly what the model carries.
    for (idx, (layer, delta)) in out.deltas.iter().enumerate() {
        let scale = (idx as f64 + 1.0) * 1e-3;
        let want = Array2::from_shape_fn((d_model, d_ff), |(i, j)| {
            (scale * ((i % 3) as f64 - 1.0) * ((j % 2) as f64)) as f32
        });
        assert_eq!(delta, &want);
        let acc = m.accumulated_delta(*layer).unwrap().unwrap();
        let acc = Vec::<f32>::try_from(acc.reshape([-1])).unwrap();
        assert_eq!(acc, want.iter().copied().collect::<Vec<_>>());
    }
    assert!(out.solves.iter().all(|s| s.contains("rank-one")));
    // The term ran at every step of every fact and is reported by name.
    assert_eq!(out.schedule, Schedule::Batched { batch: 2 });
    assert!(out.objective.iter().any(|t| t == "sq_norm*1000"));
    let steps: usize = out.residuals.stats.iter().map(|s| s.steps + 1).sum();
    assert_eq!(term_calls.load(Ordering::Relaxed), steps);
    for s in &out.residuals.stats {
        let v = s.terms.iter().find(|(n, _)| n == "sq_norm").unwrap().1;
        assert!(
            (v - 1e3 * s.delta_norm.powi(2)).abs() < 1e-3 * v.max(1.0),
            "{v}"
        );
    }
    // And it acted: a heavy penalty on ‖δ‖² keeps δ smaller than the preset does.
    m.restore();
    let plain = Editor::new(&mut m, Method::Memit, hp(Method::Memit), opts(cache.path()))
        .unwrap()
        .edit(&facts())
        .unwrap();
    for (a, b) in out.residuals.stats.iter().zip(&plain.residuals.stats) {
        assert!(
            a.delta_norm < b.delta_norm,
            "{} vs {}",
            a.delta_norm,
            b.delta_norm
        );
    }
}

#[test]
fn solver_count_and_failures_keep_their_types() {
    let cache = tempfile::tempdir().unwrap();
    let mut m = tiny();
    let e = Editor::new(&mut m, Method::Memit, hp(Method::Memit), opts(cache.path()))
        .unwrap()
        .with_solvers(vec![])
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::Input(ref s) if s.contains("0 solvers for 2")),
        "{e}"
    );
    // A bad fact is the optimizer's typed error, naming the fact.
    let bad = vec![Fact::new("Paris", "no placeholder here", "Rome")];
    let e = Editor::new(&mut m, Method::Eamet, hp(Method::Eamet), opts(cache.path()))
        .unwrap()
        .edit(&bad)
        .unwrap_err();
    assert!(
        matches!(e, Error::Optim(OptimError::Fact { index: 0, .. })),
        "{e}"
    );
    // A zero block size is refused before anything runs.
    let mut h = hp(Method::Eamet);
    h.block = 0;
    let e = Editor::new(&mut m, Method::Eamet, h, opts(cache.path()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("block"), "{e}");
    // A solver error stays a solver error.
    let solvers: Vec<Box<dyn UpdateSolver>> = vec![
        Box::new(
            eamet::solve::MemitSolver::new(1.0)
                .unwrap()
                .without_fallback(),
        ),
        Box::new(
            eamet::solve::MemitSolver::new(0.0)
                .unwrap()
                .without_fallback(),
        ),
    ];
    let e = Editor::new(&mut m, Method::Memit, hp(Method::Memit), opts(cache.path()))
        .unwrap()
        .with_solvers(solvers)
        .unwrap()
        .edit(&facts())
        .unwrap_err();
    assert!(matches!(e, Error::Solve(_)), "{e}");
}

#[test]
fn alphaedit_remembers_earlier_batches_across_edit_calls() {
    // Batch 2 solved by the editor that wrote batch 1 sees batch 1's keys in K_p; a fresh
    // editor on the same model (batch 1 applied) does not, and solves differently.
    let cache = tempfile::tempdir().unwrap();
    let mut m = tiny();
    let f = facts();
    let mut editor = Editor::new(
        &mut m,
        Method::AlphaEdit,
        hp(Method::AlphaEdit),
        opts(cache.path()),
    )
    .unwrap();
    let first = editor.edit(&f[..2]).unwrap();
    let second = editor.edit(&f[2..]).unwrap();
    drop(editor);
    m.restore();
    for (layer, delta) in &first.deltas {
        let t = Tensor::from_slice(delta.as_slice().unwrap())
            .view([delta.nrows() as i64, delta.ncols() as i64]);
        m.apply_delta(*layer, &t).unwrap();
    }
    let fresh = Editor::new(
        &mut m,
        Method::AlphaEdit,
        hp(Method::AlphaEdit),
        opts(cache.path()),
    )
    .unwrap()
    .edit(&f[2..])
    .unwrap();
    // Same residual targets (same model state, same facts) ...
    assert_eq!(second.residuals.deltas, fresh.residuals.deltas);
    // ... but another solve.
    let diff: f32 = (&second.deltas[0].1 - &fresh.deltas[0].1)
        .mapv(f32::abs)
        .sum();
    assert!(diff > 1e-6, "the remembered K_p changes the solve ({diff})");
}
