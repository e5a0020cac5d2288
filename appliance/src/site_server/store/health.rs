//! What the health endpoint and the Prometheus metrics read from the site database: queue
//! depths, jobs and sends by state, bytes sent per route. Counted in one read transaction, so
//! the numbers of one scrape agree with each other.

use super::{Db, Result};

/// Every state a distribution job can be in (the schema's CHECK), so a metric shows each one,
/// zeros included, and a dashboard never loses a series when its count drops to none.
pub const JOB_STATES: [&str; 5] = ["queued", "running", "retrying", "done", "failed"];
/// Every state of a send request (the schema's CHECK).
pub const SEND_STATES: [&str; 7] = [
    "queued",
    "sending",
    "retrying",
    "sent",
    "failed",
    "pending",
    "confirmed",
];

/// One scrape's view of the site database.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthCounts {
    /// Distribution jobs (PkgXferMgr → DP) per state, in [`JOB_STATES`] order.
    pub jobs: Vec<(&'static str, u64)>,
    /// Send requests (Sender → child site) per state, in [`SEND_STATES`] order.
    pub sends: Vec<(&'static str, u64)>,
    /// DistMgr's inbox: DP targets not planned yet.
    pub dp_targets_pending: u64,
    /// DistMgr's inbox: site targets not planned yet.
    pub site_targets_pending: u64,
    /// Bytes pushed to each DP by its distribution jobs (the DP route), by DP name.
    pub bytes_to_dps: Vec<(String, u64)>,
    /// Bytes sent to each child site by its send requests (the address route), by site code.
    pub bytes_to_sites: Vec<(String, u64)>,
    /// Packages not deleted.
    pub packages: u64,
    /// DP copies whose status is Installed.
    pub installed_copies: u64,
}

impl Db<'_> {
    /// The counts of [`HealthCounts`].
    pub fn health_counts(&self) -> Result<HealthCounts> {
        let by_state = |sql: &str, states: &[&'static str]| -> Result<Vec<(&'static str, u64)>> {
            let mut st = self.c.prepare(sql)?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut found = Vec::new();
            for row in rows {
                found.push(row?);
            }
            Ok(states
                .iter()
                .map(|s| {
                    let n = found.iter().find(|(f, _)| f == s).map_or(0, |(_, n)| *n);
                    (*s, n as u64)
                })
                .collect())
        };
        let per_route = |sql: &str| -> Result<Vec<(String, u64)>> {
            let mut st = self.c.prepare(sql)?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (k, v) = row?;
                out.push((k, v as u64));
            }
            Ok(out)
        };
        let count = |sql: &str| -> Result<u64> {
            Ok(self.c.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
        };
        Ok(HealthCounts {
            jobs: by_state(
                "SELECT state, count(*) FROM distribution_jobs GROUP BY state",
                &JOB_STATES,
            )?,
            sends: by_state(
                "SELECT state, count(*) FROM send_requests GROUP BY state",
                &SEND_STATES,
            )?,
            dp_targets_pending: count(
                "SELECT count(*) FROM package_targets WHERE action != 'none'",
            )?,
            site_targets_pending: count(
                "SELECT count(*) FROM site_targets WHERE action != 'none'",
            )?,
            // Every DP, even one nothing was sent to yet: its series starts at 0.
            bytes_to_dps: per_route(
                "SELECT d.name, COALESCE(SUM(j.bytes_sent), 0) FROM dps d
                 LEFT JOIN distribution_jobs j ON j.dp = d.name GROUP BY d.name ORDER BY d.name",
            )?,
            bytes_to_sites: per_route(
                "SELECT dest, COALESCE(SUM(bytes_sent), 0) FROM send_requests
                 GROUP BY dest ORDER BY dest",
            )?,
            packages: count("SELECT count(*) FROM packages WHERE deleted = 0")?,
            installed_copies: count(
                "SELECT count(*) FROM package_dp_status WHERE state = 'installed'",
            )?,
        })
    }
}
