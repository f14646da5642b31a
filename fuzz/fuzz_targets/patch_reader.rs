//! Any bytes through the patch reader (safetensors container + eamet metadata): a patch or a
//! typed error naming the problem, never a panic.
#![no_main]

use eamet_hooks::patch::Patch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Patch::from_bytes(data, std::path::Path::new("fuzz.safetensors")) {
        assert!(!p.deltas.is_empty());
    }
});
