//! The chat templates a config can name instead of giving Jinja text (semantics §7.5):
//! `alpaca`, `chatml`, `exaone`, `llama3` and `mistral`, the names mergekit 0.1.5 ships.
//!
//! The `.jinja` files beside this module are shardmerge's own, written from the public
//! descriptions of these chat formats. Their text differs from mergekit's files; what they
//! render does not: for every conversation, rendered as transformers renders a chat template
//! (`trim_blocks`, `lstrip_blocks`, `bos_token`, `eos_token`, `add_generation_prompt`,
//! `raise_exception`), the output is mergekit's template's output, whitespace included (the
//! golden `chat_template_named_*` cases check it with minijinja, and
//! `tests/golden/check_chat_templates.py` with transformers' own renderer). So the merged
//! model formats prompts exactly as mergekit's would, while its `chat_template.jinja` is this
//! text.

/// The built-in template names, in alphabetical order.
pub const BUILTIN_NAMES: [&str; 5] = ["alpaca", "chatml", "exaone", "llama3", "mistral"];

/// Longest `chat_template` value (exclusive) that 0.1.5 looks up as a name.
const MAX_NAME_LEN: usize = 256;

/// The template text `value` names, when `value` is a built-in name by 0.1.5's rule: shorter
/// than 256 bytes, no newline, no `{`, and one of [`BUILTIN_NAMES`] (case-sensitive, as a
/// file name). Anything else is not a name (`None`): `auto`, or literal Jinja text.
pub fn builtin(value: &str) -> Option<&'static str> {
    if value.len() >= MAX_NAME_LEN || value.contains('\n') || value.contains('{') {
        return None;
    }
    Some(match value {
        "alpaca" => include_str!("alpaca.jinja"),
        "chatml" => include_str!("chatml.jinja"),
        "exaone" => include_str!("exaone.jinja"),
        "llama3" => include_str!("llama3.jinja"),
        "mistral" => include_str!("mistral.jinja"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_its_own_template_and_nothing_else_is_a_name() {
        let texts: Vec<&str> = BUILTIN_NAMES.iter().map(|n| builtin(n).expect(n)).collect();
        for (i, t) in texts.iter().enumerate() {
            assert!(t.contains("{%"), "{}: not Jinja", BUILTIN_NAMES[i]);
            assert!(
                texts[..i].iter().all(|u| u != t),
                "{} repeats a template",
                BUILTIN_NAMES[i]
            );
        }
        for other in [
            "auto",
            "ChatML",
            "chatml ",
            " chatml",
            "llama-3",
            "",
            "chatml\n",
            "{{ chatml }}",
        ] {
            assert_eq!(builtin(other), None, "{other:?}");
        }
    }

    #[test]
    fn each_template_uses_its_formats_markers() {
        let markers = [
            ("alpaca", "### Instruction:"),
            ("chatml", "<|im_start|>"),
            ("exaone", "[|endofturn|]"),
            ("llama3", "<|start_header_id|>"),
            ("mistral", "[INST]"),
        ];
        for (name, marker) in markers {
            assert!(builtin(name).is_some_and(|t| t.contains(marker)), "{name}");
        }
    }
}
