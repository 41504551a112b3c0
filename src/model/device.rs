//! Where model work runs: the CPU or one CUDA GPU (`cpu`, `cuda`, `cuda:N`).
//!
//! The CUDA backend exists only in builds with the `cuda` feature; without it a CUDA device is
//! refused with [`ModelError::NoCuda`], never a panic. On a GPU, s3mem keeps all its work on one
//! stream, keeps freed memory in the driver's pool (so a scan does not map and unmap memory at
//! every batch), and reads memory figures from the driver ([`gpu_memory`]).

use std::str::FromStr;

use candle_core::Device;

use super::error::{ModelError, Result};

/// A device as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The host CPU.
    #[default]
    Cpu,
    /// The CUDA GPU of this ordinal.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(Self::Cuda)
                    .map_err(|_| format!("`{n}` is not a GPU ordinal (cuda:0, cuda:1, ...)")),
                None => Err(format!("unknown device `{s}` (cpu, cuda, cuda:N)")),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device; a CUDA device in a build without the `cuda` feature is an error.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => open_cuda(ordinal, self),
        }
    }

    /// Returns whether this is a GPU.
    pub fn is_gpu(self) -> bool {
        matches!(self, Self::Cuda(_))
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize, spec: DeviceSpec) -> Result<Device> {
    Err(ModelError::NoCuda {
        device: spec.to_string(),
    })
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize, spec: DeviceSpec) -> Result<Device> {
    let device = Device::new_cuda_with_stream(ordinal).map_err(|e| ModelError::Device {
        device: spec.to_string(),
        reason: e.to_string(),
    })?;
    cuda::configure(&device).map_err(|reason| ModelError::Device {
        device: spec.to_string(),
        reason,
    })?;
    Ok(device)
}

/// Returns a device's name as `--device` takes it: `cpu`, `cuda:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        candle_core::DeviceLocation::Cpu => "cpu".into(),
    }
}

/// GPU memory as the CUDA driver reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GpuMemory {
    /// Device memory in use now, by every user of the GPU (`total - free`, cuMemGetInfo).
    pub device_used_bytes: u64,
    /// The GPU's memory.
    pub device_total_bytes: u64,
    /// The highest number of bytes this process had allocated at once from the driver's
    /// memory pool since the last [`reset_gpu_peak`] (CU_MEMPOOL_ATTR_USED_MEM_HIGH).
    pub peak_allocated_bytes: u64,
    /// The highest number of bytes the pool had reserved from the GPU at once (its allocations
    /// plus free blocks it kept; CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH).
    pub peak_reserved_bytes: u64,
    /// Bytes allocated from the pool now (CU_MEMPOOL_ATTR_USED_MEM_CURRENT).
    pub allocated_bytes: u64,
}

/// Returns the driver's memory figures for a GPU device, `None` for the CPU.
pub fn gpu_memory(device: &Device) -> Result<Option<GpuMemory>> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => cuda::memory(d)
            .map(Some)
            .map_err(|reason| ModelError::Device {
                device: "cuda".into(),
                reason,
            }),
        _ => Ok(None),
    }
}

/// Starts the peak figures of [`gpu_memory`] afresh (after waiting for queued work).
pub fn reset_gpu_peak(device: &Device) -> Result<()> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => cuda::reset_peak(d).map_err(|reason| ModelError::Device {
            device: "cuda".into(),
            reason,
        }),
        _ => Ok(()),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::cuda_backend::CudaDevice;
    use candle_core::Device;

    use super::GpuMemory;

    fn check(what: &str, r: sys::CUresult) -> Result<(), String> {
        if r == sys::CUresult::CUDA_SUCCESS {
            Ok(())
        } else {
            Err(format!("{what} failed: {r:?}"))
        }
    }

    /// The device's current memory pool, which stream-ordered allocations draw from.
    #[expect(
        unsafe_code,
        reason = "a CUDA driver call on the memory pool; the SAFETY comment says why it is sound"
    )]
    fn pool(d: &CudaDevice) -> Result<sys::CUmemoryPool, String> {
        let stream = d.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread().map_err(|e| e.to_string())?;
        let mut pool = std::ptr::null_mut();
        // SAFETY: `pool` is a valid out-pointer and the device handle comes from a live context.
        check("cuDeviceGetMemPool", unsafe {
            sys::cuDeviceGetMemPool(&mut pool, ctx.cu_device())
        })?;
        Ok(pool)
    }

    #[expect(
        unsafe_code,
        reason = "a CUDA driver call on the memory pool; the SAFETY comment says why it is sound"
    )]
    fn get(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64, String> {
        let mut v = 0u64;
        // SAFETY: these attributes are 64-bit values (cuuint64_t); `v` outlives the call.
        check("cuMemPoolGetAttribute", unsafe {
            sys::cuMemPoolGetAttribute(pool, attr, (&mut v as *mut u64).cast())
        })?;
        Ok(v)
    }

    #[expect(
        unsafe_code,
        reason = "a CUDA driver call on the memory pool; the SAFETY comment says why it is sound"
    )]
    fn set(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute, v: u64) -> Result<(), String> {
        let mut v = v;
        // SAFETY: as in `get`; the driver reads the value during the call.
        check("cuMemPoolSetAttribute", unsafe {
            sys::cuMemPoolSetAttribute(pool, attr, (&mut v as *mut u64).cast())
        })
    }

    #[expect(
        unsafe_code,
        reason = "turning off candle's per-tensor stream events; the SAFETY comment says why it is sound"
    )]
    pub(super) fn configure(device: &Device) -> Result<(), String> {
        let Device::Cuda(d) = device else {
            return Ok(());
        };
        // SAFETY: s3mem runs all work of a device on the one stream this device was opened
        // with (new_cuda_with_stream), so no tensor crosses streams and candle's per-tensor
        // cross-stream events are pure overhead (two events per allocation).
        unsafe { d.disable_event_tracking() };
        if d.cuda_stream().context().has_async_alloc() {
            // Keep freed blocks in the pool instead of returning them at every synchronisation
            // (the default threshold 0 unmaps and remaps memory around each batch).
            let pool = pool(d)?;
            set(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                u64::MAX,
            )?;
        }
        Ok(())
    }

    pub(super) fn memory(d: &CudaDevice) -> Result<GpuMemory, String> {
        let stream = d.cuda_stream();
        stream.synchronize().map_err(|e| e.to_string())?;
        let (free, total) = stream.context().mem_get_info().map_err(|e| e.to_string())?;
        let mut m = GpuMemory {
            device_used_bytes: (total - free) as u64,
            device_total_bytes: total as u64,
            ..GpuMemory::default()
        };
        if stream.context().has_async_alloc() {
            use sys::CUmemPool_attribute as A;
            let pool = pool(d)?;
            m.peak_allocated_bytes = get(pool, A::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?;
            m.peak_reserved_bytes = get(pool, A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?;
            m.allocated_bytes = get(pool, A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
        }
        Ok(m)
    }

    pub(super) fn reset_peak(d: &CudaDevice) -> Result<(), String> {
        let stream = d.cuda_stream();
        stream.synchronize().map_err(|e| e.to_string())?;
        if stream.context().has_async_alloc() {
            use sys::CUmemPool_attribute as A;
            let pool = pool(d)?;
            // Setting a high watermark to zero restarts it from the current value.
            set(pool, A::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)?;
            set(pool, A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, 0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        assert_eq!(gpu_memory(&Device::Cpu).unwrap(), None);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let err = DeviceSpec::Cuda(0).open().unwrap_err();
        assert!(matches!(err, ModelError::NoCuda { .. }));
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }
}
