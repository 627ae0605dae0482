//! Entry lists of current charts, resolved once per (chart, selection) and reused.
//!
//! A current chart comes from memory while it has not changed ([`projections::current`]),
//! shared by every request that reads it, and an entry list's fields are a pure function
//! of the chart: no argument, no context, no other table. Resolving the same list with
//! the same selection for the same chart object therefore gives the same value, and for
//! a chart read most of the server's work was exactly that (the library's per-field
//! futures and the content's conversion, about a third of the process's CPU).
//! [`EntryList`] keeps the resolved value, keyed by the chart object and a SHA-256 of
//! the field as it runs (alias, name, selection, positions: the library has already
//! applied `@skip`/`@include` and removed what they leave out), and hands a copy to the
//! next request with the same selection on the same chart.
//!
//! What keeps this right (invariant 23 in ARCHITECTURE.md):
//! - Only what was authorized is resolved: an `EntryList` exists only inside a
//!   `ChartView` that the `chart` resolver authorized (and audited) for this request;
//!   the cache holds values, not permissions.
//! - The chart is the same object, not an equal one: the key holds the chart's address
//!   and the entry a weak reference to it, checked on every hit (the weak reference
//!   also keeps the address from being reused while the entry exists). A changed chart
//!   is a new object.
//! - Only selections whose every field is listed as reading the chart alone, for its
//!   type ([`PURE_ENTRY`], [`PURE_VERSION`]), without arguments, remaining directives or
//!   fragments, are kept: an author's display name is looked up elsewhere, so a
//!   selection with `authorName` is resolved every time. A test fails when `Entry` or
//!   `EntryVersion` gains a field that is in neither list.
//! - A resolution during which the request recorded any error is not kept.
//! - Point-in-time views are never kept (each is a chart of its own), and nothing is
//!   kept when the server keeps no charts (`chart_cache_mib = 0`).
//!
//! Memory: bounded by an estimate of the values' size ([`CAPACITY`]). The values are
//! clinical content, as the charts they come from (`deploy/README.md`, Memory). Entries
//! whose chart is gone can no longer be served; they are swept out every
//! [`SWEEP_EVERY`] insertions rather than left until evicted.

use std::borrow::Cow;
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use async_graphql::parser::types::{Field, Selection};
use async_graphql::registry::Registry;
use async_graphql::{ContextSelectionSet, Name, OutputType, Positioned, ServerResult, Value};
use domain::chart::Chart;
use prometheus::IntCounter;
use quick_cache::sync::Cache;
use quick_cache::Weighter;
use sha2::{Digest, Sha256};

use crate::graphql::chart::Entry;
use crate::metrics::Metrics;

/// Estimated bytes of resolved lists kept, at most.
pub const CAPACITY: u64 = 64 << 20;
/// Insertions between sweeps of entries whose chart is gone.
pub const SWEEP_EVERY: u64 = 1024;

/// Fields of `Entry` that read the chart alone. `current` and `versions` are
/// `EntryVersion`s, checked against [`PURE_VERSION`].
pub const PURE_ENTRY: &[&str] = &["__typename", "entryId", "kind", "status", "current", "versions"];
/// Fields of `EntryVersion` that read the chart alone.
pub const PURE_VERSION: &[&str] = &[
    "__typename",
    "version",
    "change",
    "reason",
    "content",
    "effectiveAt",
    "recordedAt",
    "authorId",
    "authorRole",
    "eventId",
    "position",
];
/// Fields of `Entry` and `EntryVersion` that read something else (never kept; listed so
/// that a test can tell a new field from a known one).
#[cfg(test)]
const IMPURE: &[&str] = &["authorName"];

/// (the chart's address, SHA-256 of the field as it runs).
type Key = (usize, [u8; 32]);

struct Kept {
    chart: Weak<Chart>,
    value: Value,
    bytes: u64,
}

#[derive(Clone)]
struct KeptWeight;

impl Weighter<Key, Arc<Kept>> for KeptWeight {
    fn weight(&self, _: &Key, kept: &Arc<Kept>) -> u64 {
        kept.bytes.max(1)
    }
}

/// The kept lists. One per schema (in its data).
pub struct ResolvedLists {
    cache: Cache<Key, Arc<Kept>, KeptWeight>,
    inserts: AtomicU64,
    reused: IntCounter,
    kept: IntCounter,
}

impl std::fmt::Debug for ResolvedLists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedLists").field("len", &self.cache.len()).finish_non_exhaustive()
    }
}

impl ResolvedLists {
    /// Counting reuses and keeps in `metrics` (`entry_lists_total`).
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            cache: Cache::with_weighter((CAPACITY / (16 << 10)) as usize, CAPACITY, KeptWeight),
            inserts: AtomicU64::new(0),
            reused: metrics.entry_lists.with_label_values(&["reused"]),
            kept: metrics.entry_lists.with_label_values(&["kept"]),
        }
    }

    fn keep(&self, key: Key, kept: Kept) {
        self.cache.insert(key, Arc::new(kept));
        self.kept.inc();
        if self.inserts.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.cache.retain(|_, kept| kept.chart.strong_count() > 0);
        }
    }
}

/// A list of a chart's entries, as a field of `ChartView` returns it. Its GraphQL type is
/// `[Entry!]!`, as a `Vec<Entry>`'s.
pub struct EntryList {
    chart: Arc<Chart>,
    items: Vec<Entry>,
    /// Whether the chart is a current chart (shared), not a point-in-time one.
    current: bool,
}

impl EntryList {
    pub fn new(chart: &Arc<Chart>, items: Vec<Entry>, current: bool) -> Self {
        Self { chart: chart.clone(), items, current }
    }

    fn key(&self, field: &Positioned<Field>) -> Option<Key> {
        if !self.current || !pure_list(&field.node) {
            return None;
        }
        let mut hash = HashWriter(Sha256::new());
        std::fmt::write(&mut hash, format_args!("{:?}", field.node)).ok()?;
        Some((Arc::as_ptr(&self.chart) as usize, hash.0.finalize().into()))
    }
}

/// Whether a field has no arguments, no directives left and a selection of fields only,
/// each of them allowed by `allowed` and its own selection by `inner`.
fn plain(field: &Field, each: impl Fn(&Field) -> bool) -> bool {
    field.arguments.is_empty()
        && field.directives.is_empty()
        && field.selection_set.node.items.iter().all(|s| match &s.node {
            Selection::Field(f) => each(&f.node),
            Selection::FragmentSpread(_) | Selection::InlineFragment(_) => false,
        })
}

/// The list field itself: its items are `Entry`s.
fn pure_list(field: &Field) -> bool {
    plain(field, pure_entry)
}

fn pure_entry(field: &Field) -> bool {
    let name = field.name.node.as_str();
    PURE_ENTRY.contains(&name)
        && if matches!(name, "current" | "versions") {
            plain(field, pure_version)
        } else {
            plain(field, |_| false)
        }
}

fn pure_version(field: &Field) -> bool {
    PURE_VERSION.contains(&field.name.node.as_str()) && plain(field, |_| false)
}

struct HashWriter(Sha256);

impl std::fmt::Write for HashWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// Estimated bytes of a value: each node, each object field (name, value and index
/// slot) and the text held.
fn footprint(v: &Value) -> u64 {
    let node = size_of::<Value>() as u64;
    let field = (size_of::<Name>() + size_of::<Value>() + 2 * size_of::<usize>()) as u64;
    node + match v {
        Value::String(s) => s.len() as u64,
        Value::List(items) => items.iter().map(footprint).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| field + k.len() as u64 + footprint(v)).sum(),
        Value::Binary(b) => b.len() as u64,
        _ => 0,
    }
}

fn errors_so_far(ctx: &ContextSelectionSet<'_>) -> Option<usize> {
    ctx.query_env.errors.lock().ok().map(|e| e.len())
}

impl OutputType for EntryList {
    fn type_name() -> Cow<'static, str> {
        <Vec<Entry> as OutputType>::type_name()
    }

    fn qualified_type_name() -> String {
        <Vec<Entry> as OutputType>::qualified_type_name()
    }

    fn create_type_info(registry: &mut Registry) -> String {
        <Vec<Entry> as OutputType>::create_type_info(registry)
    }

    async fn resolve(&self, ctx: &ContextSelectionSet<'_>, field: &Positioned<Field>) -> ServerResult<Value> {
        let lists = ctx.data_opt::<Arc<ResolvedLists>>();
        let Some((lists, key)) = lists.zip(self.key(field)) else {
            return self.items.resolve(ctx, field).await;
        };
        if let Some(kept) = lists.cache.get(&key) {
            if kept.chart.upgrade().is_some_and(|c| Arc::ptr_eq(&c, &self.chart)) {
                lists.reused.inc();
                return Ok(kept.value.clone());
            }
        }
        let before = errors_so_far(ctx);
        let value = self.items.resolve(ctx, field).await?;
        if before.is_some() && errors_so_far(ctx) == before {
            let kept =
                Kept { chart: Arc::downgrade(&self.chart), bytes: footprint(&value), value: value.clone() };
            lists.keep(key, kept);
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(query: &str) -> Field {
        let doc = async_graphql::parser::parse_query(query).expect("parses");
        let op = match doc.operations {
            async_graphql::parser::types::DocumentOperations::Single(op) => op,
            async_graphql::parser::types::DocumentOperations::Multiple(_) => panic!("one operation"),
        };
        let chart = match &op.node.selection_set.node.items[0].node {
            Selection::Field(f) => f.node.clone(),
            _ => panic!("a field"),
        };
        match &chart.selection_set.node.items[0].node {
            Selection::Field(f) => f.node.clone(),
            _ => panic!("a field"),
        }
    }

    #[test]
    fn only_selections_of_the_chart_alone_are_kept() {
        let keep = |q: &str| pure_list(&field(q));
        assert!(keep("{ chart { entries { entryId current { content version } versions { change } } } }"));
        assert!(keep("{ chart { problems: entries { id: entryId __typename current { __typename } } } }"));
        assert!(!keep("{ chart { entries { current { authorName } } } }"), "looked up elsewhere");
        assert!(!keep("{ chart { entries { version } } }"), "a version's field, not an entry's");
        assert!(!keep("{ chart { entries { current { versions { version } } } } }"));
        assert!(!keep("{ chart { entries { entryId { x } } } }"));
        assert!(!keep("query($v: Boolean!) { chart { entries { entryId @include(if: $v) } } }"));
        assert!(!keep("{ chart { entries { ...E } } } fragment E on Entry { entryId }"));
        assert!(!keep("{ chart { entries { ... on Entry { entryId } } } }"));
    }

    /// Every field of `Entry` and `EntryVersion` is listed as pure or impure: a new field
    /// must be classified before lists selecting it can be kept or refused.
    #[test]
    fn every_entry_field_is_classified() {
        let sdl = crate::graphql::sdl();
        for (ty, pure) in [("Entry", PURE_ENTRY), ("EntryVersion", PURE_VERSION)] {
            let start = sdl.find(&format!("type {ty} {{")).expect("the type is in the SDL");
            let body = &sdl[start..start + sdl[start..].find('}').expect("closed")];
            let fields: Vec<&str> = body
                .lines()
                .skip(1)
                .map(str::trim)
                .filter(|l| l.contains([':', '(']))
                .filter_map(|l| l.split([':', '(']).next())
                // Field names, not the lines of doc strings.
                .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .collect();
            assert!(!fields.is_empty());
            for f in fields {
                assert!(pure.contains(&f) || IMPURE.contains(&f), "{ty}.{f} is not classified");
            }
        }
    }

    #[test]
    fn the_footprint_counts_nodes_fields_and_text() {
        let small = footprint(&Value::from("x"));
        let mut map = async_graphql::indexmap::IndexMap::new();
        map.insert(Name::new("content"), Value::from("a".repeat(1000)));
        let big = footprint(&Value::List(vec![Value::Object(map)]));
        assert!(small >= size_of::<Value>() as u64);
        assert!(big > 1000 + 3 * size_of::<Value>() as u64, "{big}");
    }
}
