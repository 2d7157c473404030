//! The rows of each input of a vocabulary tensor (embeddings, `lm_head`) once aligned to the
//! output vocabulary (semantics §5.2), as [`RowRun`]s the worker assembles: a model's own row
//! where it has the token (and the token is not forced), else the token's default row, and
//! padding rows that are the mean of the rows before them.

use super::PlanError;
use super::vocab::Vocabulary;
use crate::config::{ModelRef, TokenEmbeddingSource};
use shardmerge_proto::v1::{RowKind, RowRef, RowRun};

/// Where one row of an aligned input comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum RowSource {
    /// Row `row` of task input `input`'s stored tensor.
    Stored {
        /// Task input.
        input: usize,
        /// Row of its stored tensor.
        row: u64,
    },
    /// The mean of these stored rows (in order).
    Mean(Vec<(usize, u64)>),
    /// Zeros.
    Zero,
}

/// The default row of each token that needs one, by output id (`None`: no default).
pub struct Defaults(pub Vec<Option<RowSource>>);

/// One input of the tensor: its model and its stored row count.
pub struct AlignedInput {
    /// Model index in the plan.
    pub model: usize,
    /// Rows of its stored tensor.
    pub stored_rows: u64,
}

/// The default rows of the tensor's tokens, as mergekit's `assign_embedding_sources` and
/// `compute_default_embedding` choose them. `base` is the input index of the base model;
/// `refs` the plan's model references by model index.
pub fn defaults(
    vocab: &Vocabulary,
    inputs: &[AlignedInput],
    base: Option<usize>,
    tensor: &str,
    refs: &[ModelRef],
) -> Result<Defaults, PlanError> {
    let cfg = |t: &str| vocab.config.tokens.iter().find(|(n, _)| n == t).map(|(_, c)| c);
    let input_of = |model: usize| inputs.iter().position(|i| i.model == model);
    let mut out = Vec::with_capacity(vocab.tokens.len());
    for (id, token) in vocab.tokens.iter().enumerate() {
        let has: Vec<Option<u64>> = inputs
            .iter()
            .map(|i| u64::try_from(vocab.perms[i.model][id]).ok())
            .collect();
        let setting = cfg(token);
        let forced = setting.is_some_and(|c| c.force);
        if !forced && has.iter().all(Option::is_some) {
            out.push(None);
            continue;
        }
        let src = match setting {
            Some(c) => {
                let fail = |why: String| PlanError::Invalid(format!("tensor `{tensor}`: token `{token}`: {why}"));
                let model_input = |r: &ModelRef| {
                    let model = refs.iter().position(|x| x == r);
                    model.and_then(input_of).ok_or_else(|| {
                        fail(format!(
                            "its embedding source `{r}` has no `{tensor}` among this tensor's inputs \
                             (mergekit 0.1.5 fails mid-merge here too)"
                        ))
                    })
                };
                match &c.source {
                    None => {
                        return Err(fail(
                            "the token is listed under `tokens` without a `source`, and a model lacks it \
                             (or it is forced): give it a source"
                                .into(),
                        ));
                    }
                    Some(TokenEmbeddingSource::Zero) => RowSource::Zero,
                    Some(TokenEmbeddingSource::Model(r)) => {
                        let k = model_input(r)?;
                        let row = has[k].ok_or_else(|| fail(format!("model `{r}` does not have this token")))?;
                        RowSource::Stored { input: k, row }
                    }
                    Some(TokenEmbeddingSource::ModelToken {
                        model,
                        token_id,
                        token: src,
                    }) => {
                        let k = model_input(model)?;
                        let row = match (token_id, src) {
                            (Some(i), _) => u64::try_from(*i).ok(),
                            (None, Some(t)) => {
                                Some(u64::from(*vocab.models[inputs[k].model].vocab.get(t).ok_or_else(
                                    || fail(format!("token `{t}` is not in the vocabulary of model `{model}`")),
                                )?))
                            }
                            (None, None) => None,
                        };
                        match row {
                            Some(r) if r < inputs[k].stored_rows => RowSource::Stored { input: k, row: r },
                            _ => {
                                return Err(fail(format!(
                                    "token id {row:?} of model `{model}` is out of range (its `{tensor}` has {} rows)",
                                    inputs[k].stored_rows
                                )));
                            }
                        }
                    }
                }
            }
            None => {
                let present: Vec<(usize, u64)> =
                    has.iter().enumerate().filter_map(|(k, r)| r.map(|r| (k, r))).collect();
                match (present.len(), base.and_then(|b| has[b].map(|r| (b, r)))) {
                    (0, _) => RowSource::Zero,
                    (1, _) => RowSource::Stored {
                        input: present[0].0,
                        row: present[0].1,
                    },
                    (_, Some((b, r))) => RowSource::Stored { input: b, row: r },
                    _ => RowSource::Mean(present),
                }
            }
        };
        out.push(Some(src));
    }
    Ok(Defaults(out))
}

/// The row runs of input `k`: own rows, defaults, zeros, then padding up to `vocab.rows`.
pub fn runs(vocab: &Vocabulary, inputs: &[AlignedInput], k: usize, defaults: &Defaults) -> Vec<RowRun> {
    let perm = &vocab.perms[inputs[k].model];
    let mut runs: Vec<RowRun> = Vec::new();
    for (id, token) in vocab.tokens.iter().enumerate() {
        let forced = vocab.config.tokens.iter().any(|(n, c)| n == token && c.force);
        let src = match u64::try_from(perm[id]) {
            Ok(row) if !forced => RowSource::Stored { input: k, row },
            _ => defaults.0[id].clone().unwrap_or(RowSource::Zero),
        };
        push(&mut runs, src);
    }
    let len = vocab.tokens.len() as u64;
    if vocab.rows > len {
        runs.push(RowRun {
            count: vocab.rows - len,
            kind: RowKind::PadMean as i32,
            ..Default::default()
        });
    }
    runs
}

/// The first `rows` rows of input `k` (`--unsafe-truncate-embeddings`).
pub fn truncated(k: usize, rows: u64) -> Vec<RowRun> {
    vec![RowRun {
        count: rows,
        kind: RowKind::Copy as i32,
        input: k as u32,
        from_row: 0,
        terms: Vec::new(),
    }]
}

/// Appends one row, extending the last run when it continues it.
fn push(runs: &mut Vec<RowRun>, src: RowSource) {
    if let Some(last) = runs.last_mut() {
        match &src {
            RowSource::Stored { input, row }
                if last.kind == RowKind::Copy as i32
                    && last.input as usize == *input
                    && last.from_row + last.count == *row =>
            {
                last.count += 1;
                return;
            }
            RowSource::Zero if last.kind == RowKind::Zero as i32 => {
                last.count += 1;
                return;
            }
            _ => {}
        }
    }
    runs.push(match src {
        RowSource::Stored { input, row } => RowRun {
            count: 1,
            kind: RowKind::Copy as i32,
            input: input as u32,
            from_row: row,
            terms: Vec::new(),
        },
        RowSource::Mean(terms) => RowRun {
            count: 1,
            kind: RowKind::Mean as i32,
            terms: terms
                .into_iter()
                .map(|(input, row)| RowRef {
                    input: input as u32,
                    row,
                })
                .collect(),
            ..Default::default()
        },
        RowSource::Zero => RowRun {
            count: 1,
            kind: RowKind::Zero as i32,
            ..Default::default()
        },
    });
}

/// Tokens listed per model in [`describe`] before the rest is counted.
const LISTED: usize = 5;

/// What `shardmerge plan` shows of the alignment: the output vocabulary, and for each model
/// the tokens it lacks (or that are forced) and where their rows come from, with every model
/// as an input and `base` the base model's index (the tensors of a merge see the same).
pub fn describe(vocab: &Vocabulary, names: &[String], refs: &[ModelRef], base: Option<usize>) -> Vec<String> {
    let inputs: Vec<AlignedInput> = (0..names.len())
        .map(|m| AlignedInput {
            model: m,
            stored_rows: vocab.models[m].vocab_size,
        })
        .collect();
    let mut lines = vec![format!(
        "vocabulary:    {} tokens (tokenizer source: {}){}",
        vocab.tokens.len(),
        vocab.config.source,
        if vocab.rows > vocab.tokens.len() as u64 {
            format!(", {} rows (pad_to_multiple_of)", vocab.rows)
        } else {
            String::new()
        }
    )];
    let defaults = match defaults(vocab, &inputs, base, "the vocabulary tensors", refs) {
        Ok(d) => d,
        Err(e) => {
            lines.push(format!("  {e}"));
            return lines;
        }
    };
    let from = |src: &Option<RowSource>| match src {
        Some(RowSource::Stored { input, row }) => format!("{} row {row}", names[*input]),
        Some(RowSource::Mean(terms)) => format!("mean of {} models", terms.len()),
        Some(RowSource::Zero) | None => "zeros".to_string(),
    };
    for (m, name) in names.iter().enumerate() {
        let forced = |t: &str| vocab.config.tokens.iter().any(|(n, c)| n == t && c.force);
        let replaced: Vec<usize> = (0..vocab.tokens.len())
            .filter(|&id| vocab.perms[m][id] < 0 || forced(&vocab.tokens[id]))
            .collect();
        let mut line = format!("  {name}: lacks {}", vocab.missing(m));
        let listed: Vec<String> = replaced
            .iter()
            .take(LISTED)
            .map(|&id| {
                let t = &vocab.tokens[id];
                let how = if forced(t) { " (forced)" } else { "" };
                format!("`{t}`{how} <- {}", from(&defaults.0[id]))
            })
            .collect();
        if !listed.is_empty() {
            line.push_str(&format!(" (rows filled: {}", listed.join(", ")));
            if replaced.len() > LISTED {
                line.push_str(&format!(", and {} more", replaced.len() - LISTED));
            }
            line.push(')');
        }
        lines.push(line);
    }
    if vocab.rows > vocab.tokens.len() as u64 {
        lines.push(format!(
            "  rows {}..{}: the mean of each model's aligned rows",
            vocab.tokens.len(),
            vocab.rows
        ));
    }
    lines
}
