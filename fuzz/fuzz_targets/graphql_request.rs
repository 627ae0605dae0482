//! The GraphQL request path: a document, variables and an operation name through the
//! executor the server serves (`Sanitized` over the schema with the server's limits),
//! on a current-thread tokio runtime. There is no database and no session: resolvers
//! that get that far fail, which is fine; parsing, validation, the limits, variable
//! coercion and error sanitizing all run.
//!
//! Input: `document NUL variables-json NUL operation-name` (later parts optional; bad
//! JSON means no variables).
#![no_main]

use std::sync::LazyLock;

use api::graphql::exec::sanitize::Sanitized;
use async_graphql::{Executor, Request, Variables};
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;

struct Harness {
    runtime: Runtime,
    executor: Sanitized,
}

static HARNESS: LazyLock<Option<Harness>> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    let executor = Sanitized::new(api::graphql::schema(None), api::graphql::DEFAULT_LIMITS);
    Some(Harness { runtime, executor })
});

fuzz_target!(|data: &[u8]| {
    // No depth cap: the executor refuses over-deep documents before the parser (whose
    // recursion overflowed the stack at about 1,750 levels) sees them.
    let Some(h) = HARNESS.as_ref() else { panic!("the runtime starts") };
    let mut parts = data.splitn(3, |b| *b == 0);
    let document = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let mut request = Request::new(document);
    if let Some(vars) = parts.next() {
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(vars) {
            request = request.variables(Variables::from_json(json));
        }
    }
    if let Some(name) = parts.next() {
        request = request.operation_name(String::from_utf8_lossy(name));
    }
    let response = h.runtime.block_on(h.executor.execute(request));
    for e in &response.errors {
        // Sanitized gives every error a code of ours.
        let code = e.extensions.as_ref().and_then(|x| x.get("code"));
        assert!(code.is_some(), "an error without a code: {}", e.message);
    }
});
