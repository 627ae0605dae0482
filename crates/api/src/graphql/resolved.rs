//! Entry lists of current charts, resolved once per (chart, selection) and reused.
//!
//! A current chart comes from memory while it has not changed ([`projections::current`]),
//! shared by every request that reads it, and an entry list's fields are a pure function
//! of the chart: no argument, no context, no other table. Resolving the same list with
//! the same selection for the same chart object therefore gives the same value, and for
//! a chart read most of the server's work was exactly that (the library's per-field
//! futures and the content's conversion, about a third of the process's CPU).
//! [`EntryList`] keeps the resolved value, keyed by the chart object and a SHA-256 of
//! the field as parsed (alias, name, selection, positions), and hands a copy to the next
//! request with the same selection on the same chart.
//!
//! What keeps this right:
//! - Only what was authorized is resolved: an `EntryList` exists only inside a
//!   `ChartView` that the `chart` resolver authorized (and audited) for this request;
//!   the cache holds values, not permissions.
//! - The chart is the same object, not an equal one: the key holds the chart's address
//!   and the entry a weak reference to it, checked on every hit, so an address reused
//!   after the chart was dropped is a miss. A changed chart is a new object.
//! - Only selections whose every field is in [`PURE_FIELDS`], without arguments,
//!   directives or fragments, are kept: nothing that depends on variables, the
//!   principal or another source (an author's display name is looked up, so a selection
//!   with `authorName` is resolved every time).
//! - A resolution during which the request recorded any error is not kept.
//! - Point-in-time views are never kept (each is a chart of its own).
//!
//! Memory: bounded by an estimate of the values' size ([`CAPACITY`]). The values are
//! clinical content, as the charts they come from; see `deploy/README.md`.

use std::borrow::Cow;
use std::sync::{Arc, Weak};

use async_graphql::parser::types::{Field, Selection};
use async_graphql::registry::Registry;
use async_graphql::{ContextSelectionSet, OutputType, Positioned, ServerResult, Value};
use domain::chart::Chart;
use quick_cache::sync::Cache;
use quick_cache::Weighter;
use sha2::{Digest, Sha256};

use super::chart::Entry;

/// Estimated bytes of resolved lists kept, at most.
pub const CAPACITY: u64 = 64 << 20;

/// Fields of an entry list whose values depend on the chart alone.
pub const PURE_FIELDS: &[&str] = &[
    "__typename",
    "entryId",
    "kind",
    "status",
    "current",
    "versions",
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

/// (the chart's address, SHA-256 of the field as parsed).
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
}

impl Default for ResolvedLists {
    fn default() -> Self {
        Self { cache: Cache::with_weighter((CAPACITY / (16 << 10)) as usize, CAPACITY, KeptWeight) }
    }
}

impl std::fmt::Debug for ResolvedLists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedLists").field("len", &self.cache.len()).finish_non_exhaustive()
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
        if !self.current || !pure(&field.node, true) {
            return None;
        }
        let mut hash = HashWriter(Sha256::new());
        std::fmt::write(&mut hash, format_args!("{:?}", field.node)).ok()?;
        Some((Arc::as_ptr(&self.chart) as usize, hash.0.finalize().into()))
    }
}

/// Whether the field (the list itself when `top`) and everything selected under it are
/// pure fields, without arguments, directives or fragments.
fn pure(field: &Field, top: bool) -> bool {
    field.arguments.is_empty()
        && field.directives.is_empty()
        && (top || PURE_FIELDS.contains(&field.name.node.as_str()))
        && field.selection_set.node.items.iter().all(|s| match &s.node {
            Selection::Field(f) => pure(&f.node, false),
            Selection::FragmentSpread(_) | Selection::InlineFragment(_) => false,
        })
}

struct HashWriter(Sha256);

impl std::fmt::Write for HashWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// Estimated bytes of a value.
fn footprint(v: &Value) -> u64 {
    const NODE: u64 = 64;
    NODE + match v {
        Value::String(s) => s.len() as u64,
        Value::List(items) => items.iter().map(footprint).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| k.len() as u64 + footprint(v)).sum(),
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
                return Ok(kept.value.clone());
            }
        }
        let before = errors_so_far(ctx);
        let value = self.items.resolve(ctx, field).await?;
        if before.is_some() && errors_so_far(ctx) == before {
            let kept =
                Kept { chart: Arc::downgrade(&self.chart), bytes: footprint(&value), value: value.clone() };
            lists.cache.insert(key, Arc::new(kept));
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
        let keep = |q: &str| pure(&field(q), true);
        assert!(keep("{ chart { entries { entryId current { content version } versions { change } } } }"));
        assert!(keep("{ chart { problems: entries { id: entryId __typename } } }"));
        assert!(!keep("{ chart { entries { current { authorName } } } }"), "looked up elsewhere");
        assert!(!keep("query($v: Boolean!) { chart { entries { entryId @include(if: $v) } } }"));
        assert!(!keep("query($v: Boolean!) { chart { entries @skip(if: $v) { entryId } } }"));
        assert!(!keep("{ chart { entries { ...E } } } fragment E on Entry { entryId }"));
        assert!(!keep("{ chart { entries { ... on Entry { entryId } } } }"));
    }
}
