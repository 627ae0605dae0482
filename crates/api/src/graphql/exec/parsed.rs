//! Parsed GraphQL documents, kept by their text. Clients send the same few query texts
//! over and over (a frontend's queries are constants), and parsing one with the
//! library's parser costs more than copying the parsed document: for a chart read it was
//! about 7% of the server's CPU.
//!
//! Only parsing is skipped. Everything that depends on the request still runs on every
//! request, on the copy: the recursion-depth and directive limits, validation against
//! the schema with the request's variables, the depth and complexity limits, and
//! execution. A document is kept only after a request with it passed the schema's
//! validation and limits (it ran, whatever its resolvers answered): a text that does not
//! parse or is refused is never kept (the schema refuses it, and [`super::sanitize`]
//! sanitizes the refusal, as before).
//!
//! Memory is bounded by an estimate of the documents' size (a parsed document measured
//! 36 to 104 times its text; [`BYTES_PER_TEXT_BYTE`] takes the high end); a text longer
//! than [`MAX_TEXT`] is parsed every time and never kept, so a client sending many
//! distinct long queries can only evict entries, never grow the cache. The cache holds query
//! texts, which are code, not data: a client that inlines a patient's name in a literal
//! instead of a variable puts it in server memory for as long as the entry lives, as
//! the request itself already did while it ran; nothing kept here is logged or shown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_graphql::parser::types::ExecutableDocument;
use async_graphql::Request;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

/// Longest query text that is kept.
pub const MAX_TEXT: usize = 16 * 1024;
/// Estimated bytes of documents kept, at most.
pub const CAPACITY: u64 = 32 << 20;
/// A parsed document's size, estimated from its text's.
pub const BYTES_PER_TEXT_BYTE: u64 = 128;

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
    hits: AtomicU64,
}

/// A document parsed for a request, to keep once the request has passed validation.
#[derive(Debug)]
pub struct Fresh(Arc<str>, Arc<ExecutableDocument>);

impl Default for ParsedQueries {
    fn default() -> Self {
        let items = (CAPACITY / (512 * BYTES_PER_TEXT_BYTE)) as usize;
        Self { cache: Cache::with_weighter(items, CAPACITY, DocWeight), hits: AtomicU64::new(0) }
    }
}

impl std::fmt::Debug for ParsedQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedQueries").field("len", &self.cache.len()).finish_non_exhaustive()
    }
}

impl ParsedQueries {
    /// Gives `request` its parsed document: a copy of the kept one, or parsed now; the
    /// latter is returned, for [`ParsedQueries::keep`] once the request has passed
    /// validation. A text that does not parse, or is longer than [`MAX_TEXT`], is left
    /// to the schema.
    pub fn prepare(&self, request: &mut Request) -> Option<Fresh> {
        let text = request.query.as_str();
        if text.len() > MAX_TEXT {
            return None;
        }
        if let Some(doc) = self.cache.get(text) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            request.set_parsed_query(ExecutableDocument::clone(&doc));
            return None;
        }
        let doc = async_graphql::parser::parse_query(text).ok()?;
        let fresh = Fresh(Arc::from(text), Arc::new(doc.clone()));
        request.set_parsed_query(doc);
        Some(fresh)
    }

    /// Keep a document whose request passed validation.
    pub fn keep(&self, Fresh(text, doc): Fresh) {
        self.cache.insert(text, doc);
    }

    /// Requests that were given a kept document.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
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

    fn debug(r: &mut Request) -> Option<String> {
        r.parsed_query().ok().map(|d| format!("{d:?}"))
    }

    #[test]
    fn a_kept_query_is_not_parsed_again_and_each_request_gets_its_own_copy() {
        let cache = ParsedQueries::default();
        let mut a = Request::new(Q);
        let fresh = cache.prepare(&mut a).expect("parsed now");
        assert!(cache.is_empty(), "not kept before validation");
        cache.keep(fresh);
        assert_eq!(cache.len(), 1);
        let mut b = Request::new(Q);
        assert!(cache.prepare(&mut b).is_none(), "a kept document is not parsed again");
        assert_eq!(cache.hits(), 1);
        let direct = async_graphql::parser::parse_query(Q).map(|d| format!("{d:?}")).ok();
        assert_eq!(debug(&mut a), direct);
        assert_eq!(debug(&mut b), direct, "the copy is the document the parser makes");
    }

    #[test]
    fn texts_that_do_not_parse_or_are_too_long_are_left_to_the_schema() {
        let cache = ParsedQueries::default();
        let mut bad = Request::new("query { chart(");
        assert!(cache.prepare(&mut bad).is_none());
        assert!(bad.parsed_query().is_err(), "the schema still refuses it");

        let long = format!("{{ __typename {} }}", " ".repeat(MAX_TEXT));
        let mut r = Request::new(long);
        assert!(cache.prepare(&mut r).is_none());
        assert!(cache.is_empty());
        assert!(r.parsed_query().is_ok());
    }

    #[test]
    fn memory_stays_bounded_under_many_distinct_texts() {
        let cache = ParsedQueries::default();
        let pad = "x".repeat(8 * 1024);
        let weight = (8 * 1024 + 32) * BYTES_PER_TEXT_BYTE;
        for i in 0..(2 * CAPACITY / weight) {
            let mut r = Request::new(format!("{{ a{i}{pad}: __typename }}"));
            let fresh = cache.prepare(&mut r).expect("parses");
            cache.keep(fresh);
        }
        let kept = cache.len() as u64;
        assert!(kept > 0 && kept <= CAPACITY / (8 * 1024 * BYTES_PER_TEXT_BYTE), "{kept} kept");
    }
}
