//! Atomic outputs: everything eamet-rs writes (patches, exported models, run-directory files)
//! goes to a temporary path beside its destination and is renamed into place only when
//! complete, so a reader — or a run resumed after a kill — never sees half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{io_err, ModelError, Result};

/// A temporary file or directory beside an output (`.<name>.tmp-<pid>`), removed on drop
/// unless [`commit`](Self::commit)ted.
#[derive(Debug)]
pub struct TempOutput {
    path: PathBuf,
    committed: bool,
}

impl TempOutput {
    /// The temporary path for `out`, in the same directory (so the final rename stays on one
    /// file system). Nothing is created yet.
    ///
    /// # Errors
    /// [`ModelError::Request`] if `out` has no file name.
    pub fn beside(out: &Path) -> Result<Self> {
        let name = out.file_name().ok_or_else(|| {
            ModelError::Request(format!("{}: not a file or directory path", out.display()))
        })?;
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Ok(TempOutput {
            path: dir.join(format!(
                ".{}.tmp-{}",
                name.to_string_lossy(),
                std::process::id()
            )),
            committed: false,
        })
    }

    /// The temporary path to write.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the temporary output to `out`; an existing directory at `out` is replaced by a
    /// directory output (moved aside first, removed after).
    ///
    /// # Errors
    /// [`ModelError::Io`] naming the path that could not be renamed.
    pub fn commit(mut self, out: &Path) -> Result<()> {
        if out.is_dir() && self.path.is_dir() {
            let old = self.path.with_extension("old");
            std::fs::rename(out, &old).map_err(io_err(out))?;
            std::fs::rename(&self.path, out).map_err(io_err(out))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.path, out).map_err(io_err(out))?;
        }
        if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.committed {
            if self.path.is_dir() {
                let _ = std::fs::remove_dir_all(&self.path);
            } else {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, flushed to disk, then
/// renamed over `path`.
///
/// # Errors
/// [`ModelError::Io`] naming the file that could not be written or renamed.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let temp = TempOutput::beside(path)?;
    {
        let mut f = std::fs::File::create(temp.path()).map_err(io_err(temp.path()))?;
        f.write_all(bytes).map_err(io_err(temp.path()))?;
        f.sync_all().map_err(io_err(temp.path()))?;
    }
    temp.commit(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_file(&p, b"first").unwrap();
        write_file(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the output remains");
        // An uncommitted temporary is removed on drop.
        let t = TempOutput::beside(&dir.path().join("b.bin")).unwrap();
        std::fs::write(t.path(), b"x").unwrap();
        let tmp = t.path().to_path_buf();
        drop(t);
        assert!(!tmp.exists());
        // A missing directory is an error naming the path.
        let e = write_file(&dir.path().join("no/such/c.bin"), b"x").unwrap_err();
        assert!(e.to_string().contains("no/such"), "{e}");
        assert!(TempOutput::beside(Path::new("/")).is_err());
    }
}
