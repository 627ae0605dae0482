//! Parsed GraphQL documents, kept by their text. Clients send the same few query texts
//! over and over (a frontend's queries are constants), and parsing one with the
//! library's parser costs more than copying the parsed document: for a chart read it was
//! about 7% of the server's CPU.
//!
//! Only parsing is skipped. Everything that depends on the request still runs on every
//! request, on the copy: the recursion-depth and directive limits, validation against
//! the schema with the request's variables, the depth and complexity limits, and
//! execution. A text that does not parse is never kept (the schema refuses it, and
//! [`super::sanitize`] sanitizes the refusal, as before).
//!
//! Memory is bounded by an estimate of the documents' size; a text longer than
//! [`MAX_TEXT`] is parsed every time and never kept, so a client sending many distinct
//! long queries can only evict entries, never grow the cache. The cache holds query
//! texts, which are code, not data: a client that inlines a patient's name in a literal
//! instead of a variable puts it in server memory for as long as the entry lives, as
//! the request itself already did while it ran; nothing kept here is logged or shown.

use std::sync::Arc;

use async_graphql::parser::types::ExecutableDocument;
use async_graphql::Request;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

/// Longest query text that is kept.
pub const MAX_TEXT: usize = 16 * 1024;
/// Estimated bytes of documents kept, at most.
const CAPACITY: u64 = 16 << 20;
/// A parsed document's size, estimated from its text's.
const BYTES_PER_TEXT_BYTE: u64 = 16;

#[derive(Clone)]
struct DocWeight;

impl Weighter<Arc<str>, Arc<ExecutableDocument>> for DocWeight {
    fn weight(&self, text: &Arc<str>, _: &Arc<ExecutableDocument>) -> u64 {
        (text.len() as u64).max(1) * BYTES_PER_TEXT_BYTE
    }
}

/// The parsed documents of recent query texts.
pub struct ParsedQueries {
    cache: Cache<Arc<str>, Arc<ExecutableDocument>, DocWeight>,
}

impl Default for ParsedQueries {
    fn default() -> Self {
        let items = (CAPACITY / (1024 * BYTES_PER_TEXT_BYTE)) as usize;
        Self { cache: Cache::with_weighter(items, CAPACITY, DocWeight) }
    }
}

impl std::fmt::Debug for ParsedQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedQueries").field("len", &self.cache.len()).finish_non_exhaustive()
    }
}

impl ParsedQueries {
    /// Gives `request` its parsed document: a copy of the kept one, or parsed now (and
    /// kept when it parses and is short enough). A request whose text does not parse,
    /// or that already has its document, is left as it is.
    pub fn prepare(&self, request: &mut Request) {
        let text = request.query.as_str();
        if text.len() > MAX_TEXT {
            return;
        }
        if let Some(doc) = self.cache.get(text) {
            request.set_parsed_query(ExecutableDocument::clone(&doc));
            return;
        }
        if let Ok(doc) = async_graphql::parser::parse_query(text) {
            self.cache.insert(Arc::from(text), Arc::new(doc.clone()));
            request.set_parsed_query(doc);
        }
    }

    /// How many documents are kept.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether no document is kept.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: &str = "query($p: UUID!) { chart(patientId: $p) { patientId } }";

    #[test]
    fn a_query_is_parsed_once_and_each_request_gets_its_own_copy() {
        let cache = ParsedQueries::default();
        let mut a = Request::new(Q);
        cache.prepare(&mut a);
        assert_eq!(cache.len(), 1);
        let mut b = Request::new(Q);
        cache.prepare(&mut b);
        assert_eq!(cache.len(), 1);
        let (da, db) =
            (a.parsed_query().map(|d| format!("{d:?}")), b.parsed_query().map(|d| format!("{d:?}")));
        assert_eq!(da.ok(), db.ok(), "the copy is the document the parser makes");
        let direct = async_graphql::parser::parse_query(Q).map(|d| format!("{d:?}")).ok();
        assert_eq!(a.parsed_query().map(|d| format!("{d:?}")).ok(), direct);
    }

    #[test]
    fn texts_that_do_not_parse_or_are_too_long_are_not_kept() {
        let cache = ParsedQueries::default();
        let mut bad = Request::new("query { chart(");
        cache.prepare(&mut bad);
        assert!(cache.is_empty());
        assert!(bad.parsed_query().is_err(), "the schema still refuses it");

        let long = format!("{{ __typename {} }}", " ".repeat(MAX_TEXT));
        let mut r = Request::new(long);
        cache.prepare(&mut r);
        assert!(cache.is_empty());
        assert!(r.parsed_query().is_ok());
    }

    #[test]
    fn memory_stays_bounded_under_many_distinct_texts() {
        let cache = ParsedQueries::default();
        let pad = "x".repeat(8 * 1024);
        for i in 0..400 {
            // Distinct texts of about 8 KiB (aliases make them distinct and valid).
            let mut r = Request::new(format!("{{ a{i}{pad}: __typename }}"));
            cache.prepare(&mut r);
        }
        let kept = cache.len() as u64;
        assert!(kept > 0);
        assert!(
            kept * 8 * 1024 * BYTES_PER_TEXT_BYTE <= CAPACITY + 8 * 1024 * BYTES_PER_TEXT_BYTE,
            "{kept} kept"
        );
    }
}
