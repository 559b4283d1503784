//! The device: opening the adapter and device with their limits and features, the backend's
//! state, GPU errors and device loss, and the error scopes a model load runs in.

use super::buffers::Pool;
use super::encode::{BindGroupKey, PARAM_ALIGN, PARAM_SLOTS, Pending};
use super::kernels::{Kernel, Reduce, shared, slot};
use super::readback::{Choice, SPARE_CHOICES};
use super::{GpuOptions, LinearKernel};
use crate::backend::{Counters, MAX_WATCH};
use crate::error::{Error, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

/// The error scopes a model load runs in (`GpuBackend::load_scopes`): out of memory and
/// validation. A browser reports a refused allocation asynchronously, after the synchronous load
/// has gone on as if the buffer existed, so the load waits for the scopes' verdict before it
/// calls itself done; natively the verdict is ready at once. Popped in reverse order of pushing,
/// as wgpu requires.
pub struct LoadScopes {
    pub(super) validation: wgpu::ErrorScopeGuard,
    pub(super) memory: wgpu::ErrorScopeGuard,
}

impl LoadScopes {
    /// What the device refused while the scopes were open; `what`: the model, for the message.
    pub async fn finish(self, what: &str) -> Result<()> {
        // wgpu's errors span lines ("Caused by: ..."): one line here.
        let line = |e: wgpu::Error| e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        let validation = self.validation.pop().await.map(line);
        let memory = self.memory.pop().await.map(line);
        let knobs = "try a smaller quantization, context or batch (--quant q4, --context, --batch) or the CPU backend (--backend cpu)";
        if let Some(e) = memory {
            return Err(Error::Other(format!("the GPU ran out of memory loading {what} ({e}): {knobs}")));
        }
        if let Some(e) = validation {
            return Err(Error::Other(format!("the GPU refused a buffer of {what} ({e}): {knobs}")));
        }
        Ok(())
    }
}

pub struct GpuBackend {
    pub(super) device: wgpu::Device,
    pub(super) queue: wgpu::Queue,
    pub(super) adapter: String,
    /// The adapter runs on the CPU (lavapipe, the browser's SwiftShader fallback).
    pub(super) emulated: bool,
    pub(super) opts: GpuOptions,
    /// The linear kernel `opts.linear` resolved for this adapter.
    pub(super) row_per_thread: bool,
    /// `Backend::steps_ahead` for this adapter.
    pub(super) steps_ahead: usize,
    /// The subgroup size the kernels were checked with, when subgroups are in use.
    pub(super) subgroup_size: Option<u32>,
    /// The cooperative matrix kernel multiplies block formats in f16 (`Math::F16`).
    pub(super) f16_math: bool,
    pub(super) max_binding: u64,
    pub(super) pipelines: RefCell<HashMap<Kernel, Rc<(wgpu::ComputePipeline, wgpu::BindGroupLayout)>>>,
    /// Bind groups by (kernel, parameter offset, buffers): the same few hundred recur every
    /// decode step, so after the first step none is created.
    pub(super) bind_groups: RefCell<HashMap<BindGroupKey, wgpu::BindGroup>>,
    /// Bytes of every GPU buffer this backend created (weights, cache, activations).
    pub(super) allocated: std::cell::Cell<u64>,
    pub(super) pool: Rc<RefCell<Pool>>,
    pub(super) pending: RefCell<Pending>,
    pub(super) param_buffer: wgpu::Buffer,
    /// The token ring: `(max_rows + SPARE_CHOICES) * max_rows` u32s written by argmax, read by the next step's
    /// embedding.
    pub(super) token_buffer: wgpu::Buffer,
    /// Beside the token ring, `MAX_WATCH` f32s per slot: the watched logits argmax copies out.
    pub(super) watch_buffer: wgpu::Buffer,
    pub(super) choices: RefCell<Vec<Choice>>,
    /// `0, 1, 2, ...` (`max_rows` of them): the embedding's index table for consecutive ids.
    pub(super) identity: wgpu::Buffer,
    pub(super) tokens_issued: std::cell::Cell<u64>,
    pub(super) readback: RefCell<Option<(wgpu::Buffer, u64)>>,
    /// Errors wgpu reports out of band (validation, out of memory, device lost).
    pub(super) errors: Arc<Mutex<Vec<String>>>,
    /// Why the device was lost, once it is: every later operation fails with `Error::GpuLost`.
    pub(super) lost: Arc<Mutex<Option<String>>>,
    /// Work counted since creation (`Backend::counters`).
    pub(super) counters: std::cell::Cell<Counters>,
    /// Debug mode's outputs, by op name, in order.
    pub(super) trace: RefCell<Vec<(String, Vec<f32>)>>,
}

impl GpuBackend {
    /// Open the best adapter the platform offers, with its maximum limits.
    pub async fn new(opts: GpuOptions) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| Error::Other(format!("no WebGPU/Vulkan adapter available ({e}); use the CPU backend")))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let subgroups = opts.subgroups && adapter.features().contains(wgpu::Features::SUBGROUP);
        let f16 = opts.f16 && adapter.features().contains(wgpu::Features::SHADER_F16);
        let mut features = wgpu::Features::empty();
        features.set(wgpu::Features::SUBGROUP, subgroups);
        features.set(wgpu::Features::SHADER_F16, f16);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("guardreasoner"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Other(format!("could not open the GPU device: {e}")))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        {
            let errors = errors.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut v) = errors.lock() {
                    v.push(e.to_string());
                }
            }));
        }
        let lost = Arc::new(Mutex::new(None));
        {
            let lost = lost.clone();
            device.set_device_lost_callback(move |reason, message| {
                if let Ok(mut l) = lost.lock() {
                    let reason = format!("{reason:?}").to_lowercase();
                    *l = Some(if message.is_empty() { reason } else { format!("{reason}: {message}") });
                }
            });
        }
        let max_binding = (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size);
        let max_binding = opts.max_binding_bytes.map_or(max_binding, |m| m.min(max_binding));
        let param_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: (PARAM_ALIGN * PARAM_SLOTS) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let max_rows = opts.max_rows.max(1);
        let token_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("token ring"),
            size: ((max_rows + SPARE_CHOICES) * max_rows * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let watch_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("watched logits"),
            size: ((max_rows + SPARE_CHOICES) * max_rows * MAX_WATCH * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let choices = (0..max_rows + SPARE_CHOICES)
            .map(|_| Choice {
                staging: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("token readback"),
                    size: (max_rows * (1 + MAX_WATCH) * 4) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                issued: 0,
                rows: 0,
                watched: 0,
                map: None,
                submit: 0,
                index: None,
                values: None,
            })
            .collect();
        let identity = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("identity index"),
            size: (max_rows * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let counting: Vec<u32> = (0..max_rows as u32).collect();
        queue.write_buffer(&identity, 0, bytemuck::cast_slice(&counting));
        let on_cpu = info.device_type == wgpu::DeviceType::Cpu;
        let adapter = match (info.name.is_empty(), info.backend) {
            // Browsers may withhold adapter names; say at least that it is WebGPU, and whether
            // it is the browser's CPU fallback (SwiftShader).
            (true, wgpu::Backend::BrowserWebGpu) if on_cpu => {
                "browser WebGPU fallback adapter, CPU emulation".to_string()
            }
            (true, wgpu::Backend::BrowserWebGpu) => "browser WebGPU adapter".to_string(),
            _ => format!("{} ({:?}, {})", info.name, info.backend, info.driver),
        };
        let row_per_thread = match opts.linear {
            LinearKernel::Auto => on_cpu,
            LinearKernel::Cooperative => false,
            LinearKernel::RowPerThread => true,
        };
        let mut gpu = Self {
            device,
            queue,
            adapter,
            emulated: on_cpu,
            opts,
            row_per_thread,
            // The row-per-thread kernel is for CPU emulations, where f16 is emulated in f32.
            f16_math: f16 && !row_per_thread,
            steps_ahead: if on_cpu { STEPS_AHEAD_ON_CPU } else { STEPS_AHEAD },
            subgroup_size: None,
            max_binding,
            pipelines: RefCell::new(HashMap::new()),
            bind_groups: RefCell::new(HashMap::new()),
            allocated: std::cell::Cell::new(0),
            pool: Rc::new(RefCell::new(Pool { free: HashMap::new() })),
            pending: RefCell::new(Pending { encoder: None, pass: None, params: Vec::new() }),
            counters: std::cell::Cell::new(Counters::default()),
            trace: RefCell::new(Vec::new()),
            param_buffer,
            token_buffer,
            watch_buffer,
            choices: RefCell::new(choices),
            identity,
            tokens_issued: std::cell::Cell::new(0),
            readback: RefCell::new(None),
            errors,
            lost,
        };
        if subgroups {
            gpu.subgroup_size = gpu.probe_subgroups().await?;
        }
        Ok(gpu)
    }

    pub fn adapter_name(&self) -> &str {
        &self.adapter
    }

    /// Whether the adapter is a CPU emulation of a GPU (lavapipe, the browser's SwiftShader
    /// fallback): slower than the CPU backend, so `auto` passes it over.
    pub fn is_emulated(&self) -> bool {
        self.emulated
    }

    /// Run `subgroup_probe.wgsl` once: the subgroup size if every invocation of a workgroup is
    /// lane `i % size` of its subgroup with one power-of-two size (what the subgroup kernels
    /// assume), else None (they are not used).
    pub(super) async fn probe_subgroups(&self) -> Result<Option<u32>> {
        let out = self.create_buffer(&wgpu::BufferDescriptor {
            label: Some("subgroup probe"),
            size: (shared::GROUP * 8) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let pipeline = self.pipeline(Kernel::SubgroupProbe);
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.1,
            entries: &[wgpu::BindGroupEntry { binding: slot::OUT, resource: out.as_entire_binding() }],
        });
        {
            let mut pending = self.pending.borrow_mut();
            let encoder = pending.encoder.get_or_insert_with(|| {
                self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("probe") })
            });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&pipeline.0);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        let bytes = self.read(&out, (shared::GROUP * 8) as u64).await?;
        let words: &[u32] = bytemuck::cast_slice(&bytes);
        let size = words[1];
        let consistent = size.is_power_of_two()
            && (4..=128).contains(&size)
            && words.chunks_exact(2).enumerate().all(|(i, w)| w[1] == size && w[0] == i as u32 % size);
        Ok(consistent.then_some(size))
    }

    /// The subgroup size the matrix kernels use, if they use subgroups.
    pub fn subgroup_size(&self) -> Option<u32> {
        self.subgroup_size
    }

    /// How the kernels add or compare across threads: with subgroups when they are in use.
    pub(super) fn reduce(&self) -> Reduce {
        if self.subgroup_size.is_some() { Reduce::Subgroup } else { Reduce::Workgroup }
    }

    /// Whether the matrix kernels multiply block-format and f16 weights in f16 (`shader-f16`).
    pub fn f16_math(&self) -> bool {
        self.f16_math
    }

    /// The device-lost error once the device is lost, else `otherwise` (a failed readback of a
    /// lost device is reported as the loss, whichever the browser told first).
    pub(super) fn lost_or(&self, otherwise: Error) -> Error {
        match self.lost.lock().ok().and_then(|l| l.clone()) {
            Some(why) => Error::GpuLost(why),
            None => otherwise,
        }
    }

    /// A function that destroys the device, as a driver reset would: for tests of what follows
    /// a lost GPU (the JS API's and the evaluator's recovery), callable while a run holds the
    /// backend. Every later operation fails with `GpuLost`.
    pub fn device_destroyer(&self) -> impl Fn() + 'static {
        let (device, lost) = (self.device.clone(), self.lost.clone());
        move || {
            device.destroy();
            // Natively the lost callback runs at a later poll; make the loss known now.
            if let Ok(mut l) = lost.lock() {
                l.get_or_insert_with(|| "destroyed".into());
            }
        }
    }

    pub(super) fn check_errors(&self) -> Result<()> {
        if let Some(why) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(Error::GpuLost(why));
        }
        let mut errors = self.errors.lock().map_err(|_| Error::Backend("GPU error log poisoned".into()))?;
        if errors.is_empty() {
            return Ok(());
        }
        let all = errors.drain(..).collect::<Vec<_>>().join("; ");
        let hint = if all.contains("memory") || all.contains("Memory") {
            " (not enough GPU memory: try a smaller quantization or the CPU backend)"
        } else {
            ""
        };
        Err(Error::Backend(format!("GPU error: {all}{hint}")))
    }

    /// Bytes of GPU buffers allocated so far.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.get()
    }

    /// Opens the error scopes a model load runs in (`LoadScopes`).
    pub fn load_scopes(&self) -> LoadScopes {
        let memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        LoadScopes { validation, memory }
    }

    /// Test hook: asks for one buffer over the device's size limit, which the device refuses as
    /// it would one it has no memory for, and reports the same way (in a browser, later).
    pub fn request_refused_buffer(&self) {
        let size = (self.device.limits().max_buffer_size / 4 + 1) * 4;
        drop(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("refused on purpose (test hook)"),
            size,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        }));
    }

    pub(super) fn create_buffer(&self, desc: &wgpu::BufferDescriptor) -> wgpu::Buffer {
        self.allocated.set(self.allocated.get() + desc.size);
        self.device.create_buffer(desc)
    }
}

/// Decode steps queued past the token the host is reading: while it reads one, checks it and
/// records the next step, the GPU has this many more to run. Adapters that run on the CPU get
/// one: lavapipe runs a submit on the submitting thread, so steps ahead overlap nothing there and
/// each one past a stop is wasted time; one still keeps the pipeline tested.
pub(super) const STEPS_AHEAD: usize = 2;
pub(super) const STEPS_AHEAD_ON_CPU: usize = 1;
