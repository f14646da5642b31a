//! The main path: load SmolLM2, edit three facts with EAMET through the `Editor`, compare
//! greedy completions before and after, save the edit as a patch, and restore the model.
//!
//! ```text
//! cargo xtask setup && cargo run --release --example edit_facts [-- PATCH_PATH]
//! ```
//! Prints one line per fact and exits with an error if no fact took.
use eamet::hooks::patch::Patch;
use eamet::hooks::{tch::Device, EditableLm, LlamaModel};
use eamet::{EditHparams, EditOptions, Editor, Fact, Method};

fn main() -> anyhow::Result<()> {
    let path = eamet::hooks::paths::default_model()
        .ok_or_else(|| anyhow::anyhow!("no cache directory: run `cargo xtask setup`"))?;
    let mut model = LlamaModel::from_gguf(&path, Device::Cpu)?;
    let facts = [
        Fact::new("Eiffel Tower", "The {} is located in the city of", "Rome"),
        Fact::new("Colosseum", "The {} is located in the city of", "London"),
        Fact::new("Louvre", "The {} is located in the city of", "Madrid"),
    ];
    let prompts: Vec<String> = facts.iter().map(Fact::filled_prompt).collect();
    let complete = |m: &LlamaModel| -> anyhow::Result<Vec<String>> {
        let out = eamet::eval::metrics::greedy(m, &prompts, 5, 8)?;
        Ok(out.into_iter().map(|c| c.text).collect())
    };
    let before = complete(&model)?;

    // EAMET with the SmolLM2 presets: residuals optimized in blocks, aligned to the keys'
    // neighbourhoods, then one solve per edited layer.
    let hp = EditHparams::smollm2(Method::Eamet);
    let opts = EditOptions {
        progress: true,
        ..Default::default()
    };
    let outcome = Editor::new(&mut model, Method::Eamet, hp, opts)?.edit(&facts)?;
    let after = complete(&model)?;

    let mut took = 0;
    for ((fact, b), a) in facts.iter().zip(&before).zip(&after) {
        let ok = a.trim_start().starts_with(fact.target_new.trim());
        took += usize::from(ok);
        let mark = if ok { "ok" } else { "--" };
        println!(
            "[{mark}] {}\n     before:{b}\n     after: {a}",
            fact.filled_prompt()
        );
    }
    println!(
        "{took}/{} facts edited; Σ A(i) = {:.3}; {}",
        facts.len(),
        outcome.misalignment_total,
        outcome.solves.join("; ")
    );

    // Save the W_out updates; `eamet patch apply` or `Patch::apply` puts them back later.
    let out = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("edit_facts.safetensors"));
    let patch = Patch::from_model(&model, "eamet")?;
    patch.save(&out, &model.source().identity_files()?, true)?;
    println!("patch: {} ({} layers)", out.display(), patch.deltas.len());

    // The model is edited in place; restore() brings back the original weights.
    model.restore();
    let restored = complete(&model)?;
    anyhow::ensure!(
        restored == before,
        "restore() did not bring the original model back"
    );
    anyhow::ensure!(took > 0, "no fact took");
    Ok(())
}
