//! Listings for people (the dashboard, the API, `gapless identity list`): identities and
//! pipelines read a page at a time by keyset (after the last row shown, never by offset),
//! with what each row shows about its pipelines, incidents or ledger read for the whole
//! page in one query each. A page costs the same at ten rows and at a hundred thousand.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use gapless_core::{Identity, IdentityId, IncidentId, LedgerEntry, Pipeline, PipelineId, Window};
use sqlx::any::AnyRow;

use crate::{
    Store, StoreError,
    codec::{get_i64, get_id, get_opt_ts, get_str, ts},
};

/// Pipelines (or pipeline streams) whose ledger summaries one query reads.
const SUMMARY_CHUNK: usize = 100;

/// The largest page [`Store::identities_page`] returns.
pub const MAX_IDENTITY_PAGE: u32 = 1_000;

/// The order of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityOrder {
    /// By label.
    Label,
    /// Those that need a person first: waiting for reauthorization, then degraded or
    /// expiring, then the others; each group by label.
    AttentionFirst,
}

/// Health states listed before the others by [`IdentityOrder::AttentionFirst`], with
/// their group; every other state is in [`LAST_GROUP`].
const ATTENTION_GROUPS: &[(&str, u8)] = &[("needs_reauth", 0), ("degraded", 1), ("expiring", 1)];
const LAST_GROUP: u8 = 2;

/// The groups of a listing in order: (group, condition on the health state).
fn listing_groups(order: IdentityOrder) -> Vec<(u8, String)> {
    let quoted = |states: Vec<&str>| {
        states
            .iter()
            .map(|state| format!("'{state}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match order {
        IdentityOrder::Label => vec![(0, "1 = 1".to_string())],
        IdentityOrder::AttentionFirst => {
            let mut groups: Vec<(u8, String)> = (0..LAST_GROUP)
                .map(|group| {
                    let states = ATTENTION_GROUPS
                        .iter()
                        .filter(|(_, g)| *g == group)
                        .map(|(state, _)| *state)
                        .collect();
                    (group, format!("health_state IN ({})", quoted(states)))
                })
                .collect();
            let all = ATTENTION_GROUPS.iter().map(|(state, _)| *state).collect();
            groups.push((LAST_GROUP, format!("health_state NOT IN ({})", quoted(all))));
            groups
        }
    }
}

/// Where the next page starts: after the identity with this group and label (labels are
/// unique). The group is 0 in label order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityCursor {
    pub group: u8,
    pub label: String,
}

/// One page of a listing; `next` is set when more follow.
#[derive(Debug)]
pub struct IdentityPage {
    pub identities: Vec<Identity>,
    /// Rows of this page that cannot be read: (id, why). They are skipped, not fatal.
    pub unreadable: Vec<(String, StoreError)>,
    pub next: Option<IdentityCursor>,
}

/// One page of pipelines by name; `next` (the last name) is set when more follow.
#[derive(Debug, Clone)]
pub struct PipelinePage {
    pub pipelines: Vec<Pipeline>,
    pub next: Option<String>,
}

/// Where a newest-first listing (incidents, messages) stopped: the last row's instant and
/// id. Written as `<RFC 3339 instant>~<id>` for an API's `next_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeCursor {
    pub at: DateTime<Utc>,
    pub id: String,
}

impl std::fmt::Display for TimeCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}~{}", ts(self.at), self.id)
    }
}

impl std::str::FromStr for TimeCursor {
    type Err = String;

    /// A cursor this store wrote; anything else is refused with what is wrong.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (at, id) = text
            .split_once('~')
            .ok_or_else(|| format!("{text:?} is not a cursor of this listing (instant~id)"))?;
        let at = DateTime::parse_from_rfc3339(at)
            .map_err(|e| format!("{at:?} is not an RFC 3339 instant: {e}"))?
            .with_timezone(&Utc);
        let good = |c: char| c.is_ascii_alphanumeric() || c == '-';
        if id.is_empty() || id.len() > 64 || !id.chars().all(good) {
            return Err(format!("{id:?} is not an id"));
        }
        Ok(Self {
            at,
            id: id.to_string(),
        })
    }
}

/// One page of a newest-first listing; `next` is set when more follow.
#[derive(Debug, Clone)]
pub struct TimePage<T> {
    pub rows: Vec<T>,
    pub next: Option<TimeCursor>,
}

/// Read one page of `table` newest first by (`at_column`, id), after `after`, with
/// `filter` (this store's SQL, never outside input); `decode` reads a row, `key` gives a
/// row's (instant, id) for the cursor.
pub(crate) async fn time_page<T>(
    store: &Store,
    query: TimeQuery<'_>,
    after: Option<&TimeCursor>,
    limit: u32,
    decode: impl Fn(&AnyRow) -> Result<T, StoreError>,
    key: impl Fn(&T) -> TimeCursor,
) -> Result<TimePage<T>, StoreError> {
    let limit = limit.clamp(1, MAX_IDENTITY_PAGE);
    let TimeQuery {
        table,
        columns,
        at_column,
        filter,
    } = query;
    let (cursor, limit_param) = if after.is_some() {
        (format!("AND ({at_column}, id) < ($1, $2)"), "$3")
    } else {
        (String::new(), "$1")
    };
    let sql = format!(
        "SELECT {columns} FROM {table} WHERE {filter} {cursor} \
         ORDER BY {at_column} DESC, id DESC LIMIT {limit_param}"
    );
    let mut q = sqlx::query(&sql);
    if let Some(after) = after {
        q = q.bind(ts(after.at)).bind(after.id.clone());
    }
    let rows = q.bind(i64::from(limit) + 1).fetch_all(store.pool()).await?;
    let mut page = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    let more = page.len() > limit as usize;
    page.truncate(limit as usize);
    let next = more.then(|| page.last().map(&key)).flatten();
    Ok(TimePage { rows: page, next })
}

/// What [`time_page`] reads.
pub(crate) struct TimeQuery<'a> {
    pub table: &'static str,
    pub columns: &'a str,
    pub at_column: &'static str,
    pub filter: &'static str,
}

/// What a listing shows of a pipeline's ledger.
#[derive(Debug, Clone, Default)]
pub struct LedgerSummary {
    /// Windows by state name (`loaded`, `missing`, …).
    pub counts: BTreeMap<String, usize>,
    /// The latest window loaded (of any stream).
    pub last_loaded: Option<Window>,
    /// The entries of windows that start at or after the `since` asked for, by stream and
    /// window.
    pub recent: Vec<LedgerEntry>,
}

/// `sql` with the ids of `pipelines` bound as `$1, $2, …`.
fn with_ids<'q>(
    sql: &'q str,
    pipelines: &[PipelineId],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut query = sqlx::query(sql);
    for id in pipelines {
        query = query.bind(id.to_string());
    }
    query
}

/// `$first, $first+1, …` for `count` values.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Up to `limit` identities (at most [`MAX_IDENTITY_PAGE`]) in `order`, after `after`.
    pub async fn identities_page(
        &self,
        order: IdentityOrder,
        after: Option<&IdentityCursor>,
        limit: u32,
    ) -> Result<IdentityPage, StoreError> {
        let limit = limit.clamp(1, MAX_IDENTITY_PAGE) as usize;
        // Each group is read by label after the cursor, the next group only while the
        // page is not full: the label's index serves the large last group, the index on
        // health state the others (so a page costs what it shows, not every identity).
        let mut rows: Vec<(u8, AnyRow)> = Vec::new();
        for (group, condition) in listing_groups(order) {
            let cursor = after.filter(|c| c.group == group);
            if after.is_some_and(|c| c.group > group) {
                continue;
            }
            let sql = format!(
                "SELECT {}, health_state FROM identities WHERE {condition}{} ORDER BY label LIMIT {}",
                crate::identities::COLUMNS,
                if cursor.is_some() {
                    " AND label > $1"
                } else {
                    ""
                },
                limit + 1 - rows.len()
            );
            let mut query = sqlx::query(&sql);
            if let Some(cursor) = cursor {
                query = query.bind(cursor.label.clone());
            }
            for row in query.fetch_all(self.pool()).await? {
                rows.push((group, row));
            }
            if rows.len() > limit {
                break;
            }
        }
        let more = rows.len() > limit;
        rows.truncate(limit);
        // The cursor is read from the last row itself, so an unreadable row is passed too.
        let next = match rows.last() {
            Some((group, last)) if more => Some(IdentityCursor {
                group: *group,
                label: get_str(last, "label")?,
            }),
            _ => None,
        };
        let crate::identities::Checked {
            identities,
            unreadable,
        } = crate::identities::checked(rows.into_iter().map(|(_, row)| row).collect());
        Ok(IdentityPage {
            identities,
            unreadable,
            next,
        })
    }

    /// Up to `limit` pipelines (at most [`MAX_IDENTITY_PAGE`]) by name, after `after`.
    pub async fn pipelines_page(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<PipelinePage, StoreError> {
        let limit = limit.clamp(1, MAX_IDENTITY_PAGE);
        let sql = format!(
            "SELECT {} FROM pipelines{} ORDER BY name LIMIT {}",
            crate::pipelines::COLUMNS,
            if after.is_some() {
                " WHERE name > $1"
            } else {
                ""
            },
            u64::from(limit) + 1
        );
        let mut query = sqlx::query(&sql);
        if let Some(after) = after {
            query = query.bind(after.to_string());
        }
        let mut pipelines = query
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(crate::pipelines::pipeline_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let more = pipelines.len() > limit as usize;
        pipelines.truncate(limit as usize);
        let next = more
            .then(|| pipelines.last().map(|p| p.name.clone()))
            .flatten();
        Ok(PipelinePage { pipelines, next })
    }

    /// The ledger summaries of `pipelines`, each with its recent entries from its own
    /// `since` on: three queries for a hundred of them (window counts, kept by the database
    /// with the ledger; last loaded; recent, one bounded range of the ledger's key per
    /// pipeline and stream).
    pub async fn ledger_summaries(
        &self,
        pipelines: &[(&Pipeline, DateTime<Utc>)],
    ) -> Result<HashMap<PipelineId, LedgerSummary>, StoreError> {
        let mut found: HashMap<PipelineId, LedgerSummary> = HashMap::new();
        for chunk in pipelines.chunks(SUMMARY_CHUNK) {
            let chunk: Vec<PipelineId> = chunk.iter().map(|(p, _)| p.id).collect();
            let chunk = chunk.as_slice();
            let list = placeholders(1, chunk.len());
            let counts = format!(
                "SELECT pipeline_id, state, n FROM window_counts WHERE pipeline_id IN ({list}) AND n > 0"
            );
            for row in with_ids(&counts, chunk).fetch_all(self.pool()).await? {
                let n = usize::try_from(get_i64(&row, "n")?).unwrap_or(0);
                found
                    .entry(get_id(&row, "pipeline_id")?)
                    .or_default()
                    .counts
                    .insert(get_str(&row, "state")?, n);
            }
            // Each pipeline's latest loaded window, from the end of the index on state (one
            // entry each, however long the ledger).
            let latest = "FROM ledger l WHERE l.pipeline_id = p.id AND l.state = 'loaded' \
                          ORDER BY l.window_start DESC LIMIT 1";
            let loaded = format!(
                "SELECT p.id AS pipeline_id, (SELECT l.window_start {latest}) AS window_start, \
                 (SELECT l.window_end {latest}) AS window_end FROM pipelines p WHERE p.id IN ({list})"
            );
            for row in with_ids(&loaded, chunk).fetch_all(self.pool()).await? {
                let (Some(start), Some(end)) = (
                    get_opt_ts(&row, "window_start")?,
                    get_opt_ts(&row, "window_end")?,
                ) else {
                    continue;
                };
                found
                    .entry(get_id(&row, "pipeline_id")?)
                    .or_default()
                    .last_loaded = Some(Window::new(start, end));
            }
        }
        // The recent windows of each (pipeline, stream) from the pipeline's own `since`: a
        // range of the ledger's key each, however long the ledger is.
        let asked: Vec<(PipelineId, &str, DateTime<Utc>)> = pipelines
            .iter()
            .flat_map(|(p, since)| p.streams.iter().map(|s| (p.id, s.as_str(), *since)))
            .collect();
        for part in asked.chunks(SUMMARY_CHUNK) {
            let ranges = (0..part.len())
                .map(|i| {
                    format!(
                        "(pipeline_id = ${} AND stream = ${} AND window_start >= ${})",
                        3 * i + 1,
                        3 * i + 2,
                        3 * i + 3
                    )
                })
                .collect::<Vec<_>>()
                .join(" OR ");
            let recent = format!(
                "SELECT pipeline_id, stream, window_start, window_end, detail, attempts, updated_at \
                 FROM ledger WHERE {ranges} ORDER BY pipeline_id, stream, window_start"
            );
            let mut query = sqlx::query(&recent);
            for (pipeline, stream, since) in part {
                query = query
                    .bind(pipeline.to_string())
                    .bind(stream.to_string())
                    .bind(ts(*since));
            }
            for row in query.fetch_all(self.pool()).await? {
                let entry = crate::ledger::entry_from_row(&row)?;
                found.entry(entry.pipeline).or_default().recent.push(entry);
            }
        }
        Ok(found)
    }

    /// The pipelines that use any of `identities` (as source or destination), by name.
    pub async fn pipelines_using_any(
        &self,
        identities: &[IdentityId],
    ) -> Result<Vec<Pipeline>, StoreError> {
        let sql = format!(
            "SELECT {} FROM pipelines WHERE source_identity_id IN ({{ids}}) OR destination_identity_id IN ({{ids}}) ORDER BY name",
            crate::pipelines::COLUMNS
        );
        self.rows_for_ids(&sql, identities)
            .await?
            .iter()
            .map(crate::pipelines::pipeline_from_row)
            .collect()
    }

    /// The label of each of `identities` that exists.
    pub async fn identity_labels(
        &self,
        identities: &[IdentityId],
    ) -> Result<HashMap<IdentityId, String>, StoreError> {
        self.rows_for_ids(
            "SELECT id, label FROM identities WHERE id IN ({ids})",
            identities,
        )
        .await?
        .iter()
        .map(|row| Ok((get_id(row, "id")?, get_str(row, "label")?)))
        .collect()
    }

    /// The open incident of each of `identities` that has one.
    pub async fn open_incidents_of(
        &self,
        identities: &[IdentityId],
    ) -> Result<HashMap<IdentityId, IncidentId>, StoreError> {
        self.rows_for_ids(
            "SELECT identity_id, id FROM incidents WHERE closed_at IS NULL AND identity_id IN ({ids})",
            identities,
        )
        .await?
        .iter()
        .map(|row| Ok((get_id(row, "identity_id")?, get_id(row, "id")?)))
        .collect()
    }

    /// The rows of `sql`, whose `{ids}` stands for the ids of `identities`, read
    /// [`MAX_IDENTITY_PAGE`] ids at a time.
    async fn rows_for_ids(
        &self,
        sql: &str,
        identities: &[IdentityId],
    ) -> Result<Vec<AnyRow>, StoreError> {
        let mut rows = Vec::new();
        for chunk in identities.chunks(MAX_IDENTITY_PAGE as usize) {
            let sql = sql.replace("{ids}", &placeholders(1, chunk.len()));
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.to_string());
            }
            rows.extend(query.fetch_all(self.pool()).await?);
        }
        Ok(rows)
    }
}
