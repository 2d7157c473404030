//! Chunked equals whole, on tensors large enough for several statistics chunks: more than one
//! of torch's 2^20-element SLERP blocks, both of its thread parts and several cascade granules
//! (DARE), and histogram passes over many chunks (TIES, breadcrumbs), for bf16 and f32, with chunks run in
//! a shuffled order.

use super::*;
use crate::error::TaskError;
use crate::execute::{InputBytes, TaskIo, execute_task};
use crate::kernels::precision::encode_bf16;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use shardmerge_proto::v1::{ParamValue, TaskInput, TensorDestination, TensorSource, param_value};
use std::collections::HashMap;
use std::sync::Mutex;

/// Files in memory.
#[derive(Default)]
struct MemIo {
    files: HashMap<String, Vec<u8>>,
    out: Mutex<Vec<u8>>,
}

impl TaskIo for MemIo {
    fn read(&self, src: &TensorSource) -> Result<InputBytes, TaskError> {
        let f = &self.files[&src.uri];
        Ok(InputBytes::Owned(
            f[src.offset as usize..(src.offset + src.length) as usize].to_vec(),
        ))
    }

    fn write(&self, _uri: &str, offset: u64, bytes: &[u8], _tensor: &str) -> Result<(), TaskError> {
        let mut out = self.out.lock().unwrap();
        out[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
}

fn num(v: f64) -> ParamValue {
    ParamValue {
        kind: Some(param_value::Kind::Float(v)),
    }
}

fn flag(v: bool) -> ParamValue {
    ParamValue {
        kind: Some(param_value::Kind::Bool(v)),
    }
}

/// Values with shared structure (so SLERP's dot is not ~0) and many exact ties once rounded.
/// `base + k / step` for random `k` in -64..64: exact in every dtype when `step` is 256 (the
/// base) or 4096 (f16 deltas small enough that their L1 sums stay finite in f16).
fn values(n: usize, seed: u64, base: &[f32], step: f32) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let b = base.get(i).copied().unwrap_or(0.0);
            b + (rng.random_range(-64i32..64) as f32) / step
        })
        .collect()
}

fn encode(dtype: DType, v: &[f32]) -> Vec<u8> {
    match dtype {
        DType::Bf16 => {
            let mut out = vec![0u8; v.len() * 2];
            encode_bf16(v, &mut out);
            out
        }
        DType::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// A whole-tensor task of `method` over a base and two fine-tunes of `n` elements.
fn setup(method: &str, dtype: DType, n: usize) -> (MergeTask, MemIo) {
    // `ties_rescale`: TIES with `rescale: true`; `*_rows`: the method over rows of 2048.
    // `*_cols`: nuslerp over rows of 2048 with `nuslerp_row_wise` (vectors along dim 0).
    let cols = method.ends_with("_cols");
    let method = method.trim_end_matches("_cols");
    let rows = method.ends_with("_rows") || cols;
    let all = method.ends_with("_all");
    // `*_nobase`: every input is a model (multislerp of three).
    let nobase = method.ends_with("_nobase");
    let method = method.trim_end_matches("_all").trim_end_matches("_nobase");
    // `*_small_rows`: fewer than 10^6 elements (arcee_fusion without sampling).
    let method = method.replace("_small", "");
    let method = method.as_str();
    let (method, rescale) = match method {
        "ties_rescale" => ("ties", true),
        "breadcrumbs_ties_rescale" => ("breadcrumbs_ties", true),
        m => (m.trim_end_matches("_rows"), m == "dare_ties" || m == "della"),
    };
    // DELLA ranks along dim 1: rows of 2048 (della_linear), or blocks of 1024 x 2 (della).
    let shape = match method {
        "della" => vec![(n / 2048) as u64, 1024, 2],
        "della_linear" => vec![(n / 2048) as u64, 2048],
        _ if rows => vec![(n / 2048) as u64, 2048],
        _ => vec![n as u64],
    };
    let size = if dtype == DType::F32 { 4 } else { 2 };
    let step = if dtype == DType::F16 { 4096.0 } else { 256.0 };
    let base = values(n, 1, &[], 256.0);
    let mut io = MemIo::default();
    let mut inputs = Vec::new();
    let count = if method == "slerp" || method == "arcee_fusion" {
        2
    } else {
        3
    };
    for m in 0..count {
        let v = if m == 0 {
            base.clone()
        } else {
            values(n, 10 + m as u64, &base, step)
        };
        let uri = format!("mem://{m}");
        io.files.insert(uri.clone(), encode(dtype, &v));
        let mut params = HashMap::new();
        params.insert("weight".to_string(), num(if m == 1 { 0.6 } else { 0.4 }));
        params.insert("density".to_string(), num(if m == 1 { 0.53 } else { 0.3 }));
        params.insert("epsilon".to_string(), num(0.2));
        params.insert("gamma".to_string(), num(0.05));
        inputs.push(TaskInput {
            model_index: m as u32,
            is_base: m == 0 && !nobase,
            source: Some(TensorSource {
                uri,
                offset: 0,
                length: (n * size) as u64,
                dtype: dtype as i32,
                shape: shape.clone(),
                ..Default::default()
            }),
            params,
            rng_offset: (m > 0).then(|| (m as u64 - 1) * n as u64),
            ..Default::default()
        });
    }
    let mut shared = HashMap::new();
    shared.insert("t".to_string(), num(0.3));
    shared.insert("lambda".to_string(), num(1.0));
    shared.insert("normalize".to_string(), flag(method == "ties"));
    shared.insert("rescale".to_string(), flag(rescale));
    shared.insert("filter_wise".to_string(), flag(rows));
    shared.insert("nuslerp_flatten".to_string(), flag(!rows));
    shared.insert("nuslerp_row_wise".to_string(), flag(cols));
    shared.insert("epsilon".to_string(), num(0.01));
    shared.insert("r".to_string(), num(0.1));
    shared.insert("alpha".to_string(), num(0.2));
    shared.insert("normalize_weights".to_string(), flag(true));
    shared.insert("eps".to_string(), num(1e-8));
    shared.insert("max_iter".to_string(), num(10.0));
    shared.insert("tol".to_string(), num(1e-5));
    // `sce_all`: sce without its top-k selection.
    shared.insert("select_topk".to_string(), num(if all { 1.0 } else { 0.6 }));
    *io.out.get_mut().unwrap() = vec![0u8; n * size];
    let task = MergeTask {
        tensor: "t".into(),
        method: method.into(),
        working_dtype: dtype as i32,
        inputs,
        shared_params: shared,
        output: Some(TensorDestination {
            uri: "mem://out".into(),
            offset: 0,
            length: (n * size) as u64,
            dtype: dtype as i32,
            shape,
            shard_index: 0,
        }),
        random_seed: Some(7),
        numel: n as u64,
        ..Default::default()
    };
    (task, io)
}

/// Runs `task` as chunk tasks of `chunk` elements, each pass's chunks in a shuffled order.
fn run_chunked(task: &MergeTask, io: &MemIo, chunk: u64, seed: u64) -> Vec<u8> {
    let plan = plan(task, chunk)
        .unwrap()
        .unwrap_or_else(|| panic!("{} splits in chunks of {chunk}", task.method));
    let passes = plan.passes;
    let size = task.output.as_ref().unwrap().length / task.numel;
    let mk = |r: &Range<u64>, pass: u32, index: usize, count: usize, stats: Option<CombinedStats>| MergeTask {
        numel: r.end - r.start,
        output: (pass == 0).then(|| TensorDestination {
            offset: r.start * size,
            length: (r.end - r.start) * size,
            ..task.output.clone().unwrap()
        }),
        chunk: Some(ChunkInfo {
            group: 0,
            start: r.start,
            len: r.end - r.start,
            pass,
            passes,
            index: index as u32,
            count: count as u32,
            stats,
            tensor_numel: task.numel,
        }),
        ..task.clone()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut received: Option<Vec<CombinedStats>> = None;
    for pass in 1..=passes {
        let ranges = plan.pass_ranges(pass);
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        order.shuffle(&mut rng);
        let mut results = vec![None; ranges.len()];
        for i in order {
            let st = received.as_ref().map(|r| r[i].clone());
            let t = mk(&ranges[i], pass, i, ranges.len(), st);
            results[i] = execute_task(&t, io).unwrap().stats;
        }
        let results: Vec<ChunkStats> = results.into_iter().map(Option::unwrap).collect();
        let partials: Vec<combine::Partial<'_>> = ranges.iter().cloned().zip(&results).collect();
        // The runtime folds with any task of the tensor (not necessarily one of this pass).
        let template = mk(&plan.apply[0], 0, 0, plan.apply.len(), None);
        let prev = received.as_deref();
        let next = if pass == passes {
            plan.apply.len()
        } else {
            plan.pass_ranges(pass + 1).len()
        };
        received = Some(combine(&template, pass, &partials, prev, next).unwrap());
    }
    let mut order: Vec<usize> = (0..plan.apply.len()).collect();
    order.shuffle(&mut rng);
    for i in order {
        let st = received.as_ref().map(|r| r[i].clone());
        execute_task(&mk(&plan.apply[i], 0, i, plan.apply.len(), st), io).unwrap();
    }
    io.out.lock().unwrap().clone()
}

#[test]
fn chunked_pipelines_equal_the_whole_kernel_over_many_statistics_chunks() {
    for (method, pipeline) in [
        ("slerp", Pipeline::Slerp),
        ("dare_ties", Pipeline::RandomRescale),
        ("ties", Pipeline::Magnitude),
        ("ties_rescale", Pipeline::MagnitudeRescale),
        ("breadcrumbs", Pipeline::Magnitude),
        ("breadcrumbs_ties_rescale", Pipeline::MagnitudeRescale),
        ("sce", Pipeline::Sce),
        ("sce_all", Pipeline::Sce),
        ("ramplus_tl", Pipeline::RamPlus),
        ("linear", Pipeline::Elementwise),
        ("della", Pipeline::RankedRescale),
        ("della_linear", Pipeline::Ranked),
        ("model_stock", Pipeline::Chain),
        ("nuslerp", Pipeline::NuslerpChain),
        ("multislerp", Pipeline::Multislerp),
        ("multislerp_nobase", Pipeline::Multislerp),
        ("arcee_fusion_rows", Pipeline::Arcee),
        ("karcher", Pipeline::Karcher),
        ("karcher_nobase", Pipeline::Karcher),
        ("nuslerp_cols", Pipeline::NuslerpColumns),
        ("arcee_fusion_small_rows", Pipeline::Arcee),
        ("model_stock_rows", Pipeline::Rows),
        ("nuslerp_rows", Pipeline::Rows),
    ] {
        // 2 SLERP blocks and a bit; for DARE two thread parts of several cascade granules; for
        // DELLA 1031 ranking blocks of 2048 elements (statistics chunks start inside blocks).
        let n = if method.ends_with("_small_rows") {
            400 * 2048
        } else if method.starts_with("karcher") {
            // Every link replays the iterations: a smaller tensor keeps the test quick.
            700_001
        } else if method.starts_with("della") || method.ends_with("_rows") || method.ends_with("_cols") {
            1031 * 2048
        } else {
            (1 << 21) + 12_345
        };
        for dtype in [DType::Bf16, DType::F32, DType::F16] {
            let (task, io) = setup(method, dtype, n);
            assert_eq!(super::pipeline(&task).unwrap(), pipeline);
            execute_task(&task, &io).unwrap();
            let whole = io.out.lock().unwrap().clone();
            for (chunk, seed) in [(300_001u64, 1u64), (1 << 20, 2)] {
                if n as u64 <= chunk {
                    continue; // arcee_fusion below 10^6 elements, karcher
                }
                io.out.lock().unwrap().fill(0);
                let got = run_chunked(&task, &io, chunk, seed);
                let plan = plan(&task, chunk).unwrap().unwrap();
                assert!(plan.apply.len() > 2, "{method}: {} apply chunks", plan.apply.len());
                if pipeline.passes() > 0 {
                    assert!(
                        plan.stats.len() > 1,
                        "{method} {dtype:?}: {} statistics chunks",
                        plan.stats.len()
                    );
                }
                if method.starts_with("della") || method.ends_with("_rows") || method.ends_with("_cols") {
                    assert!(plan.apply.iter().all(|r| r.start % 2048 == 0), "whole rows");
                    if pipeline == Pipeline::RankedRescale {
                        let inside = plan.stats.iter().filter(|r| r.start % 2048 != 0).count();
                        assert!(inside > 0, "some statistics chunk starts inside a block");
                    }
                }
                assert!(
                    got == whole,
                    "{method} {dtype:?} in chunks of {chunk}: bytes differ from the whole kernel"
                );
            }
        }
    }
}

#[test]
fn small_tensors_and_unsplittable_methods_stay_whole() {
    let (task, _) = setup("ties", DType::F32, 1000);
    assert_eq!(plan(&task, 1000).unwrap(), None);
    assert!(plan(&task, 999).unwrap().is_some());
    let (mut task, _) = setup("karcher", DType::F32, 1000);
    assert_eq!(super::pipeline(&task).unwrap(), Pipeline::Karcher);
    assert!(plan(&task, 10).unwrap().is_some());
    task.shared_params.insert("max_iter".to_string(), num(101.0));
    assert_eq!(plan(&task, 10).unwrap(), None, "more than 100 iterations run whole");
}

#[test]
fn partitions_cover_the_tensor_and_respect_alignment() {
    let n = (1 << 21) + 5;
    for (method, dtype) in [
        ("slerp", DType::Bf16),
        ("dare_ties", DType::Bf16),
        ("dare_ties", DType::F32),
        ("ties_rescale", DType::Bf16),
        ("ties_rescale", DType::F16),
        ("breadcrumbs_ties_rescale", DType::Bf16),
    ] {
        let (task, _) = setup(method, dtype, n);
        let p = plan(&task, 100_000).unwrap().unwrap();
        for ranges in [&p.stats, &p.apply] {
            assert_eq!(ranges.first().unwrap().start, 0);
            assert_eq!(ranges.last().unwrap().end, n as u64);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        }
        if method.ends_with("_rescale") {
            assert_eq!(p.stats, p.apply, "tie shares are per statistics chunk");
        }
        if method == "slerp" {
            assert!(p.stats.iter().all(|r| r.start % TORCH_CHUNK as u64 == 0));
        } else {
            // No statistics chunk crosses torch's thread split.
            let half = (n as u64).div_ceil(2);
            assert!(p.stats.iter().all(|r| r.end <= half || r.start >= half));
        }
    }
}

#[test]
fn planned_memory_counts_the_whole_f32_tensors_a_chunk_holds() {
    let n = 1usize << 23;
    for (method, whole) in [
        ("ramplus_tl", true),
        ("linear", true),
        ("arcee_fusion_rows", true),
        ("dare_ties", false),
        ("multislerp", false),
        ("ties", false),
    ] {
        let (task, _) = setup(method, DType::Bf16, n);
        let p = plan(&task, n as u64 / 2).unwrap().unwrap();
        let r = &p.apply[0];
        let len = r.end - r.start;
        let chunk = MergeTask {
            numel: len,
            chunk: Some(ChunkInfo {
                start: r.start,
                len,
                passes: p.passes,
                count: p.apply.len() as u32,
                tensor_numel: n as u64,
                ..Default::default()
            }),
            ..task.clone()
        };
        let k = task.inputs.len() as u64;
        let holds = task_memory(&chunk) >= len * 4 * (k + 1);
        assert_eq!(
            holds,
            whole,
            "{method}: planned {} for {len} elements",
            task_memory(&chunk)
        );
        assert_eq!(chunk_holds_whole_f32(&task, p.pipeline), whole, "{method}");
    }
}
