//! Bounds on a GraphQL document, checked before the library parses, validates or
//! expands it.
//!
//! The library's parser recurses once per level of nesting of values, selection sets and
//! list types: a few kilobytes of `[[[[…` overflow a worker's stack and abort the whole
//! process. Its recursion, depth and complexity checks (and some validation rules) walk
//! the document with every fragment spread expanded in place: nine fragments that each
//! spread the next ten times are 10⁸ fields, which it took 20 s of one worker to refuse.
//! Neither can be interrupted by a request timeout, since neither awaits.
//!
//! So every request and subscription passes two checks first, each linear in the text:
//!
//! 1. [`scan_nesting`] reads the text once, skipping strings, block strings and comments
//!    as the lexer does, and refuses nesting of `{`, `[` and `(` deeper than
//!    [`MAX_NESTING`]. Whatever it lets through parses within a small, fixed stack.
//! 2. [`check_cost`] walks the parsed document once, with each fragment's size and depth
//!    computed once and reused at every spread. It computes exactly what the library's
//!    limits compute (one per field plus its children; depth in fields), so it refuses
//!    what the library would refuse, in microseconds, and what it lets through is at
//!    most `max_complexity` fields once expanded. It also bounds the expanded number of
//!    selections (spreads and inline fragments with no field of their own), and chains
//!    of fragment spreads (the library's cycle check recurses along them).
//!
//! Refusals carry stable codes: `graphql.too_deep`, `graphql.too_complex`, and
//! `graphql.invalid_request` for a fragment cycle. They quote nothing from the request.

use std::collections::HashMap;

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ErrorExtensions as _, Pos, Positioned, ServerError};

/// Deepest nesting of brackets, braces and parentheses in a document. Selection sets
/// are limited to far less by `max_depth`; this leaves room for nested input values.
pub const MAX_NESTING: usize = 64;

/// Deepest recursion of [`check_cost`]: nested selection sets plus fragment spreads.
const MAX_LEVELS: usize = 64;

/// The expanded selections (fields, spreads, inline fragments) allowed per allowed
/// field: a document within the complexity limit has a few wrappers per field at most.
const WORK_PER_FIELD: usize = 4;

/// Why a document was refused before the library saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Nested deeper than allowed (text nesting, field depth, or fragment chains).
    TooDeep,
    /// More fields, once fragments are expanded, than the complexity limit.
    TooComplex,
    /// A fragment that spreads itself, directly or not.
    FragmentCycle,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Self::TooDeep => "graphql.too_deep",
            Self::TooComplex => "graphql.too_complex",
            Self::FragmentCycle => "graphql.invalid_request",
        }
    }

    /// The message, as the library words its own refusals.
    pub fn message(self) -> &'static str {
        match self {
            Self::TooDeep => "Query is nested too deep.",
            Self::TooComplex => "Query is too complex.",
            Self::FragmentCycle => "invalid request",
        }
    }

    pub fn into_server_error(self) -> ServerError {
        let code = self.code();
        async_graphql::Error::new(self.message())
            .extend_with(|_, ext| ext.set("code", code))
            .into_server_error(Pos::default())
    }
}

/// The limits [`check_cost`] applies: the schema's own depth and complexity limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_depth: usize,
    pub max_complexity: usize,
}

/// Refuse text nested deeper than `max` (brackets, braces, parentheses outside strings
/// and comments). Unbalanced text is left to the parser, which refuses it.
pub fn scan_nesting(text: &str, max: usize) -> Result<(), Refusal> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
                continue;
            }
            b'"' if b[i..].starts_with(b"\"\"\"") => {
                i = block_string_end(b, i + 3);
                continue;
            }
            b'"' => {
                i = string_end(b, i + 1);
                continue;
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > max {
                    return Err(Refusal::TooDeep);
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Where a string that began before `i` ends (after its closing quote). A line break
/// ends an unterminated string, as it ends the lexer's.
fn string_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            b'\n' | b'\r' => return i,
            _ => i += 1,
        }
    }
    b.len()
}

/// Where a block string that began before `i` ends (after its closing `"""`; `\"""`
/// does not close it).
fn block_string_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        if b[i..].starts_with(b"\\\"\"\"") {
            i += 4;
        } else if b[i..].starts_with(b"\"\"\"") {
            return i + 3;
        } else {
            i += 1;
        }
    }
    b.len()
}

/// A selection set's size once its fragments are expanded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cost {
    /// Fields (the library's complexity, without custom complexities).
    fields: usize,
    /// Deepest field nesting (the library's depth).
    depth: usize,
    /// Selections of any kind.
    work: usize,
}

impl Cost {
    fn add(&mut self, other: Cost) {
        self.fields = self.fields.saturating_add(other.fields);
        self.depth = self.depth.max(other.depth);
        self.work = self.work.saturating_add(other.work);
    }
}

struct Walk<'a> {
    doc: &'a ExecutableDocument,
    /// Fragments measured so far; `None` while one is being measured (a cycle).
    fragments: HashMap<&'a str, Option<Cost>>,
}

impl<'a> Walk<'a> {
    fn selection_set(&mut self, set: &'a Positioned<SelectionSet>, level: usize) -> Result<Cost, Refusal> {
        if level > MAX_LEVELS {
            return Err(Refusal::TooDeep);
        }
        let mut cost = Cost::default();
        for item in &set.node.items {
            let inner = match &item.node {
                Selection::Field(f) => {
                    let children = if f.node.selection_set.node.items.is_empty() {
                        Cost::default()
                    } else {
                        self.selection_set(&f.node.selection_set, level + 1)?
                    };
                    Cost {
                        fields: children.fields.saturating_add(1),
                        depth: children.depth.saturating_add(1),
                        work: children.work,
                    }
                }
                Selection::InlineFragment(f) => self.selection_set(&f.node.selection_set, level + 1)?,
                Selection::FragmentSpread(s) => {
                    self.fragment(s.node.fragment_name.node.as_str(), level + 1)?
                }
            };
            cost.add(inner);
            cost.work = cost.work.saturating_add(1);
        }
        Ok(cost)
    }

    fn fragment(&mut self, name: &'a str, level: usize) -> Result<Cost, Refusal> {
        match self.fragments.get(name) {
            Some(Some(known)) => return Ok(*known),
            Some(None) => return Err(Refusal::FragmentCycle),
            None => {}
        }
        // An unknown fragment is the library's to refuse.
        let Some((key, def)) = self.doc.fragments.get_key_value(name) else { return Ok(Cost::default()) };
        self.fragments.insert(key.as_str(), None);
        let cost = self.selection_set(&def.node.selection_set, level)?;
        self.fragments.insert(key.as_str(), Some(cost));
        Ok(cost)
    }
}

/// Refuse a document whose operations, with fragments expanded, are deeper or larger
/// than `limits` allow (all operations together, as the library counts complexity), or
/// whose fragments spread themselves. Linear in the document's size.
pub fn check_cost(doc: &ExecutableDocument, limits: Limits) -> Result<(), Refusal> {
    let mut walk = Walk { doc, fragments: HashMap::new() };
    let mut total = Cost::default();
    for (_, op) in doc.operations.iter() {
        total.add(walk.selection_set(&op.node.selection_set, 0)?);
    }
    // Fragments no operation spreads are still validated by the library: measure them.
    for (name, _) in doc.fragments.iter() {
        walk.fragment(name.as_str(), 1)?;
    }
    if total.depth > limits.max_depth {
        return Err(Refusal::TooDeep);
    }
    let max_work = limits.max_complexity.saturating_mul(WORK_PER_FIELD).saturating_add(64);
    if total.fields > limits.max_complexity || total.work > max_work {
        return Err(Refusal::TooComplex);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use async_graphql::parser::parse_query;
    use proptest::prelude::*;

    use super::*;

    const LIMITS: Limits = Limits { max_depth: 12, max_complexity: 2000 };

    fn cost(q: &str) -> Result<(), Refusal> {
        let doc = parse_query(q).map_err(|_| Refusal::FragmentCycle)?;
        check_cost(&doc, LIMITS)
    }

    /// Nine fragments, each spreading the next ten times: 10^9 fields expanded.
    fn fragment_bomb(levels: usize, fanout: usize) -> String {
        let mut q = String::from("query { ...F0 }\n");
        for i in 0..levels {
            let spreads = format!(" ...F{}", i + 1).repeat(fanout);
            q.push_str(&format!("fragment F{i} on QueryRoot {{{spreads} }}\n"));
        }
        q.push_str(&format!("fragment F{levels} on QueryRoot {{ __typename }}\n"));
        q
    }

    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        assert_eq!(scan_nesting("{ a(x: [[[1]]]) { b } }", 6), Ok(()));
        assert_eq!(scan_nesting("{ a(x: [[[1]]]) { b } }", 4), Err(Refusal::TooDeep));
        let hidden = format!("{{ a(x: \"{}\") # {}\n }}", "[".repeat(500), "{".repeat(500));
        assert_eq!(scan_nesting(&hidden, 3), Ok(()));
        let block = format!("{{ a(x: \"\"\" \\\"\"\" {} \"\"\") }}", "(".repeat(500));
        assert_eq!(scan_nesting(&block, 3), Ok(()));
        // An escaped quote does not end the string; an unterminated one ends at the line.
        assert_eq!(scan_nesting("{ a(x: \"\\\"[[[[\") }", 3), Ok(()));
        assert_eq!(scan_nesting("{ a(x: \"open\n [[[[ ) }", 3), Err(Refusal::TooDeep));
    }

    #[test]
    fn deep_documents_are_refused_before_parsing_at_any_depth() {
        for depth in [2_000, 10_000, 100_000] {
            let value = format!("{{patient(patientId:{}1{}){{mrn}}}}", "[".repeat(depth), "]".repeat(depth));
            assert_eq!(scan_nesting(&value, MAX_NESTING), Err(Refusal::TooDeep));
            let object = format!("{{a(x:{}1{})}}", "{a:".repeat(depth), "}".repeat(depth));
            assert_eq!(scan_nesting(&object, MAX_NESTING), Err(Refusal::TooDeep));
            let fields = format!("{}{}", "{a".repeat(depth), "}".repeat(depth));
            assert_eq!(scan_nesting(&fields, MAX_NESTING), Err(Refusal::TooDeep));
        }
    }

    #[test]
    fn fragment_explosions_are_refused_without_expanding_them() {
        let started = std::time::Instant::now();
        assert_eq!(cost(&fragment_bomb(9, 10)), Err(Refusal::TooComplex));
        assert_eq!(cost(&fragment_bomb(60, 2)), Err(Refusal::TooComplex));
        // A long chain of single spreads has one field but recurses once per link.
        assert_eq!(cost(&fragment_bomb(10_000, 1)), Err(Refusal::TooDeep));
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "linear, not expanded");
        assert_eq!(cost(&fragment_bomb(3, 10)), Ok(()), "1,000 fields is within 2,000");
        assert_eq!(cost(&fragment_bomb(4, 10)), Err(Refusal::TooComplex));
    }

    #[test]
    fn cycles_and_unknown_fragments() {
        assert_eq!(
            cost("{ ...A } fragment A on Q { ...B } fragment B on Q { ...A }"),
            Err(Refusal::FragmentCycle)
        );
        assert_eq!(cost("{ a } fragment A on Q { ...A }"), Err(Refusal::FragmentCycle), "unused but cyclic");
        assert_eq!(cost("{ ...Missing }"), Ok(()), "left to the library");
        assert_eq!(cost("{ ...A ...A } fragment A on Q { a { b } }"), Ok(()), "spread twice, no cycle");
    }

    #[test]
    fn depth_and_complexity_count_as_the_library_does() {
        let nested = |n: usize| format!("{}{}", "{ a ".repeat(n), "}".repeat(n));
        assert_eq!(cost(&nested(12)), Ok(()), "12 fields deep");
        assert_eq!(cost(&nested(13)), Err(Refusal::TooDeep));
        let via_fragment = "{ a { ...F } } fragment F on T { b { c { d { e { f { g { h { i { j { k { l } } } } } } } } } } }";
        assert_eq!(cost(via_fragment), Ok(()), "12 fields through a fragment");
        let wide =
            |n: usize| format!("{{ {} }}", (0..n).map(|i| format!("a{i}: a")).collect::<Vec<_>>().join(" "));
        assert_eq!(cost(&wide(2000)), Ok(()));
        assert_eq!(cost(&wide(2001)), Err(Refusal::TooComplex));
    }

    proptest! {
        /// Whatever the scan lets through parses without overflowing the stack, and
        /// the cost check terminates on it.
        #[test]
        fn what_the_scan_admits_parses(text in "[{}\\[\\]()a:1\" #\\n.]{0,400}") {
            if scan_nesting(&text, MAX_NESTING).is_ok() {
                if let Ok(doc) = parse_query(&text) {
                    let _ = check_cost(&doc, LIMITS);
                }
            }
        }
    }
}
