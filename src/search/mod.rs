//! Full-text search over recordings, kept in the store so every gateway on a shared PostgreSQL
//! sees it: SQLite FTS5 or PostgreSQL full-text search (`simple` configuration) behind one
//! interface. Each indexed row is one line of a recording's transcript (reconstructed command
//! lines, output with escape sequences stripped, the exec command, the gateway's notes on
//! transfers) with its offset in seconds. [`indexer`] feeds it as recordings are written.

pub mod follow;
pub mod indexer;

pub use indexer::{reindex, start};

use serde::Serialize;
use sqlx::Row;

use crate::app::App;
use crate::store::Backend;

/// Most hits a search returns.
pub const MAX_HITS: i64 = 2000;

/// Search filters.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Words (matched as a phrase).
    pub text: String,
    /// Target name glob.
    pub target: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// User organisation.
    pub org: Option<String>,
    /// Sessions started at or after (Unix seconds).
    pub since: Option<i64>,
    /// ... and before.
    pub until: Option<i64>,
    /// End reason (closed, killed, expired, idle, error…).
    pub reason: Option<String>,
}

/// One line that matched.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    /// Seconds into the recording.
    pub offset: f64,
    /// `in`, `out`, `cmd` or `note`.
    pub kind: String,
    /// The line.
    pub text: String,
}

/// A session with hits.
#[derive(Debug, Clone, Serialize)]
pub struct SessionHits {
    /// Session id.
    pub session: String,
    /// User.
    pub user: String,
    /// Organisation.
    pub org: Option<String>,
    /// Target.
    pub target: String,
    /// Start (Unix seconds).
    pub started_at: i64,
    /// How it ended.
    pub end_reason: Option<String>,
    /// Matching lines in time order.
    pub hits: Vec<Hit>,
}

/// The phrase as an FTS5 query (a quoted string: no operators reach FTS5).
fn fts5_phrase(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// Runs a search; sessions newest first, each with its hits in time order. At most
/// [`MAX_HITS`] lines come back (the most recently indexed ones).
pub async fn search(app: &App, q: &Query) -> anyhow::Result<Vec<SessionHits>> {
    if q.text.trim().is_empty() {
        anyhow::bail!("give words to search for");
    }
    let (from, matcher, needle) = match app.store.backend() {
        Backend::Sqlite => (
            "recording_fts JOIN recording_text r ON r.id = recording_fts.rowid",
            "recording_fts MATCH $1",
            fts5_phrase(q.text.trim()),
        ),
        Backend::Postgres => ("recording_text r", "r.tsv @@ phraseto_tsquery('simple', $1)", q.text.trim().to_string()),
    };
    let mut sql = format!(
        "SELECT r.session_id, r.t, r.kind, r.text, u.name, u.org, tg.name, s.started_at, s.end_reason \
         FROM {from} JOIN sessions s ON s.id = r.session_id LEFT JOIN users u ON u.id = s.user_id \
         LEFT JOIN targets tg ON tg.id = s.target_id WHERE {matcher}"
    );
    let mut n = 1;
    let mut add = |sql: &mut String, cond: &str| {
        n += 1;
        sql.push_str(&format!(" AND {}", cond.replace('?', &format!("${n}"))));
    };
    if q.user.is_some() {
        add(&mut sql, "u.name = ?");
    }
    if q.org.is_some() {
        add(&mut sql, "u.org = ?");
    }
    if q.since.is_some() {
        add(&mut sql, "s.started_at >= ?");
    }
    if q.until.is_some() {
        add(&mut sql, "s.started_at < ?");
    }
    if q.reason.is_some() {
        add(&mut sql, "s.end_reason = ?");
    }
    // Newest indexed lines first: both full-text indexes walk their matches in row order, so
    // the limit stops the walk early even when a common word matches millions of lines.
    let order = match app.store.backend() {
        Backend::Sqlite => "recording_fts.rowid DESC",
        Backend::Postgres => "r.id DESC",
    };
    sql.push_str(&format!(" ORDER BY {order} LIMIT {MAX_HITS}"));
    let mut query = sqlx::query(&sql).bind(needle);
    for v in [&q.user, &q.org].into_iter().flatten() {
        query = query.bind(v.clone());
    }
    for v in [q.since, q.until].into_iter().flatten() {
        query = query.bind(v);
    }
    if let Some(r) = &q.reason {
        query = query.bind(r.clone());
    }
    let rows = query.fetch_all(app.store.pool()).await?;
    let mut out: Vec<SessionHits> = Vec::new();
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for r in &rows {
        let session: String = r.try_get(0)?;
        let target: String = r.try_get::<Option<String>, _>(6)?.unwrap_or_default();
        if let Some(g) = &q.target {
            if !crate::policy::glob_match(g, &target) {
                continue;
            }
        }
        let hit = Hit { offset: r.try_get(1)?, kind: r.try_get(2)?, text: r.try_get(3)? };
        match at.get(&session) {
            Some(&i) => out[i].hits.push(hit),
            None => {
                at.insert(session.clone(), out.len());
                out.push(SessionHits {
                    session,
                    user: r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
                    org: r.try_get(5)?,
                    target,
                    started_at: r.try_get(7)?,
                    end_reason: r.try_get(8)?,
                    hits: vec![hit],
                });
            }
        }
    }
    for s in &mut out {
        s.hits.sort_by(|a, b| a.offset.total_cmp(&b.offset));
    }
    out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| a.session.cmp(&b.session)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_are_quoted() {
        assert_eq!(fts5_phrase("write_register"), "\"write_register\"");
        assert_eq!(fts5_phrase("a\" OR b"), "\"a\"\" OR b\"");
    }
}
