//! The kernels and their pipelines: which WGSL variant a kernel is (weight format, activation
//! layout, fusion, reduction, arithmetic), its source assembled from the `.wgsl` files with the
//! shared constants on top, and the compute pipeline built for it once.

use super::device::GpuBackend;
use super::weights::WeightFormat;
use std::rc::Rc;

/// How the matrix kernels read activations: as vec4s when the width is a multiple of 4, else as
/// scalars (linear_common.wgsl uses `x4`). On lavapipe the scalar reads halve decode speed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Activations {
    Vec4,
    Scalar,
}

impl Activations {
    pub(super) fn of_width(cols: usize) -> Self {
        if cols.is_multiple_of(4) { Activations::Vec4 } else { Activations::Scalar }
    }

    pub(super) fn wgsl(self) -> &'static str {
        match self {
            Activations::Vec4 => {
                include_str!("variants/x_vec4.wgsl")
            }
            Activations::Scalar => {
                include_str!("variants/x_scalar.wgsl")
            }
        }
    }

    /// The RMSNorm gain at `slot::GAIN`, viewed as `x` is.
    pub(super) fn gain_wgsl(self) -> &'static str {
        match self {
            Activations::Vec4 => {
                include_str!("variants/gain_vec4.wgsl")
            }
            Activations::Scalar => {
                include_str!("variants/gain_scalar.wgsl")
            }
        }
    }
}

/// How the cooperative matrix kernel adds its lanes' sums (linear.wgsl's `row_total`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Reduce {
    /// A tree in workgroup memory: five barriers per sum.
    Workgroup,
    /// Shuffles within subgroups, then one exchange in workgroup memory: two barriers.
    Subgroup,
}

impl Reduce {
    /// `source` with its placeholders for the subgroup size filled in: `SUBGROUP_ARGS` (the
    /// entry point's builtin), `SUBGROUP_PARAM` (a function's parameter) and `SUBGROUP_PASS`
    /// (passing it on); empty without subgroups.
    pub(super) fn fill(self, source: &str) -> String {
        let subgroup = self == Reduce::Subgroup;
        [
            ("SUBGROUP_ARGS", ", @builtin(subgroup_size) sg: u32"),
            ("SUBGROUP_PARAM", ", sg: u32"),
            ("SUBGROUP_PASS", ", sg"),
        ]
        .iter()
        .fold(source.to_string(), |src, (name, text)| src.replace(name, if subgroup { text } else { "" }))
    }

    /// linear.wgsl's `row_total`.
    pub(super) fn row_total(self) -> &'static str {
        match self {
            Reduce::Workgroup => {
                include_str!("variants/row_total_workgroup.wgsl")
            }
            Reduce::Subgroup => {
                include_str!("variants/row_total_subgroup.wgsl")
            }
        }
    }
}

/// The arithmetic of the cooperative matrix kernel's products (linear_common.wgsl's `tile_dot`;
/// ARCHITECTURE.md, "f16 math").
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Math {
    /// Weights dequantized and multiplied in f32: the f32 bound of the CPU.
    F32,
    /// With `shader-f16`, for block formats and f16 weights: a group of four weights dequantized
    /// in f16 and dotted with the activations rounded to f16, the group's sum added in f32.
    F16,
}

impl Math {
    /// `tile_dot` for this arithmetic, and for F16 the format's `load4h` (the f16 view of
    /// `load4`).
    pub(super) fn wgsl(self, format: WeightFormat) -> String {
        match self {
            Math::F32 => include_str!("dot_f32.wgsl").to_string(),
            Math::F16 => {
                let load4h = match format {
                    WeightFormat::F32 => "",
                    WeightFormat::F16 => {
                        include_str!("variants/load4h_f16.wgsl")
                    }
                    WeightFormat::Q8 => {
                        include_str!("variants/load4h_q8.wgsl")
                    }
                    WeightFormat::Q4 => {
                        include_str!("variants/load4h_q4.wgsl")
                    }
                    WeightFormat::Q4Sym => {
                        include_str!("variants/load4h_q4s.wgsl")
                    }
                };
                format!("{load4h}{}", include_str!("dot_f16.wgsl"))
            }
        }
    }
}

impl Reduce {
    /// attention_common.wgsl's `block_max_of`.
    pub(super) fn block_max_of(self) -> &'static str {
        match self {
            Reduce::Workgroup => {
                include_str!("variants/block_max_workgroup.wgsl")
            }
            Reduce::Subgroup => {
                include_str!("variants/block_max_subgroup.wgsl")
            }
        }
    }

    /// An attention kernel (`main`) with attention_common.wgsl and `block_max_of`.
    pub(super) fn attention_source(self, main: &str) -> String {
        self.fill(&format!("{}\n{}\n{main}", include_str!("attention_common.wgsl"), self.block_max_of()))
    }
}

/// What a matrix kernel fuses around the product (linear_common.wgsl): the RMSNorm of its input,
/// the residual add, SwiGLU over paired gate/up rows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub(super) struct Fusion {
    pub(super) norm: bool,
    pub(super) residual: bool,
    pub(super) paired: bool,
}

impl Fusion {
    /// The constants and bindings linear_common.wgsl expects for this variant.
    pub(super) fn wgsl(self, x: Activations) -> String {
        let mut src = format!(
            "const NORM: bool = {};\nconst RESIDUAL: bool = {};\nconst PAIRED: bool = {};\n{}",
            self.norm,
            self.residual,
            self.paired,
            x.wgsl()
        );
        src.push_str(if self.norm { x.gain_wgsl() } else { include_str!("variants/gain_none.wgsl") });
        src.push_str(if self.residual {
            include_str!("variants/residual.wgsl")
        } else {
            include_str!("variants/residual_none.wgsl")
        });
        src
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Kernel {
    Linear(WeightFormat, Activations, Fusion, Reduce, Math),
    LinearRows(WeightFormat, Activations, Fusion),
    Embed(WeightFormat),
    RmsNorm,
    Rope,
    RopeAppend,
    Attention(Reduce),
    AttentionPartial(Reduce),
    AttentionCombine,
    Swiglu,
    Add,
    CopyRows,
    KvAppend,
    CacheCopy,
    Argmax,
    SubgroupProbe,
}

impl Kernel {
    /// The shader: the shared constants, then the kernel's own source.
    pub(super) fn source(self) -> String {
        // `enable` directives come before any declaration.
        let enable = if matches!(self, Kernel::Linear(.., Math::F16)) { "enable f16;\n" } else { "" };
        format!("{enable}{}\n{}", shared_wgsl(), self.own_source())
    }

    pub(super) fn own_source(self) -> String {
        let fmt = |f: WeightFormat| match f {
            WeightFormat::F32 => include_str!("fmt_f32.wgsl"),
            WeightFormat::F16 => include_str!("fmt_f16.wgsl"),
            WeightFormat::Q8 => include_str!("fmt_q8.wgsl"),
            WeightFormat::Q4 => include_str!("fmt_q4.wgsl"),
            WeightFormat::Q4Sym => include_str!("fmt_q4s.wgsl"),
        };
        match self {
            Kernel::Linear(f, x, fusion, reduce, math) => reduce.fill(&format!(
                "{}\n{}\n{}\n{}\n{}\n{}",
                fmt(f),
                fusion.wgsl(x),
                include_str!("linear_common.wgsl"),
                math.wgsl(f),
                include_str!("linear.wgsl"),
                reduce.row_total()
            )),
            Kernel::LinearRows(f, x, fusion) => format!(
                "{}\n{}\n{}\n{}\n{}",
                fmt(f),
                fusion.wgsl(x),
                include_str!("linear_common.wgsl"),
                Math::F32.wgsl(f),
                include_str!("linear_rows.wgsl")
            ),
            Kernel::Embed(f) => format!("{}\n{}", fmt(f), include_str!("embed.wgsl")),
            Kernel::RmsNorm => include_str!("rms_norm.wgsl").into(),
            Kernel::Rope => include_str!("rope.wgsl").into(),
            Kernel::RopeAppend => include_str!("rope_append.wgsl").into(),
            Kernel::Attention(reduce) => reduce.attention_source(include_str!("attention.wgsl")),
            Kernel::AttentionPartial(reduce) => reduce.attention_source(include_str!("attention_partial.wgsl")),
            Kernel::AttentionCombine => include_str!("attention_combine.wgsl").into(),
            Kernel::Swiglu | Kernel::Add | Kernel::CopyRows => include_str!("elementwise.wgsl").into(),
            Kernel::KvAppend => include_str!("kv_append.wgsl").into(),
            Kernel::CacheCopy => include_str!("cache_copy.wgsl").into(),
            Kernel::Argmax => include_str!("argmax.wgsl").into(),
            Kernel::SubgroupProbe => include_str!("subgroup_probe.wgsl").into(),
        }
    }
    pub(super) fn entry(self) -> &'static str {
        match self {
            Kernel::Swiglu => "swiglu",
            Kernel::Add => "add",
            Kernel::CopyRows => "copy",
            _ => "main",
        }
    }
}

/// Sizes the Rust side and the shaders must agree on, written once here and put at the top of
/// every shader (`shared_wgsl`).
pub(super) mod shared {
    /// Threads per workgroup of the one-dimensional kernels (elementwise, rope, K/V append,
    /// RMSNorm, argmax).
    pub const GROUP: usize = 256;
    /// Threads per workgroup of the embedding lookup (each copies 4 values at a time).
    pub const EMBED_GROUP: usize = 64;
    /// linear.wgsl: rows per workgroup, and threads sharing a row.
    pub const ROWS: usize = 8;
    pub const LANES: usize = 32;
    /// linear_rows.wgsl: rows (threads) per workgroup.
    pub const ROWS_PER_THREAD_GROUP: usize = 64;
    /// Tokens per tile of the matrix kernels (vec4 sums: not a free choice).
    pub const TILE: usize = 4;
    /// Attention: keys per block (threads per workgroup), keys per split-decode chunk, and the
    /// largest head the workgroup arrays hold.
    pub const BLOCK: usize = 64;
    pub const CHUNK: usize = 256;
    pub const MAX_HEAD_DIM: usize = 256;
}

/// Bind slots, named once: Rust binds each buffer to its slot by these names (`dispatch`), and
/// every shader declares its bindings with them (`@binding(SLOT_X)`, injected with `shared`). A
/// name keeps one number in every kernel, so a kernel that declared two names on one slot, or
/// Rust and WGSL that disagreed on a number, could not be written; with `layout: None` the
/// pipeline's layout comes from the shader, so a mismatch would otherwise show only on a device.
pub(super) mod slot {
    /// Every kernel's parameters (a uniform).
    pub const PARAMS: u32 = 0;
    /// The main input: activations, token ids, or split attention's partial sums.
    pub const X: u32 = 1;
    /// The main output.
    pub const OUT: u32 = 2;
    /// A second input (elementwise `b`, SwiGLU's up, K/V append's values).
    pub const Y: u32 = 3;
    /// A matrix part's blocks, block scales and block offsets (`fmt_*.wgsl`).
    pub const W_DATA: u32 = 4;
    pub const W_SCALES: u32 = 5;
    pub const W_MINS: u32 = 6;
    /// An RMSNorm gain.
    pub const GAIN: u32 = 7;
    /// A residual added to a product.
    pub const RESIDUAL: u32 = 8;
    /// The embedding lookup's row index.
    pub const INDEX: u32 = 9;
    /// A layer's K and V cache.
    pub const K_CACHE: u32 = 10;
    pub const V_CACHE: u32 = 11;
    /// The forward pass's row table (cache row and position per row).
    pub const ROWS: u32 = 12;
    /// The rope tables.
    pub const COS: u32 = 13;
    pub const SIN: u32 = 14;
    /// Argmax's copy of the watched logits.
    pub const WATCHED: u32 = 15;

    pub const ALL: [(&str, u32); 16] = [
        ("PARAMS", PARAMS),
        ("X", X),
        ("OUT", OUT),
        ("Y", Y),
        ("W_DATA", W_DATA),
        ("W_SCALES", W_SCALES),
        ("W_MINS", W_MINS),
        ("GAIN", GAIN),
        ("RESIDUAL", RESIDUAL),
        ("INDEX", INDEX),
        ("K_CACHE", K_CACHE),
        ("V_CACHE", V_CACHE),
        ("ROWS", ROWS),
        ("COS", COS),
        ("SIN", SIN),
        ("WATCHED", WATCHED),
    ];
}

/// `shared` and `slot` as WGSL constants.
pub(super) fn shared_wgsl() -> String {
    use shared::*;
    [
        ("GROUP", GROUP),
        ("EMBED_GROUP", EMBED_GROUP),
        ("ROWS", ROWS),
        ("LANES", LANES),
        ("ROWS_PER_THREAD_GROUP", ROWS_PER_THREAD_GROUP),
        ("BLOCK", BLOCK),
        ("CHUNK", CHUNK),
        ("MAX_HEAD_DIM", MAX_HEAD_DIM),
        ("TILE", TILE),
        ("MAX_WATCH", crate::backend::MAX_WATCH),
    ]
    .iter()
    .map(|(name, value)| format!("const {name}: u32 = {value}u;\n"))
    .chain(slot::ALL.iter().map(|(name, value)| format!("const SLOT_{name}: u32 = {value}u;\n")))
    .collect()
}

impl GpuBackend {
    pub(super) fn pipeline(&self, kernel: Kernel) -> Rc<(wgpu::ComputePipeline, wgpu::BindGroupLayout)> {
        if let Some(p) = self.pipelines.borrow().get(&kernel) {
            return p.clone();
        }
        let label = format!("{kernel:?}");
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: None,
            module: &module,
            entry_point: Some(kernel.entry()),
            compilation_options: Default::default(),
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        let pipeline = Rc::new((pipeline, layout));
        self.pipelines.borrow_mut().insert(kernel, pipeline.clone());
        pipeline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Invocations per workgroup every adapter offers (WebGPU's minimum; SwiftShader's limit).
    const MIN_INVOCATIONS: u32 = 256;

    /// Every kernel `GpuBackend` can build: each weight format, activation layout, fusion,
    /// reduction and arithmetic of the matrix kernels (f16 math only for formats that are not
    /// f32, as `linear` chooses), and every other kernel.
    fn every_kernel() -> Vec<Kernel> {
        use WeightFormat::*;
        let formats = [F32, F16, Q8, Q4, Q4Sym];
        let layouts = [Activations::Vec4, Activations::Scalar];
        let reduces = [Reduce::Workgroup, Reduce::Subgroup];
        let fusions: Vec<Fusion> =
            (0..8).map(|bits| Fusion { norm: bits & 1 != 0, residual: bits & 2 != 0, paired: bits & 4 != 0 }).collect();
        let mut kernels = Vec::new();
        for f in formats {
            kernels.push(Kernel::Embed(f));
            for x in layouts {
                for &fusion in &fusions {
                    kernels.push(Kernel::LinearRows(f, x, fusion));
                    for reduce in reduces {
                        kernels.push(Kernel::Linear(f, x, fusion, reduce, Math::F32));
                        if f != F32 {
                            kernels.push(Kernel::Linear(f, x, fusion, reduce, Math::F16));
                        }
                    }
                }
            }
        }
        for reduce in reduces {
            kernels.extend([Kernel::Attention(reduce), Kernel::AttentionPartial(reduce)]);
        }
        kernels.extend([
            Kernel::RmsNorm,
            Kernel::Rope,
            Kernel::RopeAppend,
            Kernel::AttentionCombine,
            Kernel::Swiglu,
            Kernel::Add,
            Kernel::CopyRows,
            Kernel::KvAppend,
            Kernel::CacheCopy,
            Kernel::Argmax,
            Kernel::SubgroupProbe,
        ]);
        kernels
    }

    /// What a kernel needs of the adapter beyond WebGPU's baseline: `shader-f16` for f16 math,
    /// subgroups for the subgroup reductions and the probe. Everything else must validate
    /// without either (the common minimum: SwiftShader in Chromium has neither).
    fn capabilities(kernel: Kernel) -> naga::valid::Capabilities {
        use naga::valid::Capabilities;
        // pack2x16float/unpack2x16float are core WebGPU: wgpu grants this to every compliant
        // adapter (its downlevel flag SHADER_F16_IN_F32).
        let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        if matches!(kernel, Kernel::Linear(.., Math::F16)) {
            caps |= Capabilities::SHADER_FLOAT16;
        }
        let subgroups = matches!(
            kernel,
            Kernel::Linear(_, _, _, Reduce::Subgroup, _)
                | Kernel::Attention(Reduce::Subgroup)
                | Kernel::AttentionPartial(Reduce::Subgroup)
                | Kernel::SubgroupProbe
        );
        if subgroups {
            caps |= Capabilities::SUBGROUP;
        }
        caps
    }

    /// Every WGSL variant the backend can build parses and validates with naga (wgpu's own shader
    /// compiler) under only the capabilities it asks the adapter for, has its entry point, and
    /// fits the common minimum of invocations per workgroup: a broken shader fails here, without
    /// a GPU or an emulator.
    #[test]
    fn every_kernel_variant_is_valid_wgsl_at_the_common_minimum() {
        let kernels = every_kernel();
        assert!(kernels.len() >= 388, "{} variants", kernels.len());
        for kernel in kernels {
            let source = kernel.source();
            let module = naga::front::wgsl::parse_str(&source)
                .unwrap_or_else(|e| panic!("{kernel:?} does not parse:\n{}", e.emit_to_string(&source)));
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities(kernel))
                .validate(&module)
                .unwrap_or_else(|e| panic!("{kernel:?} does not validate:\n{}", e.emit_to_string(&source)));
            let entry = module.entry_points.iter().find(|e| e.name == kernel.entry());
            let entry = entry.unwrap_or_else(|| panic!("{kernel:?} has no entry point `{}`", kernel.entry()));
            let invocations: u32 = entry.workgroup_size.iter().product();
            assert!(invocations <= MIN_INVOCATIONS, "{kernel:?}: {invocations} invocations per workgroup");
        }
    }
}
