//! `eamet edit`.

use crate::common::{corpus, hparams, load_model, read_records, refuse_existing, resolve_model};
use anyhow::{bail, Result};
use eamet::eval::metrics::{evaluate, summarize, ContextPrefixes, EvalConfig};
use eamet::hooks::{EditableLm, LlamaModel};
use eamet::{EditOptions, Editor, Fact, Method};
use std::path::PathBuf;

/// Arguments of `eamet edit`.
pub struct EditArgs {
    pub model: Option<PathBuf>,
    pub facts: Option<PathBuf>,
    pub method: String,
    pub hparams: Option<PathBuf>,
    pub layers: Option<Vec<usize>>,
    pub block: Option<usize>,
    pub corpus: Vec<PathBuf>,
    pub patch: Option<PathBuf>,
    pub out: Option<crate::export::OutSpec>,
    pub run_dir: Option<PathBuf>,
    pub resume: bool,
    pub eval: bool,
    pub load: eamet::hooks::LoadOptions,
    pub json: bool,
}

fn first_words(model: &LlamaModel, facts: &[Fact]) -> Result<Vec<String>> {
    let prompts: Vec<String> = facts.iter().map(Fact::filled_prompt).collect();
    Ok(eamet::eval::metrics::greedy(model, &prompts, 5, 32)?
        .into_iter()
        .map(|c| c.text.replace('\n', " ").trim_end().to_string())
        .collect())
}

pub fn run(a: EditArgs) -> Result<()> {
    let method = Method::parse(&a.method)?;
    let (records, source, _) = read_records(a.facts.as_deref(), 0, None)?;
    let facts: Vec<Fact> = records.iter().map(|r| r.rewrite.to_fact()).collect();
    eamet::optim::validate_facts(&facts)?;
    if let Some(p) = &a.patch {
        refuse_existing(p, "patch file")?;
    }
    if let Some(dir) = &a.run_dir {
        let manifest = dir.join("residuals").join("manifest.json");
        if manifest.exists() && !a.resume {
            bail!(
                "run directory {} holds an earlier run; pass --resume to continue it, or choose another directory",
                dir.display()
            );
        }
    } else if a.resume {
        bail!("--resume needs --run-dir");
    }
    let corpus = corpus(&a.corpus)?;
    let path = resolve_model(a.model)?;
    if let Some(o) = &a.out {
        o.check(&path)?;
    }
    let mut model = load_model(&path, a.load)?;
    let hp = hparams(
        method,
        a.hparams.as_deref(),
        a.layers,
        a.block,
        model.config(),
    )?;
    if let Some(o) = &a.out {
        o.check_layers(&path, &hp.layers)?;
    }
    if !a.json {
        println!("model   {} ({})", path.display(), a.load.describe());
        println!(
            "method  {}, layers {:?}, {} facts from {source}, residuals {}",
            eamet::evaluation::method_name(method),
            hp.layers,
            facts.len(),
            eamet::evaluation::describe_residual_schedule(method.schedule(&hp))
        );
    }
    let before = first_words(&model, &facts)?;
    let cfg = EvalConfig {
        fluency_tokens: 0,
        prefixed_len: None,
        robustness_lens: Vec::new(),
        ..Default::default()
    };
    let pre = if a.eval {
        Some(evaluate(
            &model,
            &records,
            &ContextPrefixes::none(),
            &cfg,
            None,
        )?)
    } else {
        None
    };
    let opts = EditOptions {
        run_dir: a.run_dir,
        corpus,
        progress: !a.json,
        ..Default::default()
    };
    let out = Editor::new(&mut model, method, hp, opts)?.edit(&facts)?;
    let after = first_words(&model, &facts)?;
    let post = match &pre {
        Some(pre) => Some(evaluate(
            &model,
            &records,
            &ContextPrefixes::none(),
            &cfg,
            Some(pre),
        )?),
        None => None,
    };
    let hits: Vec<bool> = facts
        .iter()
        .zip(&after)
        .map(|(f, a)| a.starts_with(&format!(" {}", f.target_new)))
        .collect();
    let ok = hits.iter().filter(|&&h| h).count();
    let fit = out.written_fit()?;
    if a.json {
        let v = serde_json::json!({
            "method": eamet::evaluation::method_name(method),
            "schedule": out.schedule,
            "facts": facts.iter().zip(&before).zip(&after).zip(&hits).map(|(((f, b), a), h)| serde_json::json!({
                "prompt": f.filled_prompt(), "target_new": f.target_new, "before": b, "after": a, "edited": h,
            })).collect::<Vec<_>>(),
            "edited": ok,
            "final_nll": out.residuals.stats.iter().map(|s| s.final_nll).collect::<Vec<_>>(),
            "misalignment_total": out.misalignment_total,
            "written_misalignment_total": out.written_misalignment_total,
            "written_fit": fit,
            "timings": out.timings,
            "pre": pre.as_ref().map(|p| summarize(p)),
            "post": post.as_ref().map(|p| summarize(p)),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!();
        println!("| prompt | new object | before | after | edited |");
        println!("|---|---|---|---|---|");
        for (((f, b), a), h) in facts.iter().zip(&before).zip(&after).zip(&hits) {
            println!(
                "| {} | {} | {} | {} | {} |",
                f.filled_prompt(),
                f.target_new,
                b.trim(),
                a.trim(),
                if *h { "yes" } else { "no" }
            );
        }
        println!();
        println!(
            "edited: {ok}/{} facts now greedy-complete with the new object",
            facts.len()
        );
        let nll: Vec<String> = out
            .residuals
            .stats
            .iter()
            .map(|s| format!("{:.3}", s.final_nll))
            .collect();
        println!("final residual NLL per fact: {}", nll.join(" "));
        println!(
            "misalignment (A(i) = KL(P_r || P_k) over j < i, tau 0.07): optimized residuals {:.3}, written {:.3}",
            out.misalignment_total, out.written_misalignment_total
        );
        if let Some(m) = eamet::WrittenFit::mean(&fit) {
            println!(
                "written residuals (mean over facts): share of δ written {:.3}, cos(written, δ) {:.3}, ‖δ‖ {:.2}",
                m.share, m.cosine, m.norm
            );
        }
        let times: Vec<String> = out
            .timings
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}s"))
            .collect();
        println!("timings: {}", times.join(", "));
        if let (Some(pre), Some(post)) = (&pre, &post) {
            let (pre, post) = (summarize(pre), summarize(post));
            println!();
            println!("| metric | pre-edit | post-edit |");
            println!("|---|---|---|");
            for (k, label) in eamet::eval::metrics::METRICS {
                if let (Some(a), Some(b)) = (pre.get(*k), post.get(*k)) {
                    println!("| {label} | {:.3} | {:.3} |", a.0, b.0);
                }
            }
        }
    }
    let mut patch_sha256 = None;
    if let Some(p) = a.patch {
        let mut patch =
            eamet::hooks::patch::Patch::from_model(&model, eamet::evaluation::method_name(method))?;
        patch
            .meta
            .extra
            .insert("facts".into(), facts.len().to_string());
        let inputs = model.source().identity_files()?;
        patch.save(&p, &inputs, false)?;
        patch_sha256 = Some(eamet::hooks::patch::sha256_file(&p)?);
        if !a.json {
            println!("patch written to {}", p.display());
        }
    }
    if let Some(o) = &a.out {
        let meta = eamet::hooks::export::EditMetadata {
            method: eamet::evaluation::method_name(method).into(),
            facts: facts.len(),
            patch_sha256,
        };
        o.write(&model, &meta, a.json)?;
    }
    Ok(())
}
