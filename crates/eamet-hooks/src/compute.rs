//! Where and in what precision a model computes: [`Dtype`], device parsing and [`LoadOptions`].
//!
//! A model loaded with [`Dtype::Bf16`] or [`Dtype::F16`] holds its weights in that type and
//! runs the forward pass in it. What crosses the [`EditableLm`](crate::EditableLm) boundary
//! stays f32: captures, logits and log-probabilities (the final log-softmax runs in f32),
//! [`w_out`](crate::EditableLm::w_out) and accumulated deltas. Edit deltas may come in f32 (and
//! require grad): the forward casts them to the compute dtype, so gradients flow back to the
//! f32 tensor. Norms upcast to f32 internally, as transformers does (see
//! [`LlamaModel`](crate::LlamaModel)).

use crate::error::{ModelError, Result};
use std::fmt;
use std::str::FromStr;
use tch::{Device, Kind};

/// The floating-point type a model's weights are held and its forward pass runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dtype {
    /// 32-bit IEEE float (the default; reference precision).
    #[default]
    F32,
    /// bfloat16: f32's range, 8 bits of mantissa.
    Bf16,
    /// IEEE half precision: 11 bits of mantissa, range ±65504.
    F16,
}

impl Dtype {
    /// Every value, in the order the CLI lists them.
    pub const ALL: [Dtype; 3] = [Dtype::F32, Dtype::Bf16, Dtype::F16];

    /// The libtorch kind.
    pub fn kind(self) -> Kind {
        match self {
            Dtype::F32 => Kind::Float,
            Dtype::Bf16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
        }
    }

    /// Short name: `f32`, `bf16`, `f16` (what [`FromStr`] and the CLI take).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }

    /// PyTorch's name: `float32`, `bfloat16`, `float16`.
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::Bf16 => "bfloat16",
            Dtype::F16 => "float16",
        }
    }

    /// `x` rounded to this type (to nearest even), as f32.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Dtype::F32 => x,
            Dtype::Bf16 => half::bf16::from_f32(x).to_f32(),
            Dtype::F16 => half::f16::from_f32(x).to_f32(),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = ModelError;

    /// `f32`/`float32`/`fp32`, `bf16`/`bfloat16`, `f16`/`float16`/`fp16`/`half`
    /// (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" | "float" => Ok(Dtype::F32),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            "f16" | "float16" | "fp16" | "half" => Ok(Dtype::F16),
            other => Err(ModelError::Request(format!(
                "dtype {other:?}: choose f32, bf16 or f16"
            ))),
        }
    }
}

impl serde::Serialize for Dtype {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Dtype {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses `cpu`, `cuda` (device 0) or `cuda:N` (case-insensitive).
///
/// # Errors
/// [`ModelError::Request`] naming the accepted forms.
pub fn parse_device(s: &str) -> Result<Device> {
    let t = s.trim().to_ascii_lowercase();
    let bad = || {
        ModelError::Request(format!(
            "device {s:?}: choose cpu, cuda or cuda:N (N = 0, 1, …)"
        ))
    };
    match t.as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => {
            let n = t.strip_prefix("cuda:").ok_or_else(bad)?;
            n.parse::<usize>().map(Device::Cuda).map_err(|_| bad())
        }
    }
}

/// The device named by the environment variable `var` ([`parse_device`]'s forms), or the CPU
/// when it is unset or empty. Test suites use it (`EAMET_TEST_DEVICE=cuda cargo test`) to run the
/// same checks on a GPU when one is present.
///
/// # Errors
/// [`ModelError::Request`] naming the variable when its value is not a device.
pub fn device_from_env(var: &str) -> Result<Device> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => parse_device(&v).map_err(|e| match e {
            ModelError::Request(m) => {
                ModelError::Request(format!("environment variable {var}: {m}"))
            }
            other => other,
        }),
        Err(std::env::VarError::NotUnicode(v)) => Err(ModelError::Request(format!(
            "environment variable {var}: {v:?} is not a device name"
        ))),
        _ => Ok(Device::Cpu),
    }
}

/// A device as [`parse_device`] reads it: `cpu`, `cuda:N` (others as libtorch names them).
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

/// Checks that `device` can be used by this process: always for the CPU; for `cuda:N`, that
/// libtorch was built with CUDA, sees a GPU, and has device `N`.
///
/// # Errors
/// [`ModelError::DeviceUnavailable`] saying what is missing (a CUDA build of libtorch, found
/// through `LIBTORCH` at build time and linked with `EAMET_CUDA=1`, see `eamet-build`; and an
/// NVIDIA GPU with its driver).
pub fn check_device(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(n) => {
            if !tch::Cuda::is_available() {
                return Err(ModelError::DeviceUnavailable {
                    device: device_name(device),
                    reason: "CUDA is not available in this build. It needs a CUDA build of libtorch (LIBTORCH pointing at one, of the version tch expects, with its CUDA libraries installed), eamet built against it with EAMET_CUDA=1 (so libtorch_cuda is linked), and an NVIDIA GPU with its driver; or use --device cpu".into(),
                });
            }
            let count = tch::Cuda::device_count();
            if n as i64 >= count {
                return Err(ModelError::DeviceUnavailable {
                    device: device_name(device),
                    reason: format!(
                        "this machine has {count} CUDA device(s) (cuda:0..cuda:{})",
                        count - 1
                    ),
                });
            }
            Ok(())
        }
        other => Err(ModelError::DeviceUnavailable {
            device: device_name(other),
            reason: "only cpu and cuda:N are supported".into(),
        }),
    }
}

/// How to load a model: where its weights live and the type they (and the forward pass) use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Device of the weights and of every pass.
    pub device: Device,
    /// Compute dtype.
    pub dtype: Dtype,
}

impl Default for LoadOptions {
    /// CPU, f32: what [`LlamaModel::from_gguf`](crate::LlamaModel::from_gguf) with
    /// `Device::Cpu` loads.
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: Dtype::F32,
        }
    }
}

impl LoadOptions {
    /// f32 on `device`.
    pub fn on(device: Device) -> Self {
        LoadOptions {
            device,
            dtype: Dtype::F32,
        }
    }

    /// The same options with another dtype.
    pub fn with_dtype(mut self, dtype: Dtype) -> Self {
        self.dtype = dtype;
        self
    }

    /// In words, e.g. `bf16 on cuda:0`.
    pub fn describe(&self) -> String {
        format!("{} on {}", self.dtype, device_name(self.device))
    }

    /// [`check_device`] of the device.
    ///
    /// # Errors
    /// As [`check_device`].
    pub fn check(&self) -> Result<()> {
        check_device(self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for d in Dtype::ALL {
            assert_eq!(d.name().parse::<Dtype>().unwrap(), d);
            assert_eq!(d.torch_name().parse::<Dtype>().unwrap(), d);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(serde_json::from_str::<Dtype>(&json).unwrap(), d);
        }
        assert!("f64"
            .parse::<Dtype>()
            .unwrap_err()
            .to_string()
            .contains("bf16"));
        assert_eq!(Dtype::Bf16.round(1.0 + 1.0 / 512.0), 1.0);
        assert_eq!(Dtype::F16.round(1.0 + 1.0 / 512.0), 1.0 + 1.0 / 512.0);
    }

    #[test]
    fn devices_parse() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device("CUDA").unwrap(), Device::Cuda(0));
        assert_eq!(parse_device("cuda:3").unwrap(), Device::Cuda(3));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(e.contains("cpu, cuda or cuda:N"), "{e}");
        }
        assert_eq!(device_name(Device::Cuda(1)), "cuda:1");
        assert_eq!(
            device_from_env("EAMET_TEST_SURELY_UNSET_VARIABLE").unwrap(),
            Device::Cpu
        );
        // Variables private to this test (no other test reads them).
        std::env::set_var("EAMET_COMPUTE_UNIT_TEST_DEVICE_A", "cuda:2");
        assert_eq!(
            device_from_env("EAMET_COMPUTE_UNIT_TEST_DEVICE_A").unwrap(),
            Device::Cuda(2)
        );
        std::env::set_var("EAMET_COMPUTE_UNIT_TEST_DEVICE_B", "gpu");
        let e = device_from_env("EAMET_COMPUTE_UNIT_TEST_DEVICE_B").unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, ModelError::Request(_))
                && msg.contains("EAMET_COMPUTE_UNIT_TEST_DEVICE_B")
                && msg.contains("cpu, cuda or cuda:N")
                && msg.matches("invalid request").count() <= 1,
            "{msg}"
        );
        assert!(check_device(Device::Cpu).is_ok());
    }
}
