//! A node's capabilities on the wire, both ways (in `CollectTopology` and the peers file).

use super::pb;
use crate::topology::DeviceCapabilities;

impl DeviceCapabilities {
    pub fn to_wire(&self) -> pb::DeviceCapabilities {
        pb::DeviceCapabilities {
            memory_bytes: self.memory_bytes,
            available_memory_bytes: self.available_memory_bytes,
            cpu_model: self.cpu_model.clone(),
            cpu_cores: self.cpu_cores,
            gpu_name: self.gpu_name.clone(),
            gpu_memory_bytes: self.gpu_memory_bytes,
            engine_device: self.engine_device.clone(),
            group_link_port: u32::from(self.group_link_port),
        }
    }

    pub fn from_wire(wire: &pb::DeviceCapabilities) -> Self {
        DeviceCapabilities {
            memory_bytes: wire.memory_bytes,
            available_memory_bytes: wire.available_memory_bytes,
            cpu_model: wire.cpu_model.clone(),
            cpu_cores: wire.cpu_cores,
            gpu_name: wire.gpu_name.clone(),
            gpu_memory_bytes: wire.gpu_memory_bytes,
            engine_device: wire.engine_device.clone(),
            group_link_port: u16::try_from(wire.group_link_port).unwrap_or(0),
        }
    }
}
