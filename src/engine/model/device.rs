//! Which device the engine runs on, chosen on the command line and checked for real.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

/// What the user asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The best device this build and machine have: CUDA, then Metal, then the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    /// `auto`, `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, ordinal) = match text.split_once(':') {
            Some((kind, n)) => {
                let n = n
                    .parse::<usize>()
                    .map_err(|_| format!("bad device ordinal in '{text}'"))?;
                (kind, Some(n))
            }
            None => (text, None),
        };
        match (kind.to_ascii_lowercase().as_str(), ordinal) {
            ("auto", None) => Ok(DeviceChoice::Auto),
            ("cpu", None) => Ok(DeviceChoice::Cpu),
            ("cuda", n) => Ok(DeviceChoice::Cuda(n.unwrap_or(0))),
            ("metal", n) => Ok(DeviceChoice::Metal(n.unwrap_or(0))),
            _ => Err(format!(
                "unknown device '{text}': expected auto, cpu, cuda[:N] or metal[:N]"
            )),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceChoice::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

/// Whether this binary was built with CUDA support.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");
/// Whether this binary was built with Metal support.
pub const METAL_BUILT: bool = cfg!(feature = "metal");

impl DeviceChoice {
    /// Opens the device. Asking for a device this build or machine lacks is an error
    /// that says which; `auto` falls back to the CPU only when no GPU backend can start.
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => open_cuda(n),
            DeviceChoice::Metal(n) => open_metal(n),
            DeviceChoice::Auto => {
                if CUDA_BUILT {
                    match open_cuda(0) {
                        Ok(device) => return Ok(device),
                        Err(error) => {
                            tracing::info!("no usable CUDA device ({error:#}); trying others")
                        }
                    }
                }
                if METAL_BUILT {
                    match open_metal(0) {
                        Ok(device) => return Ok(device),
                        Err(error) => {
                            tracing::info!("no usable Metal device ({error:#}); using the CPU")
                        }
                    }
                }
                Ok(Device::Cpu)
            }
        }
    }
}

fn open_cuda(ordinal: usize) -> anyhow::Result<Device> {
    if !CUDA_BUILT {
        anyhow::bail!(
            "device cuda:{ordinal} was asked for, but this exo was built without CUDA support \
             (rebuild with `cargo build --release --features cuda`)"
        );
    }
    Device::new_cuda(ordinal).map_err(|error| {
        anyhow::anyhow!(
            "cannot open CUDA device {ordinal}: {error} (is there an NVIDIA GPU and driver?)"
        )
    })
}

fn open_metal(ordinal: usize) -> anyhow::Result<Device> {
    if !METAL_BUILT {
        anyhow::bail!(
            "device metal:{ordinal} was asked for, but this exo was built without Metal support \
             (rebuild on macOS with `cargo build --release --features metal`)"
        );
    }
    Device::new_metal(ordinal).map_err(|error| {
        anyhow::anyhow!(
            "cannot open Metal device {ordinal}: {}",
            without_backtrace(error)
        )
    })
}

/// candle attaches a backtrace to device errors; a user needs the message only.
fn without_backtrace(error: candle_core::Error) -> candle_core::Error {
    match error {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        other => other,
    }
}

/// A short name of an opened device: `cpu`, `cuda:0`, `metal:0`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The activation dtype for dense (safetensors) weights on a device: the CPU computes in
/// f32 (its half-precision matmuls are slow), GPUs in bf16 (f16 on Metal, whose bf16
/// support varies by chip). Quantized weights always take f32 activations.
pub fn dense_dtype(device: &Device) -> DType {
    match device {
        Device::Cpu => DType::F32,
        Device::Cuda(_) => DType::BF16,
        Device::Metal(_) => DType::F16,
    }
}
