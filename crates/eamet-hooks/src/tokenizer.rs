//! Tokenizers: Hugging Face `tokenizer.json` files, or tokenizers rebuilt from GGUF metadata.
//!
//! No released crate builds a `tokenizers` tokenizer from a GGUF header, so [`Tokenizer::from_gguf`]
//! does it, for two kinds of vocabulary:
//! - byte-level BPE (`tokenizer.ggml.model = gpt2`): the vocabulary (`tokenizer.ggml.tokens`),
//!   merges (`tokenizer.ggml.merges`), token types (control tokens become special added tokens)
//!   and the pre-tokenizer that `tokenizer.ggml.pre` names (the split the merges were learned
//!   with);
//! - SentencePiece-style BPE (`tokenizer.ggml.model = llama`) of Gemma 3: `▁` for spaces, byte
//!   fallback, and merges derived from the vocabulary (the file has none), as transformers'
//!   GGUF loader derives them (see [`Tokenizer::from_gguf`]).
//!
//! The result is an ordinary `tokenizers::Tokenizer`, described as `tokenizer.json` so it can
//! be saved and inspected.

use crate::gguf::{GgufFile, MetaValue};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// Why a tokenizer could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required GGUF key is missing or has the wrong type.
    #[error("GGUF tokenizer metadata: {0}")]
    Metadata(String),
    /// The GGUF names a tokenizer family this crate does not build.
    #[error("GGUF tokenizer model {model:?} (pre-tokenizer {pre:?}) is not supported; supported: {supported}")]
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

/// Architectures whose SentencePiece-style vocabulary (`tokenizer.ggml.model = llama`) is
/// rebuilt; a plain Llama 2 vocabulary needs another normalizer (a `▁` prefix) and is refused.
const SENTENCEPIECE_ARCHITECTURES: &[&str] = &["gemma3"];

fn supported_list() -> String {
    format!(
        "byte-level BPE (`gpt2`) with pre-tokenizers {SUPPORTED_PRE}; SentencePiece-style (`llama`) for architectures {}",
        SENTENCEPIECE_ARCHITECTURES.join(", ")
    )
}

/// Python's `str.isspace` (Rust's `char::is_whitespace` plus the four ASCII separators).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Gemma's vocabulary stores runs of spaces as real spaces while everything else spells a space
/// `▁` (and the normalizer turns text spaces into `▁`): such tokens are respelled `▁`×len.
fn respell_spaces(token: &str) -> String {
    if token.contains(' ') && token.chars().all(py_space) {
        "\u{2581}".repeat(token.chars().count())
    } else {
        token.to_string()
    }
}

/// BPE merges implied by a vocabulary with no merge list: for each token in id order (a lower
/// id is a better merge), every split into two vocabulary tokens at a character boundary,
/// longer left part first. This is the order transformers' `generate_merges` gives when each
/// token's score is minus its id (what its GGUF loader does for Gemma, whose stored scores do
/// not follow the merge order).
fn derive_merges(tokens: &[String], vocab: &HashMap<&str, u32>) -> Vec<(usize, usize)> {
    let mut merges = Vec::new();
    for w in tokens {
        let cuts: Vec<usize> = w.char_indices().skip(1).map(|(i, _)| i).collect();
        for &cut in cuts.iter().rev() {
            let (l, r) = w.split_at(cut);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                merges.push((vocab[l] as usize, vocab[r] as usize));
            }
        }
    }
    merges
}

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
    /// Build from GGUF metadata: byte-level BPE (`tokenizer.ggml.model = gpt2`), or Gemma 3's
    /// SentencePiece-style vocabulary (`llama`, with `general.architecture = gemma3`).
    ///
    /// Gemma's tokenizer is rebuilt as transformers' GGUF loader builds it: tokens made of
    /// spaces only are respelled with `▁`; merges are derived from the vocabulary (see
    /// `derive_merges`); BPE with byte fallback and `<unk>`; the normalizer turns spaces into
    /// `▁` (no prefix space); control tokens are special added tokens and user-defined ones
    /// (`\n`, `<table>`, …) plain added tokens, both matched whole; [`Tokenizer::encode`]
    /// prepends BOS when `tokenizer.ggml.add_bos_token` says so (the default for this kind).
    ///
    /// # Errors
    /// [`TokenizerError::Unsupported`] for another tokenizer kind;
    /// [`TokenizerError::Metadata`] for missing or inconsistent metadata (a token spelled twice,
    /// BOS wanted but absent, …).
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
        let arch = f.architecture().unwrap_or("");
        if model == "llama" && SENTENCEPIECE_ARCHITECTURES.contains(&arch) {
            return Self::sentencepiece_from_gguf(f);
        }
        let pre_tok = match (model.as_str(), pre_tokenizer_for(&pre)) {
            ("gpt2", Some(p)) => p,
            _ => {
                return Err(TokenizerError::Unsupported {
                    model,
                    pre,
                    supported: supported_list(),
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

    /// Gemma's SentencePiece-style vocabulary (see [`Tokenizer::from_gguf`]).
    fn sentencepiece_from_gguf(f: &GgufFile) -> Result<Self> {
        let original = string_array(f, "tokenizer.ggml.tokens")?;
        let types: Vec<u64> = match f.get("tokenizer.ggml.token_type") {
            Some(MetaValue::Array(v)) => v.iter().map(|t| t.as_u64().unwrap_or(1)).collect(),
            _ => vec![1; original.len()],
        };
        if types.len() != original.len() {
            return Err(TokenizerError::Metadata(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                original.len()
            )));
        }
        let tokens: Vec<String> = original.iter().map(|t| respell_spaces(t)).collect();
        let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            if vocab.insert(t.as_str(), id as u32).is_some() {
                return Err(TokenizerError::Metadata(format!(
                    "tokenizer.ggml.tokens[{id}] {:?} (spelled {t:?}) duplicates an earlier token",
                    original[id]
                )));
            }
        }
        let merges: Vec<Value> = derive_merges(&tokens, &vocab)
            .into_iter()
            .map(|(l, r)| json!([tokens[l], tokens[r]]))
            .collect();
        let mut added = Vec::new();
        for (id, (orig, &ty)) in original.iter().zip(&types).enumerate() {
            // 3 = control: special; 4 = user-defined: plain added token, when its spelling is
            // a vocabulary entry (the space runs are not: they were respelled).
            let special = ty == 3;
            let known = ty == 4 && vocab.contains_key(orig.as_str());
            if special || known {
                let id = if special {
                    id as u32
                } else {
                    vocab[orig.as_str()]
                };
                added.push(json!({"id": id, "content": orig, "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false, "special": special}));
            }
        }
        let id = |k: &str| {
            f.get(k)
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < tokens.len())
        };
        let unk = id("tokenizer.ggml.unknown_token_id").map(|u| tokens[u as usize].clone());
        let description = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
            "pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
                "behavior": "MergedWithPrevious", "invert": false},
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ]},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab.iter().map(|(t, i)| (t.to_string(), json!(i))).collect::<serde_json::Map<_, _>>(),
                "merges": merges},
        });
        // SentencePiece vocabularies want BOS unless the file says otherwise (llama.cpp and
        // transformers agree).
        let add_bos = match f.get("tokenizer.ggml.add_bos_token") {
            Some(MetaValue::Bool(b)) => *b,
            _ => true,
        };
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
    fn space_runs_are_respelled() {
        assert_eq!(respell_spaces("  "), "\u{2581}\u{2581}");
        assert_eq!(respell_spaces("\t "), "\u{2581}\u{2581}");
        assert_eq!(respell_spaces("\n"), "\n");
        assert_eq!(respell_spaces(" a"), " a");
        assert_eq!(respell_spaces("\u{2581}"), "\u{2581}");
    }

    #[test]
    fn merges_follow_ids_then_longer_left_parts() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "bc", "\u{e9}\u{e9}", "\u{e9}"]
            .iter()
            .map(|t| t.to_string())
            .collect();
        let vocab: HashMap<&str, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();
        // Splits at character (not byte) boundaries.
        assert_eq!(
            derive_merges(&tokens, &vocab),
            [(0, 1), (3, 2), (0, 5), (1, 2), (7, 7)]
        );
    }

    /// A Gemma-style vocabulary in a GGUF header: control tokens, a user-defined newline and a
    /// run of two spaces stored as real spaces, no merges.
    #[test]
    fn gemma_style_vocabulary_round_trips() {
        let s = |v: &str| MetaValue::String(v.into());
        let tokens = [
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "\n",
            "  ",
            "\u{2581}",
            "h",
            "i",
            "hi",
            "\u{2581}hi",
        ];
        let types = [3, 3, 3, 3, 4, 4, 1, 1, 1, 1, 1];
        let kv = [
            ("general.architecture", s("gemma3")),
            ("tokenizer.ggml.model", s("llama")),
            ("tokenizer.ggml.pre", s("default")),
            (
                "tokenizer.ggml.tokens",
                MetaValue::Array(tokens.iter().map(|t| s(t)).collect()),
            ),
            (
                "tokenizer.ggml.token_type",
                MetaValue::Array(types.iter().map(|&t| MetaValue::I32(t)).collect()),
            ),
            ("tokenizer.ggml.bos_token_id", MetaValue::U32(2)),
            ("tokenizer.ggml.eos_token_id", MetaValue::U32(1)),
            ("tokenizer.ggml.unknown_token_id", MetaValue::U32(3)),
            ("tokenizer.ggml.padding_token_id", MetaValue::U32(0)),
        ];
        let tok = Tokenizer::from_gguf(&crate::gguf::header_only(&kv)).unwrap();
        assert!(tok.add_bos, "BOS by default for a SentencePiece vocabulary");
        assert_eq!((tok.bos_id, tok.eos_id, tok.pad_id), (Some(2), Some(1), 0));
        let ids = tok.encode(" hi  hi\n").unwrap();
        assert_eq!(ids, [2, 10, 5, 9, 4]);
        assert_eq!(tok.decode(&ids[1..]).unwrap(), " hi  hi\n");
        assert_eq!(tok.encode("<eos>hi").unwrap(), [2, 1, 9]);
        // A plain Llama 2 vocabulary (another normalizer) is refused, naming what works.
        let mut llama = kv.to_vec();
        llama[0] = ("general.architecture", s("llama"));
        let e = Tokenizer::from_gguf(&crate::gguf::header_only(&llama)).unwrap_err();
        assert!(
            matches!(&e, TokenizerError::Unsupported { model, .. } if model == "llama"),
            "{e:?}"
        );
        assert!(e.to_string().contains("gemma3"), "{e}");
        // Two tokens that respell the same way are an error, not a silent choice.
        let mut dup = kv.to_vec();
        let mut t2 = tokens.to_vec();
        t2[6] = " ";
        dup[3] = (
            "tokenizer.ggml.tokens",
            MetaValue::Array(t2.iter().map(|t| s(t)).collect()),
        );
        assert!(Tokenizer::from_gguf(&crate::gguf::header_only(&dup)).is_ok());
        t2[6] = "  ";
        dup[3] = (
            "tokenizer.ggml.tokens",
            MetaValue::Array(t2.iter().map(|t| s(t)).collect()),
        );
        let e = Tokenizer::from_gguf(&crate::gguf::header_only(&dup)).unwrap_err();
        assert!(matches!(e, TokenizerError::Metadata(_)), "{e:?}");
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
