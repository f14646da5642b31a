//! The run directory: a manifest plus one small binary file per finished fact, each written
//! atomically (temporary file, fsync, rename), so a killed run resumes where it stopped.
//!
//! Layout under `<run_dir>/residuals/`:
//! - `manifest.json`: format, model sha256, sha256 of the prepared facts, of the keys at `l_R`,
//!   and of the configuration (layer, schedule, hyperparameters, objective terms);
//!   `grown_from` lists the fact counts the run had before it was extended (see below);
//! - `fact-00000012.bin`: magic `EAMETRS1`, `u64` fact index, `u64` d_model, `δ` and `h` as
//!   little-endian `f32`, `u64` length + JSON of the [`FactStats`](crate::FactStats).
//!
//! **Growing a run.** Fact `i`'s residual depends only on facts `0..=i` (and, for blocked
//! schedules, on the facts of its own block): MEMIT's facts are independent, EAMET's are aligned
//! against earlier ones only. So a run directory made for `n` facts serves a call with more facts
//! whose first `n` prepared facts and key rows hash to the recorded values, everything else
//! equal: the manifest is rewritten for the longer list and the `n` saved facts are reused (a
//! trailing partial block is optimized again whole, as on any resume). A shorter or a different
//! list is refused.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{io_err, OptimError, Result};
use crate::optimize::FactStats;

const MAGIC: &[u8; 8] = b"EAMETRS1";
const FORMAT: &str = "eamet-optim residuals v1";

/// Writes `bytes` to `path` atomically (eamet-hooks' one writer for every output).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(eamet_hooks::atomic::write_file(path, bytes)?)
}

/// Hex sha256.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a run directory was made for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub format: String,
    pub model_sha256: String,
    pub facts_sha256: String,
    pub keys_sha256: String,
    pub config_sha256: String,
    pub n_facts: usize,
    pub d_model: usize,
    /// The configuration in clear, for people.
    pub config: serde_json::Value,
    /// The fact counts this run had before it was grown, oldest first (empty: never grown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grown_from: Vec<usize>,
}

impl Manifest {
    pub fn new(
        model_sha256: String,
        facts_sha256: String,
        keys_sha256: String,
        config: serde_json::Value,
        n_facts: usize,
        d_model: usize,
    ) -> Self {
        Manifest {
            format: FORMAT.into(),
            model_sha256,
            facts_sha256,
            keys_sha256,
            config_sha256: sha256_hex(config.to_string().as_bytes()),
            n_facts,
            d_model,
            config,
            grown_from: Vec::new(),
        }
    }
}

/// The hashes of the first `n` prepared facts and of their key rows, as
/// [`Manifest::facts_sha256`] and [`Manifest::keys_sha256`] record them for a run of `n` facts.
pub(crate) type PrefixHashes<'a> = &'a dyn Fn(usize) -> Result<(String, String)>;

fn write_manifest(path: &Path, manifest: &Manifest) -> Result<()> {
    let text = serde_json::to_string_pretty(manifest).map_err(|e| OptimError::Format {
        path: path.into(),
        detail: e.to_string(),
    })?;
    write_atomic(path, text.as_bytes())
}

/// The residual store of one run.
#[derive(Debug)]
pub(crate) struct RunDir {
    dir: PathBuf,
}

/// One finished fact as stored.
#[derive(Debug, Clone)]
pub(crate) struct StoredFact {
    pub delta: Vec<f32>,
    pub h: Vec<f32>,
    pub stats: FactStats,
}

impl RunDir {
    /// Opens (creating) `<run_dir>/residuals`, writes the manifest or checks it. A run recorded
    /// for fewer facts is grown when `prefix(recorded n)` matches what it recorded (module docs).
    pub fn open(run_dir: &Path, manifest: &Manifest, prefix: PrefixHashes<'_>) -> Result<Self> {
        let dir = run_dir.join("residuals");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join("manifest.json");
        if !path.exists() {
            write_manifest(&path, manifest)?;
            return Ok(RunDir { dir });
        }
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let old: Manifest = serde_json::from_str(&text).map_err(|e| OptimError::Format {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let mismatch = |what: &'static str, recorded: &str, now: &str| OptimError::RunMismatch {
            path: dir.clone(),
            what,
            recorded: recorded.into(),
            now: now.into(),
        };
        let checks: [(&'static str, &str, &str); 4] = [
            ("format", &old.format, &manifest.format),
            ("model", &old.model_sha256, &manifest.model_sha256),
            (
                "configuration (layer, schedule, hyperparameters, terms)",
                &old.config_sha256,
                &manifest.config_sha256,
            ),
            (
                "model width",
                &old.d_model.to_string(),
                &manifest.d_model.to_string(),
            ),
        ];
        for (what, recorded, now) in checks {
            if recorded != now {
                return Err(mismatch(what, recorded, now));
            }
        }
        let grows = old.n_facts < manifest.n_facts;
        // What this call's first `old.n_facts` facts hash to (all of them unless it grows).
        let (facts_now, keys_now) = if grows {
            prefix(old.n_facts)?
        } else {
            (manifest.facts_sha256.clone(), manifest.keys_sha256.clone())
        };
        let of_first = |h: &str| {
            if grows {
                format!(
                    "{h} (the first {} of {} facts)",
                    old.n_facts, manifest.n_facts
                )
            } else {
                h.to_string()
            }
        };
        if old.facts_sha256 != facts_now {
            return Err(mismatch(
                "fact list",
                &old.facts_sha256,
                &of_first(&facts_now),
            ));
        }
        if old.keys_sha256 != keys_now {
            return Err(mismatch("key set", &old.keys_sha256, &of_first(&keys_now)));
        }
        if old.n_facts != manifest.n_facts {
            // Equal hashes with another count cannot happen for a shorter call (its list hashes
            // differently); checked anyway so the manifest always tells the truth.
            if !grows {
                return Err(mismatch(
                    "fact count",
                    &old.n_facts.to_string(),
                    &manifest.n_facts.to_string(),
                ));
            }
            let mut grown = manifest.clone();
            grown.grown_from = old.grown_from.clone();
            grown.grown_from.push(old.n_facts);
            write_manifest(&path, &grown)?;
        }
        Ok(RunDir { dir })
    }

    fn fact_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("fact-{i:08}.bin"))
    }

    /// Saves fact `i` atomically.
    pub fn save(&self, i: usize, f: &StoredFact) -> Result<()> {
        let stats = serde_json::to_vec(&f.stats).map_err(|e| OptimError::Format {
            path: self.fact_path(i),
            detail: e.to_string(),
        })?;
        let mut b = Vec::with_capacity(32 + 8 * f.delta.len() + stats.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&(i as u64).to_le_bytes());
        b.extend_from_slice(&(f.delta.len() as u64).to_le_bytes());
        for x in f.delta.iter().chain(&f.h) {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.extend_from_slice(&(stats.len() as u64).to_le_bytes());
        b.extend_from_slice(&stats);
        write_atomic(&self.fact_path(i), &b)
    }

    /// Loads fact `i` if its file exists.
    pub fn load(&self, i: usize, d_model: usize) -> Result<Option<StoredFact>> {
        let path = self.fact_path(i);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let bad = |detail: String| OptimError::Format {
            path: path.clone(),
            detail,
        };
        let u64_at = |o: usize| -> Result<u64> {
            bytes
                .get(o..o + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| bad("truncated file".into()))
        };
        if bytes.get(..8) != Some(MAGIC.as_slice()) {
            return Err(bad("not a residual file (bad magic)".into()));
        }
        if u64_at(8)? != i as u64 {
            return Err(bad(format!("holds fact {}, expected {i}", u64_at(8)?)));
        }
        if u64_at(16)? != d_model as u64 {
            return Err(bad(format!("d_model {}, expected {d_model}", u64_at(16)?)));
        }
        let floats = |o: usize| -> Result<Vec<f32>> {
            let s = bytes
                .get(o..o + 4 * d_model)
                .ok_or_else(|| bad("truncated file".into()))?;
            Ok(s.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let delta = floats(24)?;
        let h = floats(24 + 4 * d_model)?;
        let o = 24 + 8 * d_model;
        let n = u64_at(o)? as usize;
        let json = bytes
            .get(o + 8..)
            .filter(|s| s.len() == n)
            .ok_or_else(|| bad("truncated or oversized stats".into()))?;
        let stats: FactStats =
            serde_json::from_slice(json).map_err(|e| bad(format!("stats: {e}")))?;
        Ok(Some(StoredFact { delta, h, stats }))
    }
}
