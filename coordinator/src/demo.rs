//! Synthetic Llama-shaped models and the README's demo: a base and fine-tunes are generated,
//! then merged with AutoMerger's two recipes (SLERP with the `self_attn`/`mlp` gradients and
//! DARE-TIES with density 0.53, weight 0.6).

use rand::{Rng, RngExt, SeedableRng};
use rayon::prelude::*;
use shardmerge_worker::safetensors_io::{Dtype, build_header, encode_from_f32, pt_metadata};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Shape of a synthetic Llama-style model.
#[derive(Debug, Clone, Copy)]
pub struct SynthSpec {
    /// Vocabulary size.
    pub vocab: u64,
    /// Hidden size.
    pub hidden: u64,
    /// MLP intermediate size.
    pub intermediate: u64,
    /// Decoder layers.
    pub layers: u64,
    /// Stored dtype.
    pub dtype: Dtype,
}

impl SynthSpec {
    /// A small model for the demo (about 3.7 M parameters).
    pub const DEMO: SynthSpec = SynthSpec {
        vocab: 2048,
        hidden: 256,
        intermediate: 688,
        layers: 6,
        dtype: Dtype::BF16,
    };

    /// Tensor names and shapes, Llama layout, untied `lm_head`.
    pub fn tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (v, h, i) = (self.vocab, self.hidden, self.intermediate);
        let mut t = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            t.push((format!("{p}.input_layernorm.weight"), vec![h]));
            t.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                t.push((format!("{p}.self_attn.{proj}.weight"), vec![h, h]));
            }
            t.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            t.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            t.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
        t.push(("model.norm.weight".to_string(), vec![h]));
        t.push(("lm_head.weight".to_string(), vec![v, h]));
        t
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": (self.hidden / 64).max(1),
            "num_key_value_heads": (self.hidden / 64).max(1),
            "vocab_size": self.vocab,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-05,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "hidden_act": "silu",
            "torch_dtype": if self.dtype == Dtype::BF16 { "bfloat16" } else { "float32" },
        })
    }
}

/// Why writing synthetic models or running the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The synthetic tensors could not be encoded.
    #[error("encoding synthetic tensors: {0}")]
    Encode(String),
    /// A demo merge failed.
    #[error(transparent)]
    Merge(#[from] crate::MergeError),
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes one synthetic model: `base_seed` fixes the base weights; `noise_seed` (if any) adds
/// `0.02 * N(0, 1)` noise to make a fine-tune of that base.
pub fn write_model(spec: &SynthSpec, dir: &Path, base_seed: u64, noise_seed: Option<u64>) -> Result<(), DemoError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tensors = spec.tensors();
    let entries: Vec<(String, Dtype, Vec<u64>)> = tensors
        .iter()
        .map(|(n, s)| (n.clone(), spec.dtype, s.clone()))
        .collect();
    let header = build_header(&entries, &pt_metadata()).map_err(|e| DemoError::Encode(e.to_string()))?;
    let path = dir.join("model.safetensors");
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .map_err(io_err(&path))?;
    file.set_len(header.file_len).map_err(io_err(&path))?;
    file.write_all_at(&header.bytes, 0).map_err(io_err(&path))?;
    for (ti, (name, shape)) in tensors.iter().enumerate() {
        let n: u64 = shape.iter().product();
        let is_norm = name.ends_with("norm.weight");
        let std = if is_norm { 0.05 } else { 0.02 };
        let mut values = vec![0.0f32; n as usize];
        values.par_chunks_mut(1 << 16).enumerate().for_each(|(ci, chunk)| {
            let mut base = rand::rngs::StdRng::seed_from_u64(base_seed ^ ((ti as u64) << 32) ^ ci as u64);
            let mut noise = noise_seed.map(|s| rand::rngs::StdRng::seed_from_u64(s ^ ((ti as u64) << 32) ^ ci as u64));
            for v in chunk.iter_mut() {
                let b = normal(&mut base) * std + if is_norm { 1.0 } else { 0.0 };
                *v = match noise.as_mut() {
                    Some(r) => b + 0.005 * normal(r),
                    None => b,
                };
            }
        });
        let (_, start, len) = header
            .entries
            .iter()
            .find(|(e, _, _)| e == name)
            .ok_or_else(|| DemoError::Encode(format!("`{name}` is missing from its header")))?;
        let mut bytes = vec![0u8; *len as usize];
        encode_from_f32(spec.dtype, &values, &mut bytes).map_err(|e| DemoError::Encode(e.to_string()))?;
        file.write_all_at(&bytes, *start).map_err(io_err(&path))?;
    }
    let cfg = crate::pyjson::to_string(&spec.config_json(), true) + "\n";
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, cfg).map_err(io_err(&cfg_path))?;
    Ok(())
}

fn normal(r: &mut impl Rng) -> f32 {
    // Box-Muller
    let u1: f32 = r.random::<f32>().max(1e-12);
    let u2: f32 = r.random::<f32>();
    (-2.0f32 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Writes `base`, `finetune-a` and `finetune-b` under `dir`.
pub fn write_family(spec: &SynthSpec, dir: &Path) -> Result<[PathBuf; 3], DemoError> {
    let names = [dir.join("base"), dir.join("finetune-a"), dir.join("finetune-b")];
    write_model(spec, &names[0], 1, None)?;
    write_model(spec, &names[1], 1, Some(2))?;
    write_model(spec, &names[2], 1, Some(3))?;
    Ok(names)
}

/// AutoMerger's SLERP recipe for two models with `layers` layers.
pub fn slerp_recipe(a: &Path, b: &Path, layers: u64) -> String {
    format!(
        "slices:\n  - sources:\n      - model: {a}\n        layer_range: [0, {layers}]\n      - model: {b}\n        layer_range: [0, {layers}]\nmerge_method: slerp\nbase_model: {a}\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n    - filter: mlp\n      value: [1, 0.5, 0.7, 0.3, 0]\n    - value: 0.5\ndtype: bfloat16\n",
        a = a.display(),
        b = b.display()
    )
}

/// AutoMerger's DARE-TIES recipe.
pub fn dare_ties_recipe(a: &Path, b: &Path) -> String {
    format!(
        "models:\n  - model: {a}\n    # no parameters necessary for base model\n  - model: {b}\n    parameters:\n      density: 0.53\n      weight: 0.6\nmerge_method: dare_ties\nbase_model: {a}\nparameters:\n  int8_mask: true\ndtype: bfloat16\n",
        a = a.display(),
        b = b.display()
    )
}

/// The README's demo.
pub fn run(dir: &Path, workers: usize, progress: bool) -> Result<(), DemoError> {
    let spec = SynthSpec::DEMO;
    let models = dir.join("models");
    println!(
        "shardmerge demo: writing synthetic Llama-shaped models ({} layers, hidden {}, vocab {}, bf16) to {}",
        spec.layers,
        spec.hidden,
        spec.vocab,
        models.display()
    );
    let [base, ft_a, _ft_b] = write_family(&spec, &models)?;
    let recipes = [
        ("slerp", slerp_recipe(&base, &ft_a, spec.layers)),
        ("dare-ties", dare_ties_recipe(&base, &ft_a)),
    ];
    for (name, yaml) in recipes {
        let cfg_path = dir.join(format!("{name}.yml"));
        std::fs::write(&cfg_path, &yaml).map_err(io_err(&cfg_path))?;
        let out = dir.join(format!("merged-{name}"));
        let opts = crate::MergeOptions {
            random_seed: Some(42),
            run: crate::RunOptions {
                workers,
                progress,
                ..Default::default()
            },
            ..Default::default()
        };
        let report = crate::merge_file(&cfg_path, &out, &opts)?;
        println!(
            "{name:>9}: merged {} tensors ({:.1} MB) with `{}` in {:.2}s -> {}",
            report.stats.tasks,
            report.stats.bytes_written as f64 / 1e6,
            report.plan.method.name,
            report.stats.elapsed.as_secs_f64(),
            out.display()
        );
        println!("           config: {}", cfg_path.display());
    }
    println!(
        "done. Inspect the outputs, or rerun a merge with: shardmerge merge {}/slerp.yml OUT",
        dir.display()
    );
    Ok(())
}
