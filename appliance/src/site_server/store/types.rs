//! How the site database stores the appliance's vocabulary ([`crate::model`]): as its words,
//! converted in one place, so no SQL string literal elsewhere names a state.

pub use crate::model::{Action, DpKind, DpState, JobState, SenderKind};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// Stores an enum of [`crate::model`] as its word.
macro_rules! sql_text {
    ($($name:ident),+) => {$(
        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<$name> {
                v.as_str()?.parse().map_err(|e: String| FromSqlError::Other(e.into()))
            }
        }
    )+};
}

sql_text!(JobState, Action, DpKind, DpState, SenderKind);

/// A package priority as the database stores it (`low`, `medium`, `high`); the value is the
/// transport's [`freight_transport::Priority`], the one priority type of the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredPriority(pub freight_transport::Priority);

impl ToSql for StoredPriority {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.name()))
    }
}

impl FromSql for StoredPriority {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<StoredPriority> {
        v.as_str()?
            .parse()
            .map(StoredPriority)
            .map_err(|e: freight_transport::Error| FromSqlError::Other(e.to_string().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_sqlite() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (s TEXT, p TEXT)").unwrap();
        c.execute(
            "INSERT INTO t VALUES (?1, ?2)",
            rusqlite::params![
                DpState::RemovalPending,
                StoredPriority(freight_transport::Priority::High)
            ],
        )
        .unwrap();
        let (s, p): (DpState, StoredPriority) = c
            .query_row("SELECT s, p FROM t", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!(s, DpState::RemovalPending);
        assert_eq!(p.0, freight_transport::Priority::High);
        c.execute("UPDATE t SET s = 'bogus'", []).unwrap();
        assert!(
            c.query_row("SELECT s FROM t", [], |r| r.get::<_, DpState>(0))
                .is_err()
        );
    }
}
