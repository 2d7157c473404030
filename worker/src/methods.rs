//! Registry of merge methods: names, input contracts and parameter specifications.
//!
//! The planner reads this table to validate configs and resolve parameters; the task executor
//! reads it to pick a kernel. Adding a method means one kernel file and one entry here.

use crate::kernels::gta::{Consensus, GtaVariant};
use crate::kernels::sparsify::Sparsifier;

/// Which kernel implements a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// Weighted average ([`crate::kernels::linear`]).
    Linear,
    /// Spherical interpolation ([`crate::kernels::slerp`]).
    Slerp,
    /// Task-arithmetic family ([`crate::kernels::gta`]).
    Gta(GtaVariant),
    /// Model Stock ([`crate::kernels::model_stock`]).
    ModelStock,
    /// NearSwap ([`crate::kernels::nearswap`]).
    NearSwap,
    /// NuSLERP ([`crate::kernels::nuslerp`]).
    Nuslerp,
    /// Multi-SLERP ([`crate::kernels::multislerp`]).
    Multislerp,
    /// Passthrough with an optional scale ([`crate::kernels::passthrough`]).
    Passthrough,
    /// Reinforced Agent Merging ([`crate::kernels::ram`]).
    Ram,
    /// RAM+, tensor-local ([`crate::kernels::ram::merge_plus`]); its result is f32.
    RamPlusTl,
    /// SCE ([`crate::kernels::sce`]).
    Sce,
    /// Karcher mean on the hypersphere ([`crate::kernels::karcher`]).
    Karcher,
    /// Arcee Fusion ([`crate::kernels::arcee_fusion`]); its result is f32.
    ArceeFusion,
}

impl MethodKind {
    /// True when the method's result is f32 whatever the working dtype (an f32 factor promotes
    /// it, semantics §3.3), so its tensors are written as f32 unless `out_dtype` is set.
    pub fn promotes_to_f32(self) -> bool {
        matches!(self, MethodKind::RamPlusTl | MethodKind::ArceeFusion)
    }
}

/// How a method treats `base_model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BasePolicy {
    /// A base model must be configured.
    Required,
    /// A configured base is just another input.
    Ignored,
    /// A configured base is the origin of the task vectors; without one the models are used
    /// as they are.
    Optional,
}

/// Declared type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Floating-point number.
    Float,
    /// Boolean.
    Bool,
    /// Integer.
    Int,
}

/// Where a parameter is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamScope {
    /// One value per tensor, evaluated against the output tensor name.
    Shared,
    /// One value per input including the base, evaluated against the input tensor name.
    Input,
    /// One value per non-base input, evaluated against the input tensor name.
    NonBase,
}

/// Default value of a parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamDefault {
    /// No default: the parameter is required.
    Required,
    /// A float default.
    Float(f64),
    /// A boolean default.
    Bool(bool),
    /// An integer default.
    Int(i64),
    /// Optional without a default: absent unless configured.
    Absent,
}

/// One parameter of a method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamSpec {
    /// Name as written in YAML.
    pub name: &'static str,
    /// What values it takes (float, bool, int), as mergekit declares it.
    pub kind: ParamKind,
    /// Whether it has one value per tensor, per input, or per non-base input.
    pub scope: ParamScope,
    /// Default, or required.
    pub default: ParamDefault,
}

/// What happens when an optional weight is missing from some inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionalPolicy {
    /// Continue with the present inputs if the contract still holds.
    Error,
    /// Exactly one present input: output it unchanged (cast only).
    PassthroughSingleton,
    /// Exactly one present input and it is the base: output it unchanged (nearswap).
    PassthroughBaseSingleton,
    /// Fewer than `min_inputs` present: output the base if it is the only one, else skip the
    /// tensor (model_stock).
    BaseOrSkip,
}

/// A registered merge method.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodSpec {
    /// Registry name (`merge_method:` in YAML).
    pub name: &'static str,
    /// Human name for the model card.
    pub pretty_name: &'static str,
    /// Reference for the model card.
    pub reference_url: &'static str,
    /// Which kernel runs it ([`MethodKind`]: one variant a kernel).
    pub kind: MethodKind,
    /// How it treats `base_model`: required, just another input, or optional.
    pub base: BasePolicy,
    /// Minimum number of inputs (including the base).
    pub min_inputs: usize,
    /// Maximum number of inputs (including the base).
    pub max_inputs: Option<usize>,
    /// Minimum and maximum number of non-base inputs, when the method constrains them.
    pub non_base_inputs: Option<(usize, Option<usize>)>,
    /// The parameters it reads, with their types, scopes and defaults.
    pub params: Vec<ParamSpec>,
    /// Optional-weight policy.
    pub optional_policy: OptionalPolicy,
}

impl MethodSpec {
    /// True when the method draws random numbers.
    pub fn is_random(&self) -> bool {
        matches!(
            self.kind,
            MethodKind::Gta(GtaVariant {
                sparsifier: Some(s),
                ..
            }) if s.is_random()
        )
    }

    /// Random words a tensor of `numel` elements consumes regardless of its parameters
    /// (arcee_fusion samples 10^6 importances of larger tensors), else 0.
    pub fn sample_draws(&self, numel: u64) -> u64 {
        match self.kind {
            MethodKind::ArceeFusion if crate::kernels::arcee_fusion::draws(numel) => {
                crate::kernels::arcee_fusion::SAMPLE_SIZE as u64
            }
            _ => 0,
        }
    }

    /// True when a non-base input with this `density` consumes `numel` words of the random
    /// stream (see [`Sparsifier::draws`]); the planner gives such inputs a stream offset.
    pub fn draws(&self, density: f64) -> bool {
        match self.kind {
            MethodKind::Gta(GtaVariant {
                sparsifier: Some(s), ..
            }) => s.draws(density),
            _ => false,
        }
    }
}

const fn p(name: &'static str, kind: ParamKind, scope: ParamScope, default: ParamDefault) -> ParamSpec {
    ParamSpec {
        name,
        kind,
        scope,
        default,
    }
}

fn gta(name: &'static str, pretty: &'static str, url: &'static str, variant: GtaVariant) -> MethodSpec {
    use ParamDefault as D;
    use ParamKind as K;
    use ParamScope as S;
    let mut spec = MethodSpec {
        name,
        pretty_name: pretty,
        reference_url: url,
        kind: MethodKind::Gta(variant),
        base: BasePolicy::Required,
        min_inputs: 1,
        max_inputs: None,
        non_base_inputs: None,
        params: vec![
            p("int8_mask", K::Bool, S::Shared, D::Bool(false)),
            p("normalize", K::Bool, S::Shared, D::Bool(variant.default_normalize)),
            p("rescale", K::Bool, S::Shared, D::Bool(variant.default_rescale)),
            p("lambda", K::Float, S::Shared, D::Float(1.0)),
            p("weight", K::Float, S::NonBase, D::Required),
            p("density", K::Float, S::NonBase, D::Float(1.0)),
        ],
        optional_policy: OptionalPolicy::Error,
    };
    match variant.sparsifier {
        Some(Sparsifier::MagnitudeOutliers) => spec.params.push(p("gamma", K::Float, S::NonBase, D::Float(0.01))),
        Some(Sparsifier::DellaMagprune) => spec.params.push(p("epsilon", K::Float, S::NonBase, D::Float(0.15))),
        _ => {}
    }
    spec
}

/// All registered methods.
pub fn all() -> Vec<MethodSpec> {
    use ParamDefault as D;
    use ParamKind as K;
    use ParamScope as S;
    let sum = Some(Consensus::Sum);
    vec![
        MethodSpec {
            name: "linear",
            pretty_name: "Linear",
            reference_url: "https://arxiv.org/abs/2203.05482",
            kind: MethodKind::Linear,
            base: BasePolicy::Ignored,
            min_inputs: 1,
            max_inputs: None,
            non_base_inputs: None,
            params: vec![
                p("weight", K::Float, S::Input, D::Required),
                p("normalize", K::Bool, S::Shared, D::Bool(true)),
            ],
            optional_policy: OptionalPolicy::Error,
        },
        MethodSpec {
            name: "slerp",
            pretty_name: "SLERP",
            reference_url: "https://en.wikipedia.org/wiki/Slerp",
            kind: MethodKind::Slerp,
            base: BasePolicy::Required,
            min_inputs: 2,
            max_inputs: Some(2),
            non_base_inputs: None,
            params: vec![p("t", K::Float, S::Shared, D::Required)],
            optional_policy: OptionalPolicy::PassthroughSingleton,
        },
        MethodSpec {
            name: "model_stock",
            pretty_name: "Model Stock",
            reference_url: "https://arxiv.org/abs/2403.19522",
            kind: MethodKind::ModelStock,
            base: BasePolicy::Required,
            min_inputs: 3,
            max_inputs: None,
            non_base_inputs: None,
            params: vec![p("filter_wise", K::Bool, S::Shared, D::Bool(false))],
            optional_policy: OptionalPolicy::BaseOrSkip,
        },
        MethodSpec {
            name: "nearswap",
            pretty_name: "NearSwap",
            reference_url: "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
            kind: MethodKind::NearSwap,
            base: BasePolicy::Required,
            min_inputs: 2,
            max_inputs: Some(2),
            non_base_inputs: None,
            params: vec![p("t", K::Float, S::Shared, D::Required)],
            optional_policy: OptionalPolicy::PassthroughBaseSingleton,
        },
        MethodSpec {
            name: "nuslerp",
            pretty_name: "NuSLERP",
            reference_url: "",
            kind: MethodKind::Nuslerp,
            base: BasePolicy::Optional,
            min_inputs: 2,
            max_inputs: Some(3),
            non_base_inputs: Some((2, Some(2))),
            params: vec![
                p("weight", K::Float, S::NonBase, D::Required),
                p("nuslerp_row_wise", K::Bool, S::Shared, D::Bool(false)),
                p("nuslerp_flatten", K::Bool, S::Shared, D::Bool(true)),
            ],
            optional_policy: OptionalPolicy::PassthroughSingleton,
        },
        MethodSpec {
            name: "multislerp",
            pretty_name: "Multi-SLERP",
            reference_url: "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
            kind: MethodKind::Multislerp,
            base: BasePolicy::Optional,
            min_inputs: 1,
            max_inputs: None,
            non_base_inputs: Some((1, None)),
            params: vec![
                p("weight", K::Float, S::NonBase, D::Required),
                p("normalize_weights", K::Bool, S::Shared, D::Bool(true)),
                p("eps", K::Float, S::Shared, D::Float(1e-8)),
            ],
            optional_policy: OptionalPolicy::Error,
        },
        MethodSpec {
            name: "passthrough",
            pretty_name: "Passthrough",
            reference_url: "",
            kind: MethodKind::Passthrough,
            base: BasePolicy::Ignored,
            min_inputs: 1,
            max_inputs: Some(1),
            non_base_inputs: None,
            params: vec![p("scale", K::Float, S::Input, D::Absent)],
            optional_policy: OptionalPolicy::Error,
        },
        MethodSpec {
            name: "ram",
            pretty_name: "Reinforced Agent Merging",
            reference_url: "https://arxiv.org/abs/2601.13572",
            kind: MethodKind::Ram,
            base: BasePolicy::Required,
            min_inputs: 1,
            max_inputs: None,
            non_base_inputs: None,
            params: vec![p("epsilon", K::Float, S::Shared, D::Float(1e-5))],
            optional_policy: OptionalPolicy::Error,
        },
        MethodSpec {
            name: "ramplus_tl",
            pretty_name: "Reinforced Agent Merging Plus (Tensor-Local)",
            reference_url: "https://arxiv.org/abs/2601.13572",
            kind: MethodKind::RamPlusTl,
            base: BasePolicy::Required,
            min_inputs: 1,
            max_inputs: None,
            non_base_inputs: None,
            params: vec![
                p("r", K::Float, S::Shared, D::Float(0.1)),
                p("alpha", K::Float, S::Shared, D::Float(0.2)),
                p("epsilon", K::Float, S::Shared, D::Float(1e-5)),
            ],
            optional_policy: OptionalPolicy::Error,
        },
        MethodSpec {
            name: "sce",
            pretty_name: "SCE",
            reference_url: "https://arxiv.org/abs/2408.07990",
            kind: MethodKind::Sce,
            base: BasePolicy::Required,
            min_inputs: 1,
            max_inputs: None,
            non_base_inputs: None,
            params: vec![
                p("int8_mask", K::Bool, S::Shared, D::Bool(false)),
                p("select_topk", K::Float, S::Shared, D::Float(1.0)),
            ],
            optional_policy: OptionalPolicy::Error,
        },
        MethodSpec {
            name: "karcher",
            pretty_name: "Karcher Mean",
            reference_url: "https://arxiv.org/abs/2603.04972",
            kind: MethodKind::Karcher,
            base: BasePolicy::Ignored,
            min_inputs: 1,
            max_inputs: None,
            non_base_inputs: None,
            params: vec![
                p("max_iter", K::Int, S::Shared, D::Int(10)),
                p("tol", K::Float, S::Shared, D::Float(1e-5)),
            ],
            optional_policy: OptionalPolicy::Error,
        },
        MethodSpec {
            name: "arcee_fusion",
            pretty_name: "Arcee Fusion",
            reference_url: "https://arcee.ai",
            kind: MethodKind::ArceeFusion,
            base: BasePolicy::Required,
            min_inputs: 2,
            max_inputs: Some(2),
            non_base_inputs: None,
            params: vec![],
            optional_policy: OptionalPolicy::PassthroughSingleton,
        },
        gta(
            "task_arithmetic",
            "Task Arithmetic",
            "https://arxiv.org/abs/2212.04089",
            GtaVariant {
                consensus: None,
                sparsifier: None,
                default_normalize: false,
                default_rescale: false,
            },
        ),
        gta(
            "ties",
            "TIES",
            "https://arxiv.org/abs/2306.01708",
            GtaVariant {
                consensus: sum,
                sparsifier: Some(Sparsifier::Magnitude),
                default_normalize: true,
                default_rescale: false,
            },
        ),
        gta(
            "dare_ties",
            "DARE TIES",
            "https://arxiv.org/abs/2311.03099",
            GtaVariant {
                consensus: sum,
                sparsifier: Some(Sparsifier::Random),
                default_normalize: false,
                default_rescale: true,
            },
        ),
        gta(
            "dare_linear",
            "Linear DARE",
            "https://arxiv.org/abs/2311.03099",
            GtaVariant {
                consensus: None,
                sparsifier: Some(Sparsifier::Random),
                default_normalize: false,
                default_rescale: true,
            },
        ),
        gta(
            "breadcrumbs",
            "Model Breadcrumbs",
            "https://arxiv.org/abs/2312.06795",
            GtaVariant {
                consensus: None,
                sparsifier: Some(Sparsifier::MagnitudeOutliers),
                default_normalize: false,
                default_rescale: false,
            },
        ),
        gta(
            "breadcrumbs_ties",
            "Model Breadcrumbs with TIES",
            "https://arxiv.org/abs/2312.06795",
            GtaVariant {
                consensus: sum,
                sparsifier: Some(Sparsifier::MagnitudeOutliers),
                default_normalize: false,
                default_rescale: false,
            },
        ),
        gta(
            "della",
            "DELLA",
            "https://arxiv.org/abs/2406.11617",
            GtaVariant {
                consensus: sum,
                sparsifier: Some(Sparsifier::DellaMagprune),
                default_normalize: true,
                default_rescale: true,
            },
        ),
        gta(
            "della_linear",
            "Linear DELLA",
            "https://arxiv.org/abs/2406.11617",
            GtaVariant {
                consensus: None,
                sparsifier: Some(Sparsifier::DellaMagprune),
                default_normalize: false,
                default_rescale: true,
            },
        ),
    ]
}

/// Looks a method up by registry name.
pub fn lookup(name: &str) -> Option<MethodSpec> {
    all().into_iter().find(|m| m.name == name)
}

/// Names of all registered methods, for error messages.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|m| m.name).collect()
}

#[cfg(test)]
mod tests;
