//! The SQL side: database names (validated, quoted, percent-encoded for URLs), creating a
//! database once, and login roles.

use std::future::Future;
use std::pin::Pin;

use sqlx::postgres::PgConnection;

use crate::error::ClusterError;

/// PostgreSQL's longest identifier, in bytes.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// SQLSTATEs meaning another session created the same database first.
const ALREADY_CREATED: [&str; 2] = ["42P04", "23505"];

pub(crate) fn validate_database_name(name: &str) -> Result<(), ClusterError> {
    if name.is_empty() || name.len() > MAX_IDENTIFIER_BYTES || name.contains('\0') {
        return Err(ClusterError::InvalidDatabaseName { name: name.to_owned() });
    }
    Ok(())
}

/// `name` as a quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a URL path segment: unreserved ASCII kept, every other byte `%XX`.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Creates database `name` from `template0` unless it exists (also when another session creates
/// it at the same time). Boxed: unboxed, rustc cannot prove the future `Send` ("implementation of
/// `Executor` is not general enough").
pub(crate) fn create_database_if_missing<'a>(
    conn: &'a mut PgConnection,
    name: &'a str,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
        if exists {
            return Ok(());
        }
        let create = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name));
        match sqlx::Executor::execute(&mut *conn, create.as_str()).await {
            Ok(_) => {
                tracing::info!("pgcluster: created database {name:?}");
                Ok(())
            }
            Err(sqlx::Error::Database(e))
                if e.code().is_some_and(|code| ALREADY_CREATED.contains(&&*code)) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    })
}

/// Role attributes a role of [`ensure_login_role`] never has.
const NOT_PRIVILEGED: &str = "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS";

/// Creates login role `name` (validated by [`crate::auth::validate_role`]) with `password` (hex)
/// unless it exists, else gives it that password and takes any privileged attribute away.
/// Nothing here is logged by the server, even on error (`log_min_error_statement = panic`).
/// Boxed for the same reason as [`create_database_if_missing`].
pub(crate) fn ensure_login_role<'a>(
    conn: &'a mut PgConnection,
    name: &'a str,
    password: &'a str,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        sqlx::Executor::execute(&mut *conn, "SET log_min_error_statement = panic").await?;
        sqlx::Executor::execute(&mut *conn, "SET log_statement = none").await?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
        let role = quote_ident(name);
        if !exists {
            let create = format!("CREATE ROLE {role} LOGIN {NOT_PRIVILEGED} PASSWORD '{password}'");
            match sqlx::Executor::execute(&mut *conn, create.as_str()).await {
                Ok(_) => {
                    tracing::info!("pgcluster: created role {name:?}");
                    return Ok(());
                }
                // Created meanwhile by another session: updated below.
                Err(sqlx::Error::Database(e))
                    if e.code().is_some_and(|code| ALREADY_CREATED.contains(&&*code) || code == "42710") => {}
                Err(e) => return Err(e),
            }
        }
        let alter = format!("ALTER ROLE {role} WITH LOGIN {NOT_PRIVILEGED} PASSWORD '{password}'");
        sqlx::Executor::execute(&mut *conn, alter.as_str()).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_database_name("chartledger").is_ok());
        assert!(validate_database_name(&"x".repeat(63)).is_ok());
        for bad in ["", "a\0b"] {
            assert_eq!(validate_database_name(bad).unwrap_err().code(), "pgcluster.invalid_database_name");
        }
        assert!(validate_database_name(&"x".repeat(64)).is_err());
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(percent_encode("ok-._~AZ09"), "ok-._~AZ09");
        assert_eq!(percent_encode("a b/\"é"), "a%20b%2F%22%C3%A9");
    }
}
