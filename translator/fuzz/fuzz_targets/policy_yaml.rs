//! Policy files (`config::parse`: YAML → typed model, environment overrides, every
//! validation `check-config` runs short of touching files and sockets).
//!
//! Invariants: no panic (deep nesting and alias expansion included: the parser's budget
//! bounds them); an error renders and names the file, and when the text is not even YAML
//! (as serde-saphyr reads it into nothing) the error names a line.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use translator::config::{Origin, parse};

/// Far above any real policy; the parser's own limit is 1 MiB.
const MAX_INPUT: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = HashMap::<String, String>::new();
    match parse(text, "fuzz.yaml", &env) {
        Ok(loaded) => {
            // What check-config prints for a good policy.
            let _ = translator::report::effective_yaml(&loaded.config);
        }
        Err(e) => {
            let rendered = e.render();
            assert!(rendered.contains("fuzz.yaml"), "{rendered}");
            assert!(!e.problems.is_empty());
            // Not even YAML (syntax, budget): the error must say where.
            if serde_saphyr::from_str::<serde::de::IgnoredAny>(text).is_err() {
                assert!(
                    e.problems
                        .iter()
                        .any(|p| matches!(p.origin, Origin::File { line, .. } if line > 0)),
                    "a YAML error without a line: {rendered}"
                );
            }
        }
    }
});
