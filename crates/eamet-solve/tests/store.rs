//! On-disk format of KeyStats: round trip, identity checks, atomicity, corruption.

mod common;

use std::path::Path;

use common::{bits, Rng};
use eamet_solve::{
    AlphaEditState, KeyStats, SolveError, StatsMeta, StatsProvenance, StatsRequest, WriteMode,
};

fn prov() -> StatsProvenance {
    StatsProvenance {
        model_id: "HuggingFaceTB/SmolLM2-135M".into(),
        model_hash: "sha256:abc".into(),
        layer: 3,
        corpus_id: "wikitext-2-raw-v1/train".into(),
        corpus_hash: "sha256:def".into(),
        dtype: "float32".into(),
    }
}

fn stats(seed: u64, rows: usize, d: usize) -> KeyStats {
    let mut st = KeyStats::new(d);
    st.update(Rng::new(seed).matrix(rows, d).view()).unwrap();
    st.add_samples(7);
    st
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn save_load_round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    let st = stats(1, 50, 70); // d > 64: several row blocks of the symmetric writer
    let meta = st.save(&path, &prov(), WriteMode::CreateNew).unwrap();
    assert_eq!((meta.tokens, meta.samples, meta.d), (50, 7, 70));

    let back = KeyStats::load(
        &path,
        &StatsRequest::new(prov()).with_samples(7).with_dim(70),
    )
    .unwrap();
    assert_eq!(bits(&back.sum_outer()), bits(&st.sum_outer()));
    assert_eq!(
        back.sum().iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        st.sum().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!((back.tokens(), back.samples()), (50, 7));
    // The file holds the full symmetric matrix, row-major, little-endian.
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let stored: Vec<u64> = file
        .tensor("sum_outer")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()).to_bits())
        .collect();
    assert_eq!(stored, bits(&st.sum_outer()));
    let (again, meta2) = KeyStats::read_file(&path).unwrap();
    assert_eq!(meta2, meta);
    assert_eq!(
        bits(&again.second_moment().unwrap()),
        bits(&st.second_moment().unwrap())
    );
    // Only the file itself is left in the directory (no temporary files).
    assert_eq!(dir_entries(dir.path()), vec!["s.safetensors".to_string()]);
}

#[test]
fn file_is_plain_safetensors_with_json_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    let st = stats(2, 9, 4);
    st.save(&path, &prov(), WriteMode::CreateNew).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let so = tensors.tensor("sum_outer").unwrap();
    assert_eq!(so.dtype(), safetensors::Dtype::F64);
    assert_eq!(so.shape(), &[4, 4]);
    let first = f64::from_le_bytes(so.data()[..8].try_into().unwrap());
    assert_eq!(first.to_bits(), st.sum_outer()[[0, 0]].to_bits());
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let map = md.metadata().clone().unwrap();
    let meta: StatsMeta = serde_json::from_str(&map["eamet"]).unwrap();
    assert_eq!(meta.provenance, prov());
    assert_eq!(meta.format, "eamet.keystats");
    assert_eq!(map["eamet.crc32"].len(), 8);
}

#[test]
fn metadata_mismatch_is_rejected_naming_each_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    stats(3, 10, 5)
        .save(&path, &prov(), WriteMode::CreateNew)
        .unwrap();

    let mut other = prov();
    other.layer = 4;
    other.model_hash = "sha256:zzz".into();
    let err = KeyStats::load(&path, &StatsRequest::new(other)).unwrap_err();
    let SolveError::CacheMismatch { mismatches, .. } = &err else {
        panic!("{err}")
    };
    let fields: Vec<_> = mismatches.iter().map(|m| m.field).collect();
    assert_eq!(fields, vec!["model_hash", "layer"]);
    assert!(
        err.to_string().contains("layer: expected 4, found 3"),
        "{err}"
    );

    let err = KeyStats::load(&path, &StatsRequest::new(prov()).with_samples(100_000)).unwrap_err();
    assert!(
        matches!(&err, SolveError::CacheMismatch { mismatches, .. } if mismatches[0].field == "samples")
    );
    let err = KeyStats::load(&path, &StatsRequest::new(prov()).with_dim(6)).unwrap_err();
    assert!(
        matches!(&err, SolveError::CacheMismatch { mismatches, .. } if mismatches[0].field == "d")
    );
    let mut dtype = prov();
    dtype.dtype = "bfloat16".into();
    assert!(matches!(
        KeyStats::load(&path, &StatsRequest::new(dtype)),
        Err(SolveError::CacheMismatch { .. })
    ));
}

#[test]
fn never_overwrites_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    let first = stats(4, 10, 5);
    first.save(&path, &prov(), WriteMode::CreateNew).unwrap();
    let before = std::fs::read(&path).unwrap();

    let second = stats(5, 12, 5);
    let err = second
        .save(&path, &prov(), WriteMode::CreateNew)
        .unwrap_err();
    assert!(matches!(err, SolveError::AlreadyExists { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(dir_entries(dir.path()).len(), 1);

    second.save(&path, &prov(), WriteMode::Overwrite).unwrap();
    let back = KeyStats::load(&path, &StatsRequest::new(prov())).unwrap();
    assert_eq!(back.tokens(), 12);
    assert_eq!(dir_entries(dir.path()).len(), 1);
}

#[test]
fn missing_directory_and_missing_file_are_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/s.safetensors");
    let err = stats(6, 3, 2)
        .save(&missing, &prov(), WriteMode::CreateNew)
        .unwrap_err();
    assert!(matches!(err, SolveError::Io { .. }), "{err}");
    let err = KeyStats::load(
        dir.path().join("absent.safetensors"),
        &StatsRequest::new(prov()),
    )
    .unwrap_err();
    assert!(matches!(err, SolveError::Io { .. }), "{err}");
}

fn assert_corrupt(path: &Path) {
    match KeyStats::load(path, &StatsRequest::new(prov())) {
        Err(SolveError::CorruptFile { .. }) => {}
        other => panic!("expected CorruptFile, got {other:?}"),
    }
    assert!(matches!(
        KeyStats::read_file(path),
        Err(SolveError::CorruptFile { .. })
    ));
}

#[test]
fn truncated_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    stats(7, 20, 6)
        .save(&good, &prov(), WriteMode::CreateNew)
        .unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.path().join("bad.safetensors");
    for cut in [
        0,
        4,
        8,
        20,
        bytes.len() / 2,
        bytes.len() - 8,
        bytes.len() - 1,
    ] {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        assert_corrupt(&bad);
    }
    // trailing garbage
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0u8; 8]);
    std::fs::write(&bad, &longer).unwrap();
    assert_corrupt(&bad);
    std::fs::write(&bad, b"not a safetensors file at all").unwrap();
    assert_corrupt(&bad);
}

#[test]
fn flipped_bits_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    stats(8, 20, 6)
        .save(&good, &prov(), WriteMode::CreateNew)
        .unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let bad = dir.path().join("bad.safetensors");
    // every byte of the data section, in turn (a few hundred)
    for pos in (8 + n..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[pos] ^= 0x10;
        std::fs::write(&bad, &b).unwrap();
        assert_corrupt(&bad);
    }
    // a digit of the metadata (tokens 20 → 21): caught by the checksum, not a silent reuse
    let text = String::from_utf8_lossy(&bytes[8..8 + n]).into_owned();
    let at = text.find("tokens\\\":20").expect("tokens in header") + "tokens\\\":2".len();
    let mut b = bytes.clone();
    b[8 + at] = b'1';
    std::fs::write(&bad, &b).unwrap();
    assert_corrupt(&bad);
}

#[test]
fn another_file_kind_is_unsupported_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    AlphaEditState::new()
        .save(&path, WriteMode::CreateNew)
        .unwrap();
    let err = KeyStats::load(&path, &StatsRequest::new(prov())).unwrap_err();
    assert!(matches!(err, SolveError::UnsupportedFormat { .. }), "{err}");
}

#[test]
fn shard_files_merge_to_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let k = Rng::new(9).int_matrix(30, 5);
    let mut paths = Vec::new();
    for (i, rows) in [(0..10), (10..11), (11..30)].into_iter().enumerate() {
        let mut st = KeyStats::new(5);
        st.update(k.slice(ndarray::s![rows, ..])).unwrap();
        st.add_samples(1);
        let p = dir.path().join(format!("shard{i}.safetensors"));
        st.save(&p, &prov(), WriteMode::CreateNew).unwrap();
        paths.push(p);
    }
    let (merged, meta) = KeyStats::merge_files(&paths).unwrap();
    let mut one = KeyStats::new(5);
    one.update(k.view()).unwrap();
    assert_eq!(bits(&merged.sum_outer()), bits(&one.sum_outer()));
    assert_eq!((meta.tokens, meta.samples), (30, 3));

    let mut other = prov();
    other.corpus_hash = "different".into();
    let odd = dir.path().join("odd.safetensors");
    stats(10, 4, 5)
        .save(&odd, &other, WriteMode::CreateNew)
        .unwrap();
    paths.push(odd);
    let err = KeyStats::merge_files(&paths).unwrap_err();
    assert!(
        matches!(&err, SolveError::CacheMismatch { mismatches, .. } if mismatches[0].field == "corpus_hash"),
        "{err}"
    );
    let none: [&Path; 0] = [];
    assert!(matches!(
        KeyStats::merge_files(&none),
        Err(SolveError::EmptyBatch { .. })
    ));
}
