//! Exports read back: GGUF files and safetensors directories written from edited models give
//! the in-memory edited model's logits again (exactly for f32, within measured bounds for the
//! encoded types), keep every untouched byte, carry the edit's metadata, and refuse bad
//! requests without leaving files behind.

use eamet_hooks::export::{
    check_gguf_edited_types, save_gguf, save_safetensors_dir, write_gguf, EditMetadata, EditedType,
    ExportError, OutputOptions, StDtype, TensorReplacement,
};
use eamet_hooks::gguf::{GgmlType, GgufFile, MetaValue};
use eamet_hooks::patch::Patch;
use eamet_hooks::quant::QuantError;
use eamet_hooks::tch::{Device, Kind, Tensor};
use eamet_hooks::{Batch, EditableLm, LlamaModel, LogProbs, ModelError, Padding, Plan};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const TEXTS: [&str; 3] = [
    "The Eiffel Tower is located in the city of",
    "Toko Yasuda plays the",
    "The capital of Japan is",
];

fn tiny_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny-llama")
}

/// Next-token log-probabilities at the end of every text, `[texts, vocab]`.
fn last_logprobs(m: &LlamaModel) -> Tensor {
    let ids: Vec<Vec<u32>> = TEXTS
        .iter()
        .map(|t| m.tokenizer().encode(t).unwrap())
        .collect();
    let batch = Batch::new(&ids, m.tokenizer().pad_id, Padding::Right, Device::Cpu).unwrap();
    let at: Vec<(usize, usize)> = ids
        .iter()
        .enumerate()
        .map(|(r, s)| (r, s.len() - 1))
        .collect();
    m.forward(
        &batch,
        &Plan {
            logprobs: Some(LogProbs::Full { at }),
            ..Default::default()
        },
    )
    .unwrap()
    .logprobs
    .unwrap()
    .to_kind(Kind::Double)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// A seeded edit of `layers` whose size is a fixed fraction of each `W_out`.
fn edit(m: &mut LlamaModel, layers: &[usize], scale: f64) {
    eamet_hooks::tch::manual_seed(7);
    for &l in layers {
        let w = m.w_out(l).unwrap();
        let d = Tensor::randn(w.size(), (Kind::Float, Device::Cpu));
        let d = &d * (scale * w.norm().double_value(&[]) / d.norm().double_value(&[]));
        m.apply_delta(l, &d).unwrap();
    }
}

fn sha(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

#[test]
fn safetensors_from_a_hugging_face_dir_keeps_names_dtypes_and_other_bytes() {
    let mut m = LlamaModel::from_hf_dir(tiny_dir(), Device::Cpu).unwrap();
    edit(&mut m, &[1], 0.05);
    let want = last_logprobs(&m);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("edited");
    let files = save_safetensors_dir(&m, &out, None, &OutputOptions::default()).unwrap();
    assert!(files.iter().any(|f| f.ends_with("config.json")));
    assert!(files
        .iter()
        .any(|f| f.ends_with("model.safetensors.index.json")));
    // Reloads to the edited model's logits.
    let back = LlamaModel::from_hf_dir(&out, Device::Cpu).unwrap();
    assert_eq!(max_diff(&last_logprobs(&back), &want), 0.0);
    // Same tensor names, dtypes and shapes in every file; only the edited tensor's bytes differ.
    let mut changed = Vec::new();
    for e in std::fs::read_dir(tiny_dir()).unwrap().flatten() {
        let p = e.path();
        let name = p.file_name().unwrap().to_owned();
        let (a, b) = (
            std::fs::read(&p).unwrap(),
            std::fs::read(out.join(&name)).unwrap(),
        );
        if p.extension().is_some_and(|x| x == "safetensors") {
            let (sa, sb) = (
                safetensors::SafeTensors::deserialize(&a).unwrap(),
                safetensors::SafeTensors::deserialize(&b).unwrap(),
            );
            let mut na = sa.names();
            let mut nb = sb.names();
            na.sort();
            nb.sort();
            assert_eq!(na, nb);
            for n in na {
                let (ta, tb) = (sa.tensor(n).unwrap(), sb.tensor(n).unwrap());
                assert_eq!((ta.dtype(), ta.shape()), (tb.dtype(), tb.shape()), "{n}");
                if ta.data() != tb.data() {
                    changed.push(n.to_string());
                }
            }
        } else {
            assert_eq!(sha(&a), sha(&b), "{name:?} copied byte for byte");
        }
    }
    assert_eq!(changed, ["model.layers.1.mlp.down_proj.weight"]);
    assert!(leftovers(tmp.path()).is_empty());
}

#[test]
fn safetensors_export_refuses_inputs_existing_outputs_and_dtype_changes() {
    let mut m = LlamaModel::from_hf_dir(tiny_dir(), Device::Cpu).unwrap();
    edit(&mut m, &[0], 0.05);
    let opts = OutputOptions::default();
    let e = save_safetensors_dir(&m, &tiny_dir(), None, &opts).unwrap_err();
    assert!(
        matches!(&e, ModelError::Export(x) if matches!(**x, ExportError::InputPath { .. })),
        "{e}"
    );
    let e = save_safetensors_dir(&m, &tiny_dir().join("sub"), None, &opts).unwrap_err();
    assert!(
        matches!(&e, ModelError::Export(x) if matches!(**x, ExportError::InputPath { .. })),
        "an output inside the input directory: {e}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    std::fs::create_dir(&out).unwrap();
    let e = save_safetensors_dir(&m, &out, None, &opts).unwrap_err();
    assert!(
        matches!(&e, ModelError::Export(x) if matches!(**x, ExportError::Exists { .. })),
        "{e}"
    );
    let e =
        save_safetensors_dir(&m, &tmp.path().join("y"), Some(StDtype::Bf16), &opts).unwrap_err();
    assert!(e.to_string().contains("keeps its own dtypes"), "{e}");
    assert!(!tmp.path().join("y").exists());
    assert!(leftovers(tmp.path()).is_empty());
    // With overwrite, the existing directory is replaced.
    let opts = OutputOptions {
        overwrite: true,
        ..Default::default()
    };
    save_safetensors_dir(&m, &out, None, &opts).unwrap();
    assert!(out.join("config.json").exists());
}

#[test]
fn bf16_checkpoints_stay_bf16() {
    // A bf16 copy of the tiny model, made here.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("bf16");
    std::fs::create_dir(&src).unwrap();
    for e in std::fs::read_dir(tiny_dir()).unwrap().flatten() {
        let p = e.path();
        let to = src.join(p.file_name().unwrap());
        if p.extension().is_some_and(|x| x == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let data: Vec<(String, Vec<u8>, Vec<usize>)> = st
                .tensors()
                .into_iter()
                .map(|(n, v)| {
                    let b: Vec<u8> = v
                        .data()
                        .chunks_exact(4)
                        .flat_map(|c| {
                            half::bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                                .to_le_bytes()
                        })
                        .collect();
                    (n, b, v.shape().to_vec())
                })
                .collect();
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
                .iter()
                .map(|(n, b, s)| {
                    (
                        n.clone(),
                        safetensors::tensor::TensorView::new(
                            safetensors::Dtype::BF16,
                            s.clone(),
                            b,
                        )
                        .unwrap(),
                    )
                })
                .collect();
            std::fs::write(&to, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
        } else {
            std::fs::copy(&p, &to).unwrap();
        }
    }
    let mut m = LlamaModel::from_hf_dir(&src, Device::Cpu).unwrap();
    edit(&mut m, &[2], 0.05);
    let out = tmp.path().join("out");
    save_safetensors_dir(&m, &out, None, &OutputOptions::default()).unwrap();
    let back = LlamaModel::from_hf_dir(&out, Device::Cpu).unwrap();
    let w = m.w_out(2).unwrap();
    let w_back = back.w_out(2).unwrap();
    // Written as bf16: equal to the edited weights rounded to bf16.
    let rounded = w.to_kind(Kind::BFloat16).to_kind(Kind::Float);
    assert_eq!(max_diff(&w_back, &rounded), 0.0);
    assert!(max_diff(&w_back, &w) > 0.0, "the edit is not bf16-exact");
}

/// The SmolLM2 GGUF of `cargo xtask setup`, or `None` (with a message) where it is absent.
fn smollm2_path() -> Option<PathBuf> {
    let p = eamet_hooks::paths::default_model()?;
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} missing (run `cargo xtask setup`)",
            p.display()
        );
        None
    }
}

#[test]
fn gguf_exports_of_smollm2_read_back_for_every_edited_type() {
    let Some(path) = smollm2_path() else { return };
    let mut m = LlamaModel::from_gguf(&path, Device::Cpu).unwrap();
    let base = last_logprobs(&m);
    edit(&mut m, &[3, 4], 0.02);
    let want = last_logprobs(&m);
    assert!(max_diff(&want, &base) > 1e-3, "the edit changes the logits");
    let src = GgufFile::open(&path).unwrap();
    let patch = Patch::from_model(&m, "test").unwrap();
    let content = patch.content_sha256().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let meta = EditMetadata {
        method: "test".into(),
        facts: 2,
        patch_sha256: Some("ab".repeat(32)),
    };
    // Largest deviation of the next-token log-probs from the in-memory edited model.
    let mut bounds = BTreeMap::new();
    for t in EditedType::ALL {
        let out = tmp.path().join(format!("edited-{t}.gguf"));
        let r = save_gguf(&m, &out, t, &meta, &OutputOptions::default()).unwrap();
        assert_eq!(r.tensors.len(), 2);
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.alignment, src.alignment);
        // Untouched tensors: same bytes; edited ones: the type asked for.
        for info in &src.tensors {
            let got = f.tensor(&info.name).unwrap();
            assert_eq!(got.dims, info.dims);
            assert_eq!(got.offset % f.alignment, 0);
            if info.name == "blk.3.ffn_down.weight" || info.name == "blk.4.ffn_down.weight" {
                assert_eq!(got.dtype, t.resolve(info.dtype), "{}", info.name);
            } else {
                assert_eq!(got.dtype, info.dtype);
                assert_eq!(
                    sha(f.tensor_bytes(got)),
                    sha(src.tensor_bytes(info)),
                    "{}",
                    info.name
                );
            }
        }
        // Every input metadata entry is byte-identical; the edit's keys are added.
        for (i, (k, _)) in src.metadata.iter().enumerate() {
            assert_eq!(src.metadata_raw(i), f.metadata_raw(i), "{k}");
        }
        assert_eq!(f.metadata.len(), src.metadata.len() + 8);
        assert_eq!(f.metadata_str("eamet.method").unwrap(), "test");
        assert_eq!(f.metadata_u64("eamet.facts").unwrap(), 2);
        assert_eq!(
            f.metadata_str("eamet.patch.content_sha256").unwrap(),
            content
        );
        assert_eq!(
            f.metadata_str("eamet.patch.sha256").unwrap(),
            "ab".repeat(32)
        );
        assert_eq!(
            f.metadata_str("eamet.base_sha256").unwrap(),
            m.base_sha256().unwrap()
        );
        assert_eq!(f.metadata_str("eamet.edited_type").unwrap(), t.to_string());
        assert_eq!(
            f.get("eamet.layers"),
            Some(&MetaValue::Array(vec![
                MetaValue::U32(3),
                MetaValue::U32(4)
            ]))
        );
        let back = LlamaModel::from_gguf(&out, Device::Cpu).unwrap();
        let dev = max_diff(&last_logprobs(&back), &want);
        bounds.insert(t.to_string(), dev);
        let e = &r.tensors[0];
        eprintln!(
            "{t}: max |Δ log p| {dev:.2e}, ‖Ŵ−W‖/‖Δ‖ {:.4}, cos {:.4}",
            e.relative_error, e.delta_cosine
        );
        match t {
            EditedType::F32 => {
                assert!(dev < 1e-5, "f32: {dev}");
                assert_eq!(e.error_norm, 0.0);
            }
            // Measured on this edit (‖Δ‖ = 2% of ‖W‖): f16 1.3e-3, q8_0 5.7e-2 of log-prob;
            // the bounds leave 2-4x room.
            EditedType::F16 => assert!(dev < 5e-3, "f16: {dev}"),
            EditedType::Q8_0 => assert!(dev < 0.2, "q8_0: {dev}"),
            EditedType::Source => assert!(dev < 2.0, "source: {dev}"),
        }
        if t != EditedType::F32 {
            assert!(e.error_norm > 0.0, "{t} is lossy");
        }
        assert!(leftovers(tmp.path()).is_empty());
    }
    // The cruder the type, the larger the deviation.
    assert!(bounds["f32"] <= bounds["f16"] && bounds["f16"] <= bounds["q8_0"]);
    assert!(bounds["q8_0"] <= bounds["source"]);
}

#[test]
fn gguf_to_safetensors_loads_back_to_the_same_logits() {
    let Some(path) = smollm2_path() else { return };
    let mut m = LlamaModel::from_gguf(&path, Device::Cpu).unwrap();
    edit(&mut m, &[3], 0.02);
    let want = last_logprobs(&m);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hf");
    let files =
        save_safetensors_dir(&m, &out, Some(StDtype::F32), &OutputOptions::default()).unwrap();
    assert_eq!(files.len(), 5, "{files:?}");
    let back = LlamaModel::from_hf_dir(&out, Device::Cpu).unwrap();
    assert_eq!(back.config(), m.config());
    let dev = max_diff(&last_logprobs(&back), &want);
    assert!(dev < 1e-5, "{dev}");
    for t in TEXTS {
        assert_eq!(
            back.tokenizer().encode(t).unwrap(),
            m.tokenizer().encode(t).unwrap()
        );
    }
}

#[test]
fn gguf_export_refuses_bad_requests_and_leaves_nothing() {
    let Some(path) = smollm2_path() else { return };
    let src = GgufFile::open(&path).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.gguf");
    let export_kind = |e: &ModelError| match e {
        ModelError::Export(x) => format!("{x:?}"),
        other => format!("not an export error: {other:?}"),
    };
    // Unknown tensor, wrong size, a writer-owned key.
    let r = TensorReplacement {
        name: "blk.99.ffn_down.weight".into(),
        dtype: GgmlType::F32,
        data: vec![],
    };
    let e = write_gguf(&src, &[r], &[], &out, &[], false).unwrap_err();
    assert!(export_kind(&e).starts_with("UnknownTensor"), "{e}");
    let r = TensorReplacement {
        name: "blk.3.ffn_down.weight".into(),
        dtype: GgmlType::F32,
        data: vec![0; 12],
    };
    let e = write_gguf(&src, &[r], &[], &out, &[], false).unwrap_err();
    assert!(export_kind(&e).starts_with("Size"), "{e}");
    let kv = [("general.alignment".to_string(), MetaValue::U32(64))];
    let e = write_gguf(&src, &[], &kv, &out, &[], false).unwrap_err();
    assert!(export_kind(&e).starts_with("Metadata"), "{e}");
    // The input itself, and an existing file.
    let e = write_gguf(&src, &[], &[], &path, std::slice::from_ref(&path), true).unwrap_err();
    assert!(export_kind(&e).starts_with("InputPath"), "{e}");
    std::fs::write(&out, b"keep").unwrap();
    let e = write_gguf(&src, &[], &[], &out, &[], false).unwrap_err();
    assert!(export_kind(&e).starts_with("Exists"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
    std::fs::remove_file(&out).unwrap();
    // An unedited model has nothing to export; an unknown type does not parse.
    let m = LlamaModel::from_gguf(&path, Device::Cpu).unwrap();
    let e = save_gguf(
        &m,
        &out,
        EditedType::F32,
        &EditMetadata::default(),
        &OutputOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("no edits"), "{e}");
    assert!("q3_k".parse::<EditedType>().is_err());
    assert!(!out.exists());
    assert!(leftovers(tmp.path()).is_empty());
    // With no change at all, the copy is the input byte for byte.
    write_gguf(&src, &[], &[], &out, &[], false).unwrap();
    assert_eq!(
        sha(&std::fs::read(&out).unwrap()),
        sha(&std::fs::read(&path).unwrap())
    );
}

/// A minimal GGUF v3 file (no metadata) with `blk.0.ffn_down.weight` stored as Q4_K (one
/// 256-value block of 144 bytes) and `blk.1.ffn_down.weight` as Q4_1 (one 32-value block of
/// 20 bytes), written byte by byte from the format description.
fn k_quant_gguf(path: &Path) {
    tiny_gguf(
        path,
        &[
            ("blk.0.ffn_down.weight", [256, 1], 12, 0), // Q4_K
            ("blk.1.ffn_down.weight", [32, 1], 3, 160), // Q4_1, next 32-byte boundary
        ],
        180,
    );
}

/// A GGUF v3 file without metadata holding `tensors` (name, GGML dims, type id, data offset)
/// and `data_len` zero bytes of tensor data.
fn tiny_gguf(path: &Path, tensors: &[(&str, [u64; 2], u32, u64)], data_len: usize) {
    let mut b: Vec<u8> = Vec::new();
    b.extend(0x4655_4747u32.to_le_bytes()); // "GGUF"
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend(0u64.to_le_bytes()); // metadata pairs
    for &(name, dims, ty, offset) in tensors {
        b.extend((name.len() as u64).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend(2u32.to_le_bytes());
        b.extend(dims[0].to_le_bytes());
        b.extend(dims[1].to_le_bytes());
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(vec![0u8; data_len]);
    std::fs::write(path, b).unwrap();
}

/// GGML readers need every row of a block type to be whole blocks: a `W_out` whose rows hold 48
/// values can be written as f32 or f16, never as Q8_0 (blocks of 32), though its 96 values are
/// three blocks.
#[test]
fn rows_that_are_not_whole_blocks_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.gguf");
    tiny_gguf(&path, &[("blk.0.ffn_down.weight", [48, 2], 0, 0)], 384);
    for t in ["source", "f32", "f16"] {
        check_gguf_edited_types(&path, &[0], t.parse().unwrap()).unwrap();
    }
    let e = check_gguf_edited_types(&path, &[0], "q8_0".parse().unwrap()).unwrap_err();
    assert!(
        matches!(&e, ModelError::Export(x) if matches!(**x,
            ExportError::Encode { dtype: GgmlType::Q8_0, source: QuantError::RowNotWholeBlocks { row: 48, block: 32, .. }, .. })),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("blk.0.ffn_down.weight") && msg.contains("rows of 48 values"),
        "{msg}"
    );
}

/// `--edited-type source` on a K-quant file is refused before any edit is computed, naming the
/// tensor and its type; types eamet writes (Q4_1 as source, f32, f16, q8_0) pass.
#[test]
fn k_quant_sources_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.gguf");
    k_quant_gguf(&path);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(
        f.tensor("blk.0.ffn_down.weight").unwrap().dtype,
        GgmlType::Q4K
    );
    let e = check_gguf_edited_types(&path, &[1, 0], EditedType::Source).unwrap_err();
    assert!(
        matches!(&e, ModelError::Export(x) if matches!(**x,
            ExportError::Encode { ref name, dtype: GgmlType::Q4K, .. } if name == "blk.0.ffn_down.weight")),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("blk.0.ffn_down.weight") && msg.contains("Q4_K"),
        "{msg}"
    );
    assert!(
        msg.contains("Q8_0"),
        "the message lists the writable types: {msg}"
    );
    check_gguf_edited_types(&path, &[1], EditedType::Source).unwrap();
    for t in ["f32", "f16", "q8_0"] {
        check_gguf_edited_types(&path, &[0, 1], t.parse().unwrap()).unwrap();
    }
    let e = check_gguf_edited_types(&path, &[2], EditedType::Source).unwrap_err();
    assert!(
        matches!(&e, ModelError::Export(x) if matches!(**x, ExportError::MissingLayer { layer: 2, .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("layer 2"), "{e}");
}
