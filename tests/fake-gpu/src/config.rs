//! The simulated machine, as described by the TOML file named by `FAKEGPU_CONFIG`.
//!
//! ```toml
//! driver_version = "580.95.05"
//! cuda_version = 13000
//! # init_error = "DRIVER_NOT_LOADED"   # make nvmlInit fail with this NVML error
//! # cuda_init_error = "NO_DEVICE"      # make cuInit fail with this CUDA error
//!
//! [[gpu]]
//! uuid = "GPU-11111111-2222-3333-4444-555555555555"
//! name = "Simulated H100"
//! memory = "80GiB"
//! sm_count = 132
//! minor = 0
//! pci_bus_id = "00000000:01:00.0"
//! # context_memory = "256MiB"
//! # reserved_memory = "512MiB"
//! # bar1_memory = "256MiB"
//! # mig_mode = true
//! ```
//!
//! The file is parsed and validated once; everything after that trusts it.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use gpuslice_core::units::ByteSize;
use serde::Deserialize;

/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "FAKEGPU_CONFIG";

/// PCI vendor id of NVIDIA, the low half of `pciDeviceId`.
const NVIDIA_VENDOR_ID: u32 = 0x10de;
/// `pciDeviceId` of an H100 SXM5 80GB (device 0x2330), used when a GPU names none.
const DEFAULT_PCI_DEVICE_ID: u32 = (0x2330 << 16) | NVIDIA_VENDOR_ID;
/// `pciSubSystemId` of the same board.
const DEFAULT_PCI_SUBSYSTEM_ID: u32 = (0x16c1 << 16) | NVIDIA_VENDOR_ID;
/// CUDA cores per SM on Hopper, for `nvmlDeviceGetNumGpuCores`.
const DEFAULT_CORES_PER_SM: u32 = 128;
/// Device memory a CUDA context takes when created, roughly what an H100 context costs.
const DEFAULT_CONTEXT_MEMORY: ByteSize = ByteSize(256 << 20);
/// A PCIe card's BAR1 without resizable BAR.
const DEFAULT_BAR1_MEMORY: ByteSize = ByteSize(256 << 20);

/// Longest driver version NVML can return (`NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE` − 1).
const MAX_DRIVER_VERSION_LEN: usize = 79;
/// Longest device name NVML can return (`NVML_DEVICE_NAME_V2_BUFFER_SIZE` − 1).
const MAX_NAME_LEN: usize = 95;
/// Longest UUID NVML can return (`NVML_DEVICE_UUID_V2_BUFFER_SIZE` − 1).
const MAX_UUID_LEN: usize = 95;

/// The whole simulated machine: the driver and its GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeGpuConfig {
    /// What `nvmlSystemGetDriverVersion` returns, e.g. `"580.95.05"`.
    pub driver_version: String,
    /// The CUDA driver version as CUDA encodes it: `1000 * major + 10 * minor` (13000 = 13.0).
    pub cuda_version: i32,
    /// Fault injection: `nvmlInit*` fails with this NVML error, named as in `nvml.h` with or
    /// without the `NVML_ERROR_` prefix (`"DRIVER_NOT_LOADED"`).
    #[serde(default)]
    pub init_error: Option<String>,
    /// Fault injection: `cuInit` fails with this CUDA error, named as in `cuda.h` with or
    /// without the `CUDA_ERROR_` prefix (`"NO_DEVICE"`).
    #[serde(default)]
    pub cuda_init_error: Option<String>,
    /// The GPUs; a GPU's NVML index is its position here.
    #[serde(default)]
    pub gpu: Vec<GpuConfig>,
}

/// One simulated GPU (a `[[gpu]]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    /// `GPU-…`, unique across the machine.
    pub uuid: String,
    /// Product name, e.g. `"NVIDIA H100 80GB HBM3"`.
    pub name: String,
    /// Total device memory.
    pub memory: ByteSize,
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// The `N` of `/dev/nvidiaN`, unique across the machine.
    pub minor: u32,
    /// `domain:bus:device.function`, e.g. `"00000000:01:00.0"`, unique across the machine.
    pub pci_bus_id: PciBusId,
    /// `pciDeviceId`: device id in the high 16 bits, vendor (0x10de) in the low 16.
    #[serde(default = "default_pci_device_id")]
    pub pci_device_id: u32,
    /// `pciSubSystemId`, laid out like `pci_device_id`.
    #[serde(default = "default_pci_subsystem_id")]
    pub pci_subsystem_id: u32,
    /// CUDA cores per SM, for `nvmlDeviceGetNumGpuCores`.
    #[serde(default = "default_cores_per_sm")]
    pub cores_per_sm: u32,
    /// Device memory each CUDA context (primary or created) takes while it exists.
    #[serde(default = "default_context_memory")]
    pub context_memory: ByteSize,
    /// Device memory the driver and firmware set aside (`nvmlMemory_v2_t.reserved`; part of
    /// `used` in the original `nvmlMemory_t`, as on a real GPU). None by default.
    #[serde(default)]
    pub reserved_memory: ByteSize,
    /// The BAR1 aperture (`nvmlDeviceGetBAR1MemoryInfo`'s `bar1Total`).
    #[serde(default = "default_bar1_memory")]
    pub bar1_memory: ByteSize,
    /// MIG mode, current and pending. Absent: the GPU does not support MIG and
    /// `nvmlDeviceGetMigMode` answers `NVML_ERROR_NOT_SUPPORTED`.
    #[serde(default)]
    pub mig_mode: Option<bool>,
    /// MIG devices (`[[gpu.mig]]`): each a compute instance of a GPU instance, with its own
    /// memory and SMs, reached through NVML's MIG handles and, for CUDA, by
    /// `CUDA_VISIBLE_DEVICES=MIG-…` ([`crate::mig`]). Once a process creates or destroys an
    /// instance through NVML, the geometry persisted in the state directory replaces this list
    /// ([`crate::geometry`]).
    #[serde(default)]
    pub mig: Vec<MigInstanceConfig>,
}

/// One MIG instance of a GPU (a `[[gpu.mig]]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigInstanceConfig {
    /// `MIG-…`, unique across the machine.
    pub uuid: String,
    /// The GPU instance profile, e.g. `"1g.10gb"`.
    pub profile: String,
    /// Memory of the instance.
    pub memory: ByteSize,
    /// SMs of the instance.
    pub sm_count: u32,
    /// The driver's GPU instance ID; the instance's position (from 1) when left out.
    #[serde(default)]
    pub gpu_instance_id: Option<u32>,
    /// The compute instance's ID within its GPU instance.
    #[serde(default)]
    pub compute_instance_id: u32,
}

/// Most MIG devices one GPU has (an A100's or H100's seven 1g slices).
pub const MAX_MIG_DEVICES: usize = 7;

impl MigInstanceConfig {
    /// The GPU instance ID of the device at `position` in its GPU's list.
    pub fn gpu_instance_id(&self, position: usize) -> u32 {
        self.gpu_instance_id.unwrap_or(position as u32 + 1)
    }

    /// `(GPU instance slices, compute instance slices)` from the profile: `3g.40gb` is (3, 3),
    /// `1c.3g.40gb` is (3, 1). `None` for a profile not of that form.
    pub fn slices(&self) -> Option<(u32, u32)> {
        let parts: Vec<&str> = self.profile.split('.').collect();
        let count =
            |part: &str, unit: char| part.strip_suffix(unit)?.parse::<u32>().ok().filter(|n| (1..=7).contains(n));
        let gb = |part: &str| part.strip_suffix("gb")?.parse::<u32>().ok();
        match parts.as_slice() {
            [g, m] if gb(m).is_some() => count(g, 'g').map(|g| (g, g)),
            [c, g, m] if gb(m).is_some() => match (count(g, 'g'), count(c, 'c')) {
                (Some(g), Some(c)) if c <= g => Some((g, c)),
                _ => None,
            },
            _ => None,
        }
    }
}

fn default_pci_device_id() -> u32 {
    DEFAULT_PCI_DEVICE_ID
}

fn default_pci_subsystem_id() -> u32 {
    DEFAULT_PCI_SUBSYSTEM_ID
}

fn default_cores_per_sm() -> u32 {
    DEFAULT_CORES_PER_SM
}

fn default_context_memory() -> ByteSize {
    DEFAULT_CONTEXT_MEMORY
}

fn default_bar1_memory() -> ByteSize {
    DEFAULT_BAR1_MEMORY
}

impl GpuConfig {
    /// `sm_count × cores_per_sm`, saturating.
    pub fn cuda_cores(&self) -> u32 {
        self.sm_count.saturating_mul(self.cores_per_sm)
    }

    /// The 16 bytes `cuDeviceGetUuid` returns: the UUID's hex digits, so that
    /// `GPU-00112233-…` is `[0x00, 0x11, 0x22, 0x33, …]`.
    pub fn uuid_bytes(&self) -> [u8; 16] {
        uuid_bytes(&self.uuid).unwrap_or_default()
    }
}

/// The bytes of `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (or `MIG-…`), `None` if it is
/// not one.
fn uuid_bytes(uuid: &str) -> Option<[u8; 16]> {
    let hex = uuid.strip_prefix("GPU-").or_else(|| uuid.strip_prefix("MIG-"))?;
    let groups: Vec<&str> = hex.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    let digits = groups.concat();
    let mut bytes = [0u8; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(bytes)
}

/// A PCI address, read from `"domain:bus:device.function"` (hex; the domain may be 4 or 8
/// digits or left out, as `nvmlDeviceGetHandleByPciBusId` accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PciBusId {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciBusId {
    /// NVML's form, `NVML_DEVICE_PCI_BUS_ID_FMT`: `"00000000:01:00.0"`.
    pub fn nvml(&self) -> String {
        format!("{:08X}:{:02X}:{:02X}.{:X}", self.domain, self.bus, self.device, self.function)
    }

    /// The 16-byte legacy form, `NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT`: `"0000:01:00.0"`.
    pub fn legacy(&self) -> String {
        format!("{:04X}:{:02X}:{:02X}.{:X}", self.domain & 0xffff, self.bus, self.device, self.function)
    }
}

/// Why a PCI bus id could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a PCI bus id: expected domain:bus:device.function in hex, such as 00000000:01:00.0")]
pub struct PciBusIdError(String);

impl FromStr for PciBusId {
    type Err = PciBusIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PciBusIdError(s.to_owned());
        let hex = |part: &str, max_digits: usize| {
            if part.is_empty() || part.len() > max_digits {
                return Err(bad());
            }
            u32::from_str_radix(part, 16).map_err(|_| bad())
        };
        let (rest, function) = s.trim().rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [bus, device] => (0, *bus, *device),
            [domain, bus, device] => (hex(domain, 8)?, *bus, *device),
            _ => return Err(bad()),
        };
        let function = hex(function, 1)?;
        if function > 7 {
            return Err(bad());
        }
        let device = hex(device, 2)?;
        if device > 0x1f {
            return Err(bad());
        }
        Ok(Self {
            domain,
            bus: u8::try_from(hex(bus, 2)?).map_err(|_| bad())?,
            device: u8::try_from(device).map_err(|_| bad())?,
            function: u8::try_from(function).map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for PciBusId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.nvml())
    }
}

impl<'de> Deserialize<'de> for PciBusId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why the config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{CONFIG_ENV} is not set: point it at a fake GPU config file")]
    Unset,
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl FakeGpuConfig {
    /// The path named by `FAKEGPU_CONFIG`.
    pub fn path_from_env() -> Result<PathBuf, ConfigError> {
        match std::env::var_os(CONFIG_ENV) {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(ConfigError::Unset),
        }
    }

    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let config: Self = toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })?;
        config.validate().map_err(|reason| ConfigError::Invalid { path: path.to_owned(), reason })?;
        Ok(config)
    }

    /// Check what serde cannot: lengths NVML can return, uniqueness, known error names.
    pub fn validate(&self) -> Result<(), String> {
        if self.driver_version.is_empty() || self.driver_version.len() > MAX_DRIVER_VERSION_LEN {
            return Err(format!("driver_version must be 1 to {MAX_DRIVER_VERSION_LEN} bytes"));
        }
        if self.cuda_version <= 0 {
            return Err(format!("cuda_version {} must be positive, e.g. 13000 for CUDA 13.0", self.cuda_version));
        }
        if let Some(name) = &self.init_error
            && crate::nvml::return_code_by_name(name).is_none()
        {
            return Err(format!("init_error `{name}` is not an NVML error name such as DRIVER_NOT_LOADED"));
        }
        if let Some(name) = &self.cuda_init_error
            && crate::cuda::error::code_by_name(name).is_none()
        {
            return Err(format!("cuda_init_error `{name}` is not a CUDA error name such as NO_DEVICE"));
        }
        let mut uuids = HashSet::new();
        let mut minors = HashSet::new();
        let mut buses = HashSet::new();
        for (index, gpu) in self.gpu.iter().enumerate() {
            let at = |what: String| format!("gpu {index}: {what}");
            check_text(&gpu.uuid, MAX_UUID_LEN, "uuid").map_err(at)?;
            if !gpu.uuid.starts_with("GPU-") || uuid_bytes(&gpu.uuid).is_none() {
                return Err(at(format!("uuid `{}` must be GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx in hex", gpu.uuid)));
            }
            check_text(&gpu.name, MAX_NAME_LEN, "name").map_err(at)?;
            if gpu.memory.0 == 0 {
                return Err(at("memory must not be zero".into()));
            }
            if gpu.sm_count == 0 {
                return Err(at("sm_count must not be zero".into()));
            }
            if gpu.context_memory > gpu.memory {
                return Err(at("context_memory must not exceed memory".into()));
            }
            if gpu.reserved_memory >= gpu.memory {
                return Err(at("reserved_memory must be less than memory".into()));
            }
            if !uuids.insert(gpu.uuid.as_str()) {
                return Err(at(format!("uuid {} is used twice", gpu.uuid)));
            }
            if !minors.insert(gpu.minor) {
                return Err(at(format!("minor {} is used twice", gpu.minor)));
            }
            if !buses.insert(gpu.pci_bus_id) {
                return Err(at(format!("pci_bus_id {} is used twice", gpu.pci_bus_id)));
            }
            if !gpu.mig.is_empty() && gpu.mig_mode != Some(true) {
                return Err(at("MIG instances need mig_mode = true".into()));
            }
            if gpu.mig.len() > MAX_MIG_DEVICES {
                return Err(at(format!("{} MIG devices, more than the {MAX_MIG_DEVICES} a GPU has", gpu.mig.len())));
            }
            let mut ids = HashSet::new();
            for (position, mig) in gpu.mig.iter().enumerate() {
                check_text(&mig.uuid, MAX_UUID_LEN, "mig uuid").map_err(at)?;
                if mig.slices().is_none() {
                    return Err(at(format!("mig profile `{}` must read like 3g.40gb or 1c.3g.40gb", mig.profile)));
                }
                if !ids.insert((mig.gpu_instance_id(position), mig.compute_instance_id)) {
                    return Err(at(format!(
                        "mig {}: GPU instance {} compute instance {} is used twice",
                        mig.uuid,
                        mig.gpu_instance_id(position),
                        mig.compute_instance_id
                    )));
                }
                if mig.memory.0 == 0 || mig.sm_count == 0 {
                    return Err(at(format!("mig {} needs memory and sm_count", mig.uuid)));
                }
                if !mig.uuid.starts_with("MIG-") {
                    return Err(at(format!("mig uuid `{}` must start with MIG-", mig.uuid)));
                }
                if !uuids.insert(mig.uuid.as_str()) {
                    return Err(at(format!("uuid {} is used twice", mig.uuid)));
                }
                if mig.memory > gpu.memory || mig.sm_count > gpu.sm_count {
                    return Err(at(format!("mig {} is larger than its GPU", mig.uuid)));
                }
            }
        }
        Ok(())
    }

    /// `"13.580.95.05"`: what `nvmlSystemGetNVMLVersion` returns (CUDA major, then driver).
    pub fn nvml_version(&self) -> String {
        format!("{}.{}", self.cuda_version / 1000, self.driver_version)
    }
}

fn check_text(value: &str, max: usize, what: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > max || value.contains('\0') {
        return Err(format!("{what} must be 1 to {max} bytes without NUL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"
        driver_version = "580.95.05"
        cuda_version = 13000
        [[gpu]]
        uuid = "GPU-11111111-2222-3333-4444-555555555555"
        name = "Simulated H100"
        memory = "80GiB"
        sm_count = 132
        minor = 0
        pci_bus_id = "00000000:01:00.0"
    "#;

    fn parse(text: &str) -> Result<FakeGpuConfig, String> {
        let c: FakeGpuConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn parses_the_documented_example() {
        let c = parse(ONE).unwrap();
        assert_eq!(c.gpu.len(), 1);
        let g = &c.gpu[0];
        assert_eq!(g.memory, ByteSize(80 << 30));
        assert_eq!(g.pci_bus_id.nvml(), "00000000:01:00.0");
        assert_eq!(g.pci_bus_id.legacy(), "0000:01:00.0");
        assert_eq!(g.mig_mode, None);
        assert_eq!(g.cuda_cores(), 132 * 128);
        assert_eq!(g.context_memory, ByteSize(256 << 20));
        assert_eq!(
            g.uuid_bytes(),
            [0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x33, 0x33, 0x44, 0x44, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55]
        );
        assert_eq!(c.nvml_version(), "13.580.95.05");
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let c = parse(include_str!("../example.toml")).unwrap();
        assert_eq!(c.gpu.len(), 2);
        assert_eq!(c.gpu[1].mig.len(), 1);
        let uncommented = include_str!("../example.toml")
            .lines()
            .map(|l| l.strip_prefix("# ").filter(|l| l.contains(" = ")).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let c = parse(&uncommented).unwrap();
        assert_eq!(c.init_error.as_deref(), Some("DRIVER_NOT_LOADED"));
        assert_eq!(c.cuda_init_error.as_deref(), Some("NO_DEVICE"));
        assert_eq!(c.gpu[0].context_memory, DEFAULT_CONTEXT_MEMORY);
        assert_eq!(c.gpu[0].pci_device_id, DEFAULT_PCI_DEVICE_ID);
        assert_eq!(c.gpu[0].mig_mode, Some(false));
    }

    #[test]
    fn rejects_unknown_keys() {
        let err = parse(&format!("{ONE}\ncolour = \"green\"")).unwrap_err();
        assert!(err.contains("colour"), "{err}");
        let err = parse(&ONE.replace("sm_count", "sms")).unwrap_err();
        assert!(err.contains("sms"), "{err}");
    }

    #[test]
    fn rejects_duplicates_and_bad_values() {
        let two = format!("{ONE}\n{}", &ONE[ONE.find("[[gpu]]").unwrap()..]);
        assert!(parse(&two).unwrap_err().contains("used twice"));
        assert!(parse(&ONE.replace("80GiB", "eighty")).is_err());
        assert!(parse(&ONE.replace("00000000:01:00.0", "01:00")).is_err());
        assert!(parse(&ONE.replace("GPU-1111", "XPU-1111")).is_err());
        assert!(parse(&ONE.replace("GPU-11111111", "GPU-1111111x")).is_err());
        assert!(parse(&ONE.replace("GPU-11111111", "GPU-111111111")).is_err());
        let bad_cuda = ONE.replace("cuda_version", "cuda_init_error = \"NOPE\"\ncuda_version");
        assert!(parse(&bad_cuda).unwrap_err().contains("NOPE"));
        let too_big = ONE.replace("sm_count", "context_memory = \"81GiB\"\nsm_count");
        assert!(parse(&too_big).unwrap_err().contains("context_memory"));
        let bad_error = ONE.replace("cuda_version", "init_error = \"NOPE\"\ncuda_version");
        assert!(parse(&bad_error).unwrap_err().contains("NOPE"));
        let good_error = ONE.replace("cuda_version", "init_error = \"DRIVER_NOT_LOADED\"\ncuda_version");
        assert!(parse(&good_error).is_ok());
    }

    #[test]
    fn parses_mig_instances() {
        let text = format!(
            "{ONE}\nmig_mode = true\n[[gpu.mig]]\nuuid = \"MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\"\n\
             profile = \"1g.10gb\"\nmemory = \"10GiB\"\nsm_count = 16\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.gpu[0].mig.len(), 1);
        assert_eq!(c.gpu[0].mig[0].profile, "1g.10gb");
        let without_mode = text.replace("mig_mode = true", "");
        assert!(parse(&without_mode).unwrap_err().contains("mig_mode"));
    }

    #[test]
    fn pci_bus_ids_read_like_nvml() {
        let p: PciBusId = "0000:3b:00.0".parse().unwrap();
        assert_eq!(p.nvml(), "00000000:3B:00.0");
        assert_eq!("3B:00.0".parse::<PciBusId>().unwrap(), p);
        assert_eq!("00000000:3B:00.0".parse::<PciBusId>().unwrap(), p);
        for bad in ["", "3b", "0:3b:00", "0:3b:00.8", "0:3b:20.0", "0:13b:00.0", "x:3b:00.0"] {
            assert!(bad.parse::<PciBusId>().is_err(), "{bad}");
        }
    }
}
