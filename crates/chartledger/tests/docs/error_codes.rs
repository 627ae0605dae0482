//! `schema/error-codes.md` lists exactly the error codes of the source.
//!
//! A code is a string literal shaped like `prefix.name` (or a bare `name`), found in the
//! workspace's library and binary sources (`crates/*/src`, `projections/src`), outside
//! `#[cfg(test)]` items, `tests.rs` files and `tests` folders, where it is:
//!
//! - any string literal in the body of a `fn code` (every error enum has one), except in
//!   the `impl` blocks of [`NOT_ERROR_CODES`];
//! - the string after `code:` or `code =` (`ApiError::Refused { code: "…" }`, a log
//!   line's `code = "…"` field);
//! - any `prefix.name` literal in the API crate, which speaks the wire protocol (HTTP and
//!   WebSocket refusals, `ApiError::internal("…", …)`, access refusals).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::tokens::{group_end, lex, without_tests, Tok};

/// Types whose `fn code` names something other than an error.
const NOT_ERROR_CODES: &[(&str, &str)] =
    &[("Operation", "the policy's operations, named in security events and metrics")];

/// The source folder of the crate whose dotted literals are all codes.
const WIRE_CRATE: &str = "crates/api/src";

/// The retry column's values.
const RETRY: &[&str] = &["yes", "no", "after", "—"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn is_code(s: &str) -> bool {
    let part = |p: &str| {
        p.starts_with(|c: char| c.is_ascii_lowercase())
            && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    match s.split_once('.') {
        Some((prefix, name)) => part(prefix) && part(name),
        None => part(s),
    }
}

fn is_dotted_code(s: &str) -> bool {
    s.contains('.') && is_code(s)
}

/// The `.rs` files under `dir`, tests left out.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "tests" {
                sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") && name != "tests.rs" {
            out.push(path);
        }
    }
}

fn source_roots(root: &Path) -> Vec<PathBuf> {
    let mut roots = vec![root.join("projections/src")];
    if let Ok(crates) = std::fs::read_dir(root.join("crates")) {
        roots.extend(crates.flatten().map(|c| c.path().join("src")));
    }
    roots.retain(|r| r.is_dir());
    roots.sort();
    roots
}

/// The codes in one file's tokens.
fn codes_in(t: &[Tok], wire: bool) -> Vec<String> {
    let mut found = Vec::new();
    let mut impl_type = String::new();
    let mut i = 0;
    while i < t.len() {
        match (&t[i], t.get(i + 1), t.get(i + 2)) {
            (Tok::Word(w), _, _) if w == "impl" => {
                // The implementing type: the last word before the block.
                let mut j = i + 1;
                while j < t.len() && t[j] != Tok::Punct('{') && t[j] != Tok::Punct(';') {
                    if let Tok::Word(w) = &t[j] {
                        impl_type.clone_from(w);
                    }
                    j += 1;
                }
            }
            (Tok::Word(f), Some(Tok::Word(c)), _) if f == "fn" && c == "code" => {
                let excluded = NOT_ERROR_CODES.iter().any(|(ty, _)| *ty == impl_type);
                let Some(open) = t[i..].iter().position(|x| matches!(x, Tok::Punct('{' | ';'))) else {
                    break;
                };
                let body = t[i + open] == Tok::Punct('{');
                let end = if body { group_end(t, i + open) } else { i + open + 1 };
                if !excluded && body {
                    found.extend(t[i + open..end].iter().filter_map(|x| match x {
                        Tok::Str(s) if is_code(s) => Some(s.clone()),
                        _ => None,
                    }));
                }
                i = end;
                continue;
            }
            (Tok::Word(c), Some(Tok::Punct(':' | '=')), Some(Tok::Str(s))) if c == "code" && is_code(s) => {
                found.push(s.clone());
                i += 3;
                continue;
            }
            (Tok::Str(s), _, _) if wire && is_dotted_code(s) => found.push(s.clone()),
            _ => {}
        }
        i += 1;
    }
    found
}

/// Every code of the source, with the files it appears in.
fn source_codes(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    for dir in source_roots(root) {
        sources(&dir, &mut files);
    }
    let mut codes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let rel = file.strip_prefix(root).unwrap_or(&file).to_string_lossy().replace('\\', "/");
        let tokens = without_tests(&lex(&text));
        for code in codes_in(&tokens, rel.starts_with(WIRE_CRATE)) {
            codes.entry(code).or_default().insert(rel.clone());
        }
    }
    codes
}

/// The catalog's codes (first column), checking each row's section and retry value.
fn catalog_codes(text: &str) -> (BTreeSet<String>, Vec<String>) {
    let mut codes = BTreeSet::new();
    let mut problems = Vec::new();
    let mut section = "";
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            section = title.trim_matches('`');
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, first, _meaning, retry, _] = cells[..] else { continue };
        let Some(code) = first.strip_prefix('`').and_then(|c| c.strip_suffix('`')) else { continue };
        if !is_code(code) {
            problems.push(format!("{code}: not shaped like a code"));
        }
        if code.contains('.') && !code.starts_with(&format!("{section}.")) {
            problems.push(format!("{code}: listed under `{section}`"));
        }
        if !RETRY.contains(&retry) {
            problems.push(format!("{code}: retry is {retry:?}, not one of {RETRY:?}"));
        }
        if !codes.insert(code.to_owned()) {
            problems.push(format!("{code}: listed twice"));
        }
    }
    (codes, problems)
}

#[test]
fn the_error_code_catalog_lists_every_code_of_the_source() {
    let root = workspace();
    let source = source_codes(&root);
    assert!(source.len() > 100, "the extraction found only {} codes: {source:?}", source.len());
    let text = std::fs::read_to_string(root.join("schema/error-codes.md")).unwrap();
    let (catalog, mut problems) = catalog_codes(&text);
    for (code, files) in &source {
        if !catalog.contains(code) {
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            problems.push(format!("{code}: missing from the catalog (used in {})", files.join(", ")));
        }
    }
    for code in catalog.iter().filter(|c| !source.contains_key(*c)) {
        problems.push(format!("{code}: stale, no longer in the source"));
    }
    assert!(problems.is_empty(), "schema/error-codes.md disagrees with the code:\n{}", problems.join("\n"));
}

#[test]
fn the_extraction_finds_codes_in_each_context() {
    let src = r#"
        impl ApiError {
            pub fn code(&self) -> &'static str {
                match self { Self::A => "a.one", Self::B => "not_found", Self::C { code } => code }
            }
        }
        impl Operation {
            pub fn code(self) -> &'static str { match self { Self::Read => "read_clinical" } }
        }
        fn f() -> ApiError {
            tracing::warn!(code = "b.logged", "text.not_a_code is prose");
            if x.code() == "c.compared" { return ApiError::Refused { code: "b.refused" } }
            HttpError::new(StatusCode::BAD_REQUEST, "d.wire", "a message")
        }
    "#;
    let tokens = without_tests(&lex(src));
    assert_eq!(codes_in(&tokens, false), ["a.one", "not_found", "b.logged", "b.refused"]);
    assert_eq!(
        codes_in(&tokens, true),
        ["a.one", "not_found", "b.logged", "c.compared", "b.refused", "d.wire"]
    );
}
