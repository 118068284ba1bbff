//! A node's hardware, as it announces it: memory, CPU, GPU.

use std::process::Command;

use serde::{Deserialize, Serialize};
use sysinfo::{CpuRefreshKind, System};

/// What a node has to offer. Memory decides how many layers it gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCapabilities {
    pub memory_bytes: u64,
    pub available_memory_bytes: u64,
    pub cpu_model: String,
    pub cpu_cores: u32,
    /// Empty when the node has no GPU.
    #[serde(default)]
    pub gpu_name: String,
    #[serde(default)]
    pub gpu_memory_bytes: u64,
    /// The device the engine runs on: cpu, cuda:0, metal:0.
    #[serde(default)]
    pub engine_device: String,
    /// The port its tensor-parallel group links listen on, at its gRPC address's host
    /// (0: it has none).
    #[serde(default)]
    pub group_link_port: u16,
}

impl DeviceCapabilities {
    /// Reads this machine's capabilities (blocking: may run `nvidia-smi` once).
    pub fn detect(engine_device: &str) -> Self {
        let mut system = System::new();
        system.refresh_memory();
        system.refresh_cpu_list(CpuRefreshKind::nothing());
        let (gpu_name, gpu_memory_bytes) = detect_gpu().unwrap_or_default();
        DeviceCapabilities {
            memory_bytes: system.total_memory(),
            available_memory_bytes: system.available_memory(),
            cpu_model: system
                .cpus()
                .first()
                .map(|c| c.brand().trim().to_string())
                .unwrap_or_default(),
            cpu_cores: System::physical_core_count().unwrap_or(system.cpus().len()) as u32,
            gpu_name,
            gpu_memory_bytes,
            engine_device: engine_device.to_string(),
            group_link_port: 0,
        }
    }

    /// The memory the engine's weights live in: the GPU's when the engine runs on a
    /// discrete GPU, the machine's otherwise (CPU, and Apple's unified memory).
    pub fn model_memory_bytes(&self) -> u64 {
        if self.engine_device.starts_with("cuda") && self.gpu_memory_bytes > 0 {
            self.gpu_memory_bytes
        } else {
            self.memory_bytes
        }
    }

    /// The memory free for a model's weights and KV cache: the GPU's on a discrete GPU
    /// (its total: free device memory is not reported yet), else the machine's available
    /// memory (total when unknown).
    pub fn free_model_memory_bytes(&self) -> u64 {
        if self.engine_device.starts_with("cuda") && self.gpu_memory_bytes > 0 {
            self.gpu_memory_bytes
        } else if self.available_memory_bytes > 0 {
            self.available_memory_bytes
        } else {
            self.memory_bytes
        }
    }

    /// Caps every memory figure at `limit` (`--memory-limit`: a node that may use only
    /// part of its machine, or a small machine simulated in tests).
    pub fn limit_memory(&mut self, limit: u64) {
        self.memory_bytes = self.memory_bytes.min(limit);
        self.available_memory_bytes = self.available_memory_bytes.min(limit);
        if self.gpu_memory_bytes > 0 {
            self.gpu_memory_bytes = self.gpu_memory_bytes.min(limit);
        }
    }
}

/// The first NVIDIA GPU's name and memory, from `nvidia-smi` when it is installed; on
/// macOS the chip name (its GPU shares the machine's memory).
fn detect_gpu() -> Option<(String, u64)> {
    if cfg!(target_os = "macos") {
        let output = Command::new("sysctl")
            .args(["-n", "machdep.cpu.brand_string"])
            .output()
            .ok()?;
        let chip = String::from_utf8_lossy(&output.stdout).trim().to_string();
        return chip
            .starts_with("Apple")
            .then(|| (format!("{chip} GPU"), 0));
    }
    let output = Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let (name, mib) = text.lines().next()?.rsplit_once(',')?;
    Some((
        name.trim().to_string(),
        mib.trim().parse::<u64>().ok()? << 20,
    ))
}
