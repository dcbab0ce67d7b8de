//! The macro's list and the checks agree: a check added without being listed (or listed
//! without existing) fails here, not silently in every backend.

use std::collections::BTreeSet;
use std::path::Path;

/// Every `pub async fn` in the suite's source files: the checks.
fn checks() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/conformance");
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("the suite's source folder") {
        let path = entry.expect("a folder entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("a source file");
        for line in source.lines() {
            if let Some(rest) = line.trim_start().strip_prefix("pub async fn ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                assert!(names.insert(name.clone()), "{name} is defined twice");
            }
        }
    }
    names
}

/// The names `conformance_tests!` expands to, in its order.
fn listed() -> Vec<String> {
    let source = include_str!("mod.rs");
    let start = source
        .find("conformance_tests!(@each $factory;")
        .expect("the macro's list");
    let list = &source[start..];
    let list = &list[list.find(';').expect("the list's start") + 1..];
    let list = &list[..list.find(");").expect("the list's end")];
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_macro_lists_every_check_exactly_once() {
    let checks = checks();
    let listed = listed();
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "a check is listed twice");
    let missing: Vec<_> = checks.difference(&unique).collect();
    let unknown: Vec<_> = unique.difference(&checks).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "checks not in conformance_tests!: {missing:?}; listed but not defined: {unknown:?}"
    );
    assert!(checks.len() >= 40, "found only {} checks", checks.len());
}
