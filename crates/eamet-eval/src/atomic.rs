//! Atomic outputs of this crate (reports, summaries, plots): each file is written to a
//! temporary name beside it, flushed to disk, and renamed into place only once every file of
//! the group is complete, so a reader never sees half a report or a plot without its twin.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes every `(path, bytes)` atomically: all temporaries first (created new, synced), then
/// the renames. On failure the temporaries not yet renamed are removed.
///
/// # Errors
/// The path that could not be written or renamed, with the I/O error.
pub fn write_files(outputs: &[(&Path, &[u8])]) -> Result<(), (PathBuf, io::Error)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut temps: Vec<PathBuf> = Vec::with_capacity(outputs.len());
    let result = (|| {
        for (path, bytes) in outputs {
            let name = path
                .file_name()
                .map_or_else(Default::default, |n| n.to_string_lossy());
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let temp = dir.join(format!(
                ".{name}.{}.{}.tmp",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let fail = |e| (temp.clone(), e);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(fail)?;
            temps.push(temp.clone());
            file.write_all(bytes).map_err(fail)?;
            file.sync_all().map_err(fail)?;
        }
        for ((path, _), temp) in outputs.iter().zip(&temps) {
            fs::rename(temp, path).map_err(|e| (path.to_path_buf(), e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for temp in &temps {
            // Already renamed ones are gone; the others are ours to clean up.
            let _ = fs::remove_file(temp);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_group_and_leaves_no_temporaries() {
        let dir = std::env::temp_dir().join(format!("eamet-eval-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.svg"), dir.join("a.png"));
        write_files(&[(&a, b"one"), (&b, b"two")]).unwrap();
        write_files(&[(&a, b"three")]).unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"three");
        assert_eq!(fs::read(&b).unwrap(), b"two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
        // A file in a missing directory fails, naming it; nothing of the group is left.
        let bad = dir.join("missing/c.txt");
        let (path, _) = write_files(&[(&dir.join("d.txt"), b"x"), (&bad, b"y")]).unwrap_err();
        assert!(path.starts_with(dir.join("missing")), "{}", path.display());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}
