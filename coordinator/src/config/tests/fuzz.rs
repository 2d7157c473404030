//! Mutated configs never panic, in parsing or in evaluation.

use super::*;

/// xorshift64*, enough to drive mutations deterministically.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, text: &str) -> String {
    const PIECES: &[&str] = &[
        "-",
        ":",
        "[",
        "]",
        "{",
        "}",
        ",",
        "#",
        "&a",
        "*a",
        "!!str",
        "|",
        ">",
        "'",
        "\"",
        "@",
        "+",
        " ",
        "\n",
        "\t",
        "  ",
        "0",
        "-1",
        "1e-5",
        ".nan",
        "~",
        "null",
        "[]",
        "{}",
        "filter:",
        "value:",
        "model:",
        "layer_range: [3, 1]",
        "99999999999999999999",
        "\u{e9}",
        "<<: *a",
    ];
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(4) {
            0 => {
                let end = (at + rng.below(8)).min(chars.len());
                chars.drain(at..end);
            }
            1 | 2 => {
                let piece = PIECES[rng.below(PIECES.len())];
                chars.splice(at..at, piece.chars());
            }
            _ => chars.truncate(at),
        }
    }
    chars.into_iter().collect()
}

#[test]
fn mutated_configs_never_panic() {
    let seeds = [
        SLERP,
        DARE_TIES,
        "merge_method: m\nmodels:\n  - model: {model: {path: a}}\n    parameters: {w: [{filter: x, value: [1, 2]}, {value: '3'}]}\n",
    ];
    let types = [ParamType::Float, ParamType::Int, ParamType::Bool, ParamType::Str];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..600 {
        let text = mutate(&mut rng, seeds[round % seeds.len()]);
        let Ok(config) = parse_config(&text, Path::new("fuzz.yml")) else {
            rejected += 1;
            continue;
        };
        accepted += 1;
        let maps = std::iter::once(&config.parameters)
            .chain(config.models.iter().map(|m| &m.parameters))
            .chain(
                config
                    .slices
                    .iter()
                    .flat_map(|s| std::iter::once(&s.parameters).chain(s.sources.iter().map(|src| &src.parameters))),
            );
        for setting in maps.flat_map(|m| m.values()) {
            for ty in types {
                for t in [0.0, 0.37, 1.0, -3.0, f64::NAN] {
                    let _ = setting.evaluate(ty, "model.layers.1.mlp.x", t);
                }
            }
        }
    }
    assert!(
        accepted > 20 && rejected > 20,
        "accepted {accepted}, rejected {rejected}"
    );
}
