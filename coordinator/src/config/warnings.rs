//! Warnings about things mergekit ignores silently: unknown config keys (collected while
//! parsing) and parameter names the chosen merge method does not declare (checked by the
//! caller, which knows the method). Each names the file, line and column, and the YAML path.

use std::path::Path;

use super::locate::{Seg, closest, locate, parse_path, render, unknown_key_hint, yaml_path};
use super::{MergeConfig, ParamMap};

/// How many warnings get a position: each lookup re-reads the text, so at most 64 and at
/// most about 16 MiB of re-reading in total.
fn located_warnings(text: &str) -> usize {
    (16usize << 20).checked_div(text.len()).unwrap_or(64).min(64)
}

fn origin(file: &Path, position: Option<(usize, usize)>) -> String {
    match position {
        Some((line, column)) => format!("{}:{line}:{column}", file.display()),
        None => file.display().to_string(),
    }
}

/// One warning per key that serde_ignored reported.
pub(crate) fn unknown_keys(ignored: &[Vec<Seg>], text: &str, file: &Path) -> Vec<String> {
    ignored
        .iter()
        .enumerate()
        .map(|(n, path)| {
            let position = (n < located_warnings(text)).then(|| locate(text, path)).flatten();
            let hint = unknown_key_hint(path).map(|h| format!("; {h}")).unwrap_or_default();
            let path = render(path);
            format!("{}: unknown key `{path}` (ignored{hint})", origin(file, position))
        })
        .collect()
}

impl MergeConfig {
    /// `FILE:LINE:COLUMN` of the key (or list element) at `path`, written the way messages
    /// show paths (`slices[0].sources[1].layer_range`), or just `FILE` when it cannot be found
    /// in [`MergeConfig::source_text`]. For messages about the config from later stages.
    pub fn origin_of(&self, path: &str) -> String {
        let position = parse_path(path).and_then(|p| locate(&self.source_text, &p));
        origin(&self.file, position)
    }

    /// Warnings for parameter names, at any level, that are not in `known` (the parameters
    /// the merge method declares). mergekit ignores them silently, so a misspelt `weigth`
    /// would otherwise go unnoticed. Positions come from [`MergeConfig::source_text`], e.g.
    /// ``cfg.yml:8:7: unknown parameter `models[1].parameters.weigth` for merge method
    /// `dare_ties` (ignored; did you mean `weight`?)``.
    pub fn unknown_parameter_warnings(&self, known: &[&str]) -> Vec<String> {
        let mut maps: Vec<(Vec<Seg>, &ParamMap)> = vec![(yaml_path!["parameters"], &self.parameters)];
        for (i, model) in self.models.iter().enumerate() {
            maps.push((yaml_path!["models", i, "parameters"], &model.parameters));
        }
        for (i, slice) in self.slices.iter().enumerate() {
            maps.push((yaml_path!["slices", i, "parameters"], &slice.parameters));
            for (j, source) in slice.sources.iter().enumerate() {
                let path = yaml_path!["slices", i, "sources", j, "parameters"];
                maps.push((path, &source.parameters));
            }
        }
        let unknown = maps.into_iter().flat_map(|(path, map)| {
            map.keys()
                .filter(|name| !known.contains(&name.as_str()))
                .map(move |name| {
                    let mut full = path.clone();
                    full.push(Seg::Key(name.clone()));
                    (full, name)
                })
        });
        unknown
            .enumerate()
            .map(|(n, (path, name))| {
                let position = (n < located_warnings(&self.source_text))
                    .then(|| locate(&self.source_text, &path))
                    .flatten();
                let hint = closest(name, known)
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_default();
                format!(
                    "{}: unknown parameter `{}` for merge method `{}` (ignored{hint})",
                    origin(&self.file, position),
                    render(&path),
                    self.merge_method,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::parse_config;

    #[test]
    fn unknown_parameters_are_reported_with_positions() {
        let text = "\
merge_method: dare_ties
base_model: A
models:
  - model: A
  - model: B
    parameters:
      density: 0.53
      weigth: 0.4
parameters: {int8_mask: true, normalise: false}
";
        let file = Path::new("cfg.yml");
        let config = parse_config(text, file).unwrap();
        let known = ["weight", "density", "int8_mask", "normalize", "rescale", "lambda"];
        assert_eq!(
            config.unknown_parameter_warnings(&known),
            [
                "cfg.yml:9:31: unknown parameter `parameters.normalise` for merge method \
                 `dare_ties` (ignored; did you mean `normalize`?)",
                "cfg.yml:8:7: unknown parameter `models[1].parameters.weigth` for merge method \
                 `dare_ties` (ignored; did you mean `weight`?)",
            ]
        );
        assert_eq!(config.origin_of("models[1].parameters.weigth"), "cfg.yml:8:7");
        assert_eq!(config.origin_of("parameters.int8_mask"), "cfg.yml:9:14");
        assert_eq!(config.origin_of("models[7]"), "cfg.yml");
        assert_eq!(config.origin_of("models[x"), "cfg.yml");
        let all = ["weight", "density", "int8_mask", "normalise", "weigth"];
        assert!(config.unknown_parameter_warnings(&all).is_empty());
    }
}
