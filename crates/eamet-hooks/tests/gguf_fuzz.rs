//! GGUF files are untrusted: truncated and mutated real headers must give errors, never panics,
//! out-of-bounds reads or giant allocations. (Property tests; bounded so CI stays quick.)

use eamet_hooks::gguf::{GgufError, GgufFile};
use proptest::prelude::*;
use std::sync::OnceLock;

/// The real SmolLM2 header (magic, metadata with the 49k-token vocabulary and merges, 272 tensor
/// descriptors) plus the first bytes of tensor data.
fn real_header() -> &'static [u8] {
    static H: OnceLock<Vec<u8>> = OnceLock::new();
    H.get_or_init(|| {
        let path = eamet_hooks::paths::default_model().unwrap();
        assert!(
            path.exists(),
            "run `cargo xtask setup`: {} missing",
            path.display()
        );
        let f = GgufFile::open(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        bytes[..(f.data_offset as usize + 4096)].to_vec()
    })
}

/// Parsing must return (not panic); a parse that succeeds must describe only in-file tensors.
fn parse_is_safe(bytes: Vec<u8>) {
    let len = bytes.len() as u64;
    if let Ok(f) = GgufFile::from_bytes(bytes) {
        for t in &f.tensors {
            assert!(t.offset + t.size <= len, "{} escapes the file", t.name);
            let _ = f.tensor_bytes(t);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn truncated_real_header_is_an_error(cut in 0usize..1_000_000) {
        let h = real_header();
        let n = cut % h.len();
        let r = GgufFile::from_bytes(h[..n].to_vec());
        // Every tensor's data lies past the header, so any cut inside it must fail.
        prop_assert!(r.is_err());
    }

    #[test]
    fn mutated_real_header_never_panics(edits in prop::collection::vec((0usize..2_000_000, any::<u8>()), 1..8)) {
        let mut h = real_header().to_vec();
        let n = h.len();
        for (pos, byte) in edits {
            h[pos % n] = byte;
        }
        parse_is_safe(h);
    }

    #[test]
    fn mutated_counts_and_lengths_never_panic(which in 0usize..4, value in any::<u64>()) {
        // The four 8-byte fields an attacker would aim at: tensor count, kv count, the first
        // key's length and the first value's length.
        let mut h = real_header().to_vec();
        let first_key_len = 24usize;
        let key_len = u64::from_le_bytes(h[24..32].try_into().unwrap()) as usize;
        let first_value = 32 + key_len + 4;
        let at = [8usize, 16, first_key_len, first_value][which];
        h[at..at + 8].copy_from_slice(&value.to_le_bytes());
        parse_is_safe(h);
    }
}

#[test]
fn alignment_zero_or_not_a_power_of_two_is_rejected() {
    // Hand-built image with general.alignment set to 0, then 24.
    for bad in [0u32, 24] {
        let mut b = Vec::new();
        b.extend(0x4655_4747u32.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        let key = "general.alignment";
        b.extend((key.len() as u64).to_le_bytes());
        b.extend(key.as_bytes());
        b.extend(4u32.to_le_bytes());
        b.extend(bad.to_le_bytes());
        let e = GgufFile::from_bytes(b).unwrap_err();
        assert!(
            matches!(e, GgufError::Invalid { ref field, .. } if field == "general.alignment"),
            "{e}"
        );
    }
}
