//! Tokenizers: Hugging Face `tokenizer.json` files, or byte-level BPE built from GGUF metadata.
//!
//! No released crate builds a `tokenizers` tokenizer from a GGUF header, so [`Tokenizer::from_gguf`]
//! does it: the vocabulary (`tokenizer.ggml.tokens`), merges (`tokenizer.ggml.merges`), token
//! types (control tokens become special added tokens) and the pre-tokenizer that
//! `tokenizer.ggml.pre` names (the split the merges were learned with). The result is an
//! ordinary `tokenizers::Tokenizer`, described as `tokenizer.json` so it can be saved and
//! inspected.

use crate::gguf::{GgufFile, MetaValue};
use serde_json::{json, Value};
use std::path::Path;

/// Why a tokenizer could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required GGUF key is missing or has the wrong type.
    #[error("GGUF tokenizer metadata: {0}")]
    Metadata(String),
    /// The GGUF names a tokenizer family this crate does not build.
    #[error("GGUF tokenizer model {model:?} (pre-tokenizer {pre:?}) is not supported; supported: byte-level BPE (`gpt2`) with pre-tokenizers {supported}")]
    Unsupported {
        /// `tokenizer.ggml.model`.
        model: String,
        /// `tokenizer.ggml.pre`.
        pre: String,
        /// What is supported.
        supported: String,
    },
    /// The `tokenizers` library rejected the description or the input.
    #[error("tokenizer: {0}")]
    Library(String),
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    BadId {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
}

/// Result alias.
pub type Result<T> = std::result::Result<T, TokenizerError>;

/// Text pieces split before BPE, per `tokenizer.ggml.pre` (the splits llama.cpp documents for
/// each vocabulary family; `ByteLevel` with `use_regex` applies GPT-2's own split).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split_then_bytes(pattern: &str) -> Value {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
        byte_level(false),
    ]})
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value, or `None` if unknown.
fn pre_tokenizer_for(pre: &str) -> Option<Value> {
    Some(match pre {
        "default" | "gpt2" | "gpt-2" | "" => byte_level(true),
        // Digits one by one, then the GPT-2 split (SmolLM, StarCoder and relatives).
        "smollm" | "starcoder" | "refact" | "codeshell" | "exaone" | "minerva" | "command-r" => {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]})
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" | "pixtral" => {
            split_then_bytes(LLAMA3_SPLIT)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => split_then_bytes(QWEN2_SPLIT),
        _ => return None,
    })
}

const SUPPORTED_PRE: &str = "default, gpt2, smollm, starcoder, refact, codeshell, exaone, minerva, command-r, llama3, llama-v3, llama-bpe, falcon3, smaug-bpe, dbrx, pixtral, qwen2, deepseek-r1-qwen, megrez";

/// GPT-2's reversible byte → printable-character map (the "byte-level alphabet").
fn byte_alphabet() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).expect("valid char")
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("valid char")
        };
    }
    map
}

fn string_array(f: &GgufFile, key: &str) -> Result<Vec<String>> {
    match f.get(key) {
        Some(MetaValue::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    TokenizerError::Metadata(format!(
                        "{key}[{i}] is {}, expected string",
                        v.type_name()
                    ))
                })
            })
            .collect(),
        Some(v) => Err(TokenizerError::Metadata(format!(
            "{key} is {}, expected an array of strings",
            v.type_name()
        ))),
        None => Err(TokenizerError::Metadata(format!("{key} is missing"))),
    }
}

/// Token ids and, for each, the byte range of the text it covers.
pub type Encoded = (Vec<u32>, Vec<(usize, usize)>);

/// A tokenizer plus the special-token facts a causal LM needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    description: Value,
    vocab_size: usize,
    /// Beginning-of-sequence id, if the vocabulary has one.
    pub bos_id: Option<u32>,
    /// End-of-sequence id (the default stop token for generation).
    pub eos_id: Option<u32>,
    /// Padding id used for batches (falls back to EOS, then 0).
    pub pad_id: u32,
    /// Whether [`Tokenizer::encode`] prepends BOS (from the model's own settings).
    pub add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl Tokenizer {
    /// Build from GGUF metadata (byte-level BPE, `tokenizer.ggml.model = gpt2`).
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let model = f
            .metadata_str("tokenizer.ggml.model")
            .map_err(|e| TokenizerError::Metadata(e.to_string()))?
            .to_string();
        let pre = f
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .unwrap_or("default")
            .to_string();
        let pre_tok = match (model.as_str(), pre_tokenizer_for(&pre)) {
            ("gpt2", Some(p)) => p,
            _ => {
                return Err(TokenizerError::Unsupported {
                    model,
                    pre,
                    supported: SUPPORTED_PRE.into(),
                })
            }
        };
        let tokens = string_array(f, "tokenizer.ggml.tokens")?;
        let merges = string_array(f, "tokenizer.ggml.merges")?;
        let types: Vec<u64> = match f.get("tokenizer.ggml.token_type") {
            Some(MetaValue::Array(v)) => v.iter().map(|t| t.as_u64().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let alphabet = byte_alphabet();
        let in_alphabet = |s: &str| s.chars().all(|c| alphabet.contains(&c));
        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        let mut added = Vec::new();
        for (id, tok) in tokens.iter().enumerate() {
            // Tokens are spelled in the byte alphabet; one that is not gets respelled from its
            // UTF-8 bytes (some converters store raw text).
            let spelled = if in_alphabet(tok) {
                tok.clone()
            } else {
                tok.bytes().map(|b| alphabet[b as usize]).collect()
            };
            let ty = types.get(id).copied().unwrap_or(1);
            // 3 = control (special), 4 = user-defined: matched whole in the text.
            if (ty == 3 && in_alphabet(tok)) || ty == 4 {
                added.push(
                    json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == 3}),
                );
            }
            if vocab.insert(spelled.clone(), json!(id)).is_some() {
                return Err(TokenizerError::Metadata(format!(
                    "tokenizer.ggml.tokens[{id}] {tok:?} duplicates an earlier token"
                )));
            }
        }
        let mut merge_pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                TokenizerError::Metadata(format!(
                    "tokenizer.ggml.merges[{i}] {m:?} is not two tokens separated by a space"
                ))
            })?;
            merge_pairs.push(json!([a, b]));
        }
        let description = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tok,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false,
                "vocab": Value::Object(vocab), "merges": merge_pairs},
        });
        let id = |k: &str| {
            f.get(k)
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < tokens.len())
        };
        let add_bos = f
            .get("tokenizer.ggml.add_bos_token")
            .map(|v| matches!(v, MetaValue::Bool(true)))
            .unwrap_or(false);
        let eos = id("tokenizer.ggml.eos_token_id");
        let pad = id("tokenizer.ggml.padding_token_id").or(eos).unwrap_or(0);
        Self::from_description(
            description,
            id("tokenizer.ggml.bos_token_id"),
            eos,
            pad,
            add_bos,
        )
    }

    /// Load a Hugging Face `tokenizer.json`. Special ids come from the caller (they live in
    /// `config.json` / `tokenizer_config.json`).
    pub fn from_file(
        path: &Path,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
        add_bos: bool,
    ) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TokenizerError::Library(format!("cannot read {}: {e}", path.display())))?;
        let description: Value = serde_json::from_str(&text)
            .map_err(|e| TokenizerError::Library(format!("{}: {e}", path.display())))?;
        Self::from_description(description, bos_id, eos_id, eos_id.unwrap_or(0), add_bos)
    }

    fn from_description(
        description: Value,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
        pad_id: u32,
        add_bos: bool,
    ) -> Result<Self> {
        let inner: tokenizers::Tokenizer = description
            .to_string()
            .parse()
            .map_err(|e: tokenizers::Error| TokenizerError::Library(e.to_string()))?;
        let vocab_size = inner.get_vocab_size(true);
        if add_bos && bos_id.is_none() {
            return Err(TokenizerError::Metadata(
                "add_bos is set but there is no BOS token".into(),
            ));
        }
        Ok(Tokenizer {
            inner,
            description,
            vocab_size,
            bos_id,
            eos_id,
            pad_id,
            add_bos,
        })
    }

    /// Number of token ids (including added tokens).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The `tokenizer.json` text describing this tokenizer.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.description).unwrap_or_default()
    }

    /// Token ids of `text`, with BOS first when the model wants it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_with_offsets(text)?.0)
    }

    /// Token ids and the byte range of `text` each token covers (BOS, if added, gets `(0, 0)`).
    pub fn encode_with_offsets(&self, text: &str) -> Result<Encoded> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Library(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        let mut offsets = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            if let Some(b) = self.bos_id {
                ids.push(b);
                offsets.push((0, 0));
            }
        }
        ids.extend_from_slice(enc.get_ids());
        offsets.extend_from_slice(enc.get_offsets());
        Ok((ids, offsets))
    }

    /// Text of a sequence of ids (special tokens included verbatim).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizerError::BadId {
                id,
                vocab: self.vocab_size,
            });
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError::Library(e.to_string()))
    }

    /// The underlying `tokenizers` value.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_a_bijection_onto_printables() {
        let a = byte_alphabet();
        let mut seen = std::collections::HashSet::new();
        for c in a {
            assert!(!c.is_whitespace() && !c.is_control(), "{c:?}");
            assert!(seen.insert(c));
        }
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
        assert_eq!(a[b'A' as usize], 'A');
    }

    #[test]
    fn every_pre_tokenizer_parses() {
        for pre in SUPPORTED_PRE.split(", ") {
            let p = pre_tokenizer_for(pre).unwrap();
            let desc = json!({"version": "1.0", "added_tokens": [], "normalizer": null,
                "pre_tokenizer": p, "post_processor": null, "decoder": null, "truncation": null, "padding": null,
                "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}});
            let t: std::result::Result<tokenizers::Tokenizer, _> = desc.to_string().parse();
            assert!(t.is_ok(), "{pre}: {:?}", t.err());
        }
        assert!(pre_tokenizer_for("klingon").is_none());
    }
}
