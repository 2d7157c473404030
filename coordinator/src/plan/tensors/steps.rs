//! Planning one output tensor, step by step ([`Ctx::tensor`]): find the inputs, agree on a
//! shape, pick the working dtype, place the base, check the method's contract, resolve the
//! parameters, align vocabulary rows, pick the stored dtype.

use super::*;

/// One input found for an output tensor: its source index in the slice, the name it was
/// asked by, its file and its header entry.
type Found<'n> = (usize, &'n str, PathBuf, TensorInfo);

impl Ctx<'_> {
    /// Plans one output tensor of `slice` from the tensors `wanted` of its sources, step by
    /// step: find the inputs, agree on a shape, pick the working dtype, place the base, check
    /// the method's contract, resolve parameters, align vocabulary rows, pick the stored dtype.
    /// `None`: the tensor is not written (no source has it, or mergekit skips it).
    pub(super) fn tensor(
        &self,
        _slice_idx: usize,
        slice: &NSlice,
        out_name: &str,
        wanted: &[(usize, String)],
        kind: Kind,
    ) -> Result<Option<PlannedTensor>, PlanError> {
        let Some(found) = self.find_inputs(slice, out_name, wanted)? else {
            return Ok(None);
        };
        let (shape, mode) = self.agree_shape(slice, out_name, &found)?;
        let work = self.working_dtype(slice, &found)?;
        let t = match kind {
            Kind::Pre | Kind::Post => 0.0,
            Kind::Layer { k, len } => {
                if len > 1 {
                    k as f64 / (len - 1) as f64
                } else {
                    1.0
                }
            }
        };
        let base_pos = self.base_position(slice, out_name, &found)?;
        let Some(passthrough) = self.check_contract(out_name, &found, wanted, base_pos)? else {
            return Ok(None);
        };
        let shared = resolve_shared_params(self.config, self.method, slice, out_name, t)?;
        let (mut inputs, label) = self.resolve_inputs(slice, found, base_pos, t)?;
        self.align_rows(slice, out_name, mode, &mut inputs)?;
        let numel = shape.iter().product::<u64>();
        Ok(Some(PlannedTensor {
            name: out_name.to_string(),
            label,
            inputs,
            shared,
            numel,
            shape,
            load: self.load,
            work,
            out_dtype: self.stored_dtype(work, passthrough),
            passthrough,
        }))
    }

    /// Each source's tensor: its canonical name, or for optional (tied) weights one of the
    /// output's tied names. `None` when no source has the canonical name.
    fn find_inputs<'n>(
        &self,
        slice: &NSlice,
        out_name: &str,
        wanted: &'n [(usize, String)],
    ) -> Result<Option<Vec<Found<'n>>>, PlanError> {
        let norm = self.norm;
        let tied = arch::tied_names(out_name);
        let any_canonical = wanted
            .iter()
            .any(|(j, n)| norm.models[slice.sources[*j].model].dir.tensors.contains_key(n));
        if !any_canonical {
            return Ok(None);
        }
        let mut found = Vec::new();
        for (j, name) in wanted {
            let model = &norm.models[slice.sources[*j].model];
            let mut candidates = vec![name.as_str()];
            if let Some(t) = tied {
                candidates.extend(t.iter().copied());
            }
            match candidates.iter().find_map(|c| model.dir.tensors.get(*c)) {
                Some(lt) => found.push((*j, name.as_str(), lt.file.clone(), lt.info.clone())),
                None if tied.is_some() => {}
                None => {
                    let present = wanted
                        .iter()
                        .find(|(jj, n)| norm.models[slice.sources[*jj].model].dir.tensors.contains_key(n))
                        .map(|(jj, _)| norm.models[slice.sources[*jj].model].display.clone())
                        .unwrap_or_default();
                    return Err(PlanError::Invalid(format!(
                        "tensor `{name}` is missing in model `{}` (it is present in `{present}`)",
                        model.display
                    )));
                }
            }
        }
        Ok(Some(found))
    }

    /// The output shape every input must have (past dim 0 for vocabulary tensors that are
    /// aligned or truncated), and how their rows are brought together.
    fn agree_shape(
        &self,
        slice: &NSlice,
        out_name: &str,
        found: &[Found<'_>],
    ) -> Result<(Vec<u64>, VocabMode), PlanError> {
        let norm = self.norm;
        let mut shape = found[0].3.shape.clone();
        let vocab_tensor = arch::has_vocabulary_axis(out_name) && !shape.is_empty();
        let mode = match (vocab_tensor, self.vocab) {
            (true, Some(v)) => {
                shape[0] = v.rows;
                VocabMode::Align
            }
            (true, None) if self.truncate_vocab => {
                let min = found
                    .iter()
                    .map(|f| f.3.shape.first().copied().unwrap_or(0))
                    .min()
                    .unwrap_or(0);
                shape[0] = min;
                VocabMode::Truncate(min)
            }
            _ => VocabMode::None,
        };
        let rows_differ =
            |a: &[u64], b: &[u64]| a.len() == b.len() && !a.is_empty() && a[1..] == b[1..] && a[0] != b[0];
        for f in &found[1..] {
            let same = match mode {
                VocabMode::None => f.3.shape == shape,
                _ => f.3.shape.len() == shape.len() && f.3.shape[1..] == shape[1..],
            };
            if !same && vocab_tensor && rows_differ(&f.3.shape, &found[0].3.shape) {
                return Err(PlanError::Invalid(format!(
                    "tensor `{out_name}`: vocabulary sizes differ: model `{}` has {} rows, model `{}` has {}; \
                     mergekit 0.1.5 refuses this too (\"Tensor size mismatch\"): set `tokenizer_source: union` \
                     (or `base`, or a `tokenizer:` section) to align the vocabularies, or pass \
                     --unsafe-truncate-embeddings to keep the first {} rows of every model",
                    norm.models[slice.sources[found[0].0].model].display,
                    found[0].3.shape[0],
                    norm.models[slice.sources[f.0].model].display,
                    f.3.shape[0],
                    found[0].3.shape[0].min(f.3.shape[0])
                )));
            }
            if !same {
                return Err(PlanError::Invalid(format!(
                    "tensor `{out_name}`: shape mismatch: model `{}` has `{}` with shape {:?}, model `{}` has `{}` with shape {:?}",
                    norm.models[slice.sources[found[0].0].model].display,
                    found[0].3.name,
                    shape,
                    norm.models[slice.sources[f.0].model].display,
                    f.3.name,
                    f.3.shape
                )));
            }
        }
        Ok((shape, mode))
    }

    /// The working dtype: the config's load dtype, else the promotion of the stored dtypes.
    fn working_dtype(&self, slice: &NSlice, found: &[Found<'_>]) -> Result<WorkDType, PlanError> {
        let mut work: Option<WorkDType> = None;
        for f in found {
            let d = match self.load {
                Some(l) => l,
                None => work_of_storage(f.3.dtype).ok_or_else(|| {
                    PlanError::Invalid(format!(
                        "tensor `{}` of model `{}` has dtype {:?}; shardmerge merges bf16, f16 and f32 tensors",
                        f.3.name, self.norm.models[slice.sources[f.0].model].display, f.3.dtype
                    ))
                })?,
            };
            work = Some(work.map_or(d, |w| w.promote(d)));
        }
        Ok(work.expect("at least one input"))
    }

    /// Where the base model is among the inputs, as the method's base policy requires.
    fn base_position(&self, slice: &NSlice, out_name: &str, found: &[Found<'_>]) -> Result<Option<usize>, PlanError> {
        let not_among = |b: usize| {
            PlanError::Invalid(format!(
                "tensor `{out_name}`: base model `{}` is not among the inputs",
                self.norm.models[b].display
            ))
        };
        let position = |b: usize| found.iter().position(|f| slice.sources[f.0].model == b);
        match self.method.base {
            BasePolicy::Required => {
                let b = slice.base.ok_or_else(|| {
                    PlanError::Invalid(format!(
                        "{}: merge method `{}` needs a `base_model`",
                        crate::plan::sources::at_line(self.config, "merge_method"),
                        self.method.name
                    ))
                })?;
                position(b).map(Some).ok_or_else(|| not_among(b))
            }
            BasePolicy::Ignored => Ok(None),
            BasePolicy::Optional => match slice.base {
                None => Ok(None),
                Some(b) => position(b).map(Some).ok_or_else(|| not_among(b)),
            },
        }
    }

    /// Checks the method's input counts. `Some(passthrough)`: whether the single input is
    /// copied; `None`: mergekit skips the tensor (optional weights left too few inputs).
    fn check_contract(
        &self,
        out_name: &str,
        found: &[Found<'_>],
        wanted: &[(usize, String)],
        base_pos: Option<usize>,
    ) -> Result<Option<bool>, PlanError> {
        let only_base = found.len() == 1 && base_pos == Some(0);
        let passthrough = match self.method.optional_policy {
            OptionalPolicy::Error => false,
            OptionalPolicy::PassthroughSingleton => found.len() == 1,
            OptionalPolicy::PassthroughBaseSingleton | OptionalPolicy::BaseOrSkip => only_base,
        };
        if self.method.optional_policy == OptionalPolicy::BaseOrSkip
            && !passthrough
            && found.len() < self.method.min_inputs
            && found.len() < wanted.len()
        {
            return Ok(None);
        }
        if !passthrough {
            let n = found.len();
            if n < self.method.min_inputs || self.method.max_inputs.is_some_and(|m| n > m) {
                return Err(PlanError::Invalid(format!(
                    "{}: tensor `{out_name}`: merge method `{}` takes {}{} inputs{}, got {n}",
                    crate::plan::sources::at_line(self.config, "merge_method"),
                    self.method.name,
                    self.method.min_inputs,
                    self.method
                        .max_inputs
                        .map(|m| if m == self.method.min_inputs {
                            String::new()
                        } else {
                            format!("..{m}")
                        })
                        .unwrap_or_else(|| "+".into()),
                    match self.method.base {
                        BasePolicy::Required => " including the base model",
                        BasePolicy::Ignored | BasePolicy::Optional => "",
                    }
                )));
            }
        }
        if let (false, Some((lo, hi))) = (passthrough, self.method.non_base_inputs) {
            let n = found.len() - usize::from(base_pos.is_some());
            if n < lo || hi.is_some_and(|h| n > h) {
                return Err(PlanError::Invalid(format!(
                    "{}: tensor `{out_name}`: merge method `{}` takes {} models besides the base model, got {n}",
                    crate::plan::sources::at_line(self.config, "merge_method"),
                    self.method.name,
                    match hi {
                        Some(h) if h == lo => format!("exactly {lo}"),
                        Some(h) => format!("{lo} to {h}"),
                        None => format!("at least {lo}"),
                    }
                )));
            }
        }
        Ok(Some(passthrough))
    }

    /// Every input with its parameters at layer position `t`, and the tensor's label (the
    /// greatest input name: mergekit's execution order key).
    fn resolve_inputs(
        &self,
        slice: &NSlice,
        found: Vec<Found<'_>>,
        base_pos: Option<usize>,
        t: f64,
    ) -> Result<(Vec<PlannedInput>, String), PlanError> {
        let mut inputs = Vec::with_capacity(found.len());
        let mut label = String::new();
        for (pos, (j, _, file, info)) in found.into_iter().enumerate() {
            let src = &slice.sources[j];
            let is_base = base_pos == Some(pos);
            let model = &self.norm.models[src.model];
            let (params, density) = resolve_input_params(
                self.config,
                self.method,
                slice,
                src.model,
                &model.display,
                is_base,
                &info.name,
                t,
            )?;
            if info.name > label {
                label = info.name.clone();
            }
            inputs.push(PlannedInput {
                model: src.model,
                file,
                info,
                is_base,
                params,
                density,
                rows: Vec::new(),
            });
        }
        Ok((inputs, label))
    }

    /// The row runs of vocabulary tensors: aligned to the output vocabulary, or truncated.
    fn align_rows(
        &self,
        slice: &NSlice,
        out_name: &str,
        mode: VocabMode,
        inputs: &mut [PlannedInput],
    ) -> Result<(), PlanError> {
        match (mode, self.vocab) {
            (VocabMode::Align, Some(v)) => {
                let aligned: Vec<AlignedInput> = inputs
                    .iter()
                    .map(|i| AlignedInput {
                        model: i.model,
                        stored_rows: i.info.shape[0],
                    })
                    .collect();
                let refs: Vec<_> = self.norm.models.iter().map(|m| m.reference.clone()).collect();
                // mergekit passes the slice's base model whatever the method does with it.
                let base = slice.base.and_then(|b| inputs.iter().position(|i| i.model == b));
                let defaults = vocab_rows::defaults(v, &aligned, base, out_name, &refs)?;
                for (k, inp) in inputs.iter_mut().enumerate() {
                    inp.rows = vocab_rows::runs(v, &aligned, k, &defaults);
                }
            }
            (VocabMode::Truncate(min), _) => {
                for (k, inp) in inputs.iter_mut().enumerate() {
                    inp.rows = vocab_rows::truncated(k, min);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The stored dtype: the config's `out_dtype`, else the working dtype, except that
    /// ramplus_tl's and arcee_fusion's f32 factors promote their results (semantics §3.3).
    fn stored_dtype(&self, work: WorkDType, passthrough: bool) -> Dtype {
        storage_of_work(
            self.out_dtype
                .unwrap_or(if self.method.kind.promotes_to_f32() && !passthrough {
                    WorkDType::F32
                } else {
                    work
                }),
        )
    }
}
