//! Open a GGUF model and print what editing needs to know about it.
//!
//! ```text
//! cargo run --example inspect_model [-- path/to/model.gguf]
//! ```
use eamet::hooks::gguf::GgufFile;
use eamet::hooks::info::ModelInfo;

fn main() -> anyhow::Result<()> {
    let path = match std::env::args_os().nth(1) {
        Some(p) => p.into(),
        None => eamet::hooks::paths::default_model()
            .ok_or_else(|| anyhow::anyhow!("no cache directory; pass a model path"))?,
    };
    let file = GgufFile::open(&path)?;
    println!("{}", ModelInfo::from_gguf(&file)?);
    // The edited matrices: W_out of every block (GGUF name ffn_down).
    for l in [0usize, 3, 4, 29] {
        if let Some(t) = file.tensor(&format!("blk.{l}.ffn_down.weight")) {
            println!(
                "blk.{l}.ffn_down  dims {:?}  {}  {} bytes",
                t.dims, t.dtype, t.size
            );
        }
    }
    Ok(())
}
