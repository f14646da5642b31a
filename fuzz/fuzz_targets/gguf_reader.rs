//! Any bytes through the GGUF reader: parsing, metadata lookups, the model hyperparameters and
//! dequantization of every (small enough) tensor must give a value or a typed error, never a
//! panic, an out-of-bounds read or a giant allocation.
#![no_main]

use eamet_hooks::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    for i in 0..file.metadata.len() {
        let _ = file.metadata_raw(i);
    }
    let _ = file.architecture();
    let _ = eamet_hooks::info::ModelInfo::from_gguf(&file);
    for info in &file.tensors {
        let bytes = file.tensor_bytes(info);
        assert!(bytes.len() as u64 == info.size, "{}: slice of the wrong size", info.name);
        if info.elements() <= 1 << 16 {
            let _ = eamet_hooks::quant::dequantize_tensor(&file, info);
        }
    }
});
