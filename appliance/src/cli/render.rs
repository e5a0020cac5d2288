//! Human views of the admin API's answers: tables, detail blocks and one-line confirmations.

use crate::admin::client::mismatch;
use crate::api::{
    AddressInfo, Done, DpDetail, DpInfo, GroupInfo, JobProgress, PackageDetail, PackageInfo,
    PackageStatus, SiteDetail, SiteInfo, StatusMessage, Summary,
};
use crate::cli::error::CliError;
use crate::cli::table::{Table, key_values};
use crate::cli::week;
use freight_core::units::human;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::de::DeserializeOwned;

/// How to show the answer of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// `[DpInfo]` as a table.
    Dps,
    /// `DpInfo` of a DP just added.
    DpAdded,
    /// `DpInfo` after its schedule changed.
    DpScheduled,
    /// `DpDetail`.
    DpDetail,
    /// `[GroupInfo]` as a table.
    Groups,
    /// `GroupInfo` after a change.
    Group,
    /// `[PackageInfo]` as a table.
    Packages,
    /// `PackageInfo` after `create` or `update` (the verb).
    Package(&'static str),
    /// `PackageDetail`.
    PackageDetail,
    /// `[SiteInfo]` as a table.
    Sites,
    /// `SiteInfo` of a parent or child just configured.
    SiteAdded,
    /// `SiteDetail`.
    SiteDetail,
    /// `[AddressInfo]` as a table.
    Addresses,
    /// `AddressInfo` of an address just added.
    AddressAdded,
    /// `AddressInfo` with its week as a grid.
    AddressDetail,
    /// Send requests (`freight sends`, `courier list`) as a table.
    Sends,
    /// `Done`.
    Done,
}

/// Renders `answer` (the API's JSON) as `show` says.
pub fn render(show: Show, answer: serde_json::Value, tz: &TimeZone) -> Result<String, CliError> {
    Ok(match show {
        Show::Dps => dp_table(&typed::<Vec<DpInfo>>(answer)?),
        Show::DpAdded => {
            let d: DpInfo = typed(answer)?;
            format!(
                "DP {} added ({}, {}, key of site {}, fingerprint {})\n",
                d.name, d.kind, d.address, d.key_site, d.fingerprint
            )
        }
        Show::DpScheduled => {
            let d: DpInfo = typed(answer)?;
            format!("DP {}: bandwidth windows {}\n", d.name, d.throttle)
        }
        Show::DpDetail => dp_detail(&typed(answer)?, tz),
        Show::Groups => group_table(&typed::<Vec<GroupInfo>>(answer)?),
        Show::Group => {
            let g: GroupInfo = typed(answer)?;
            format!("group {}: {}\n", g.name, list_or(&g.members, "no members"))
        }
        Show::Packages => package_table(&typed::<Vec<PackageInfo>>(answer)?),
        Show::Package(verb) => {
            let p: PackageInfo = typed(answer)?;
            format!(
                "package {} {verb}: {}, version {}, {} files, {}, hash {}\n",
                p.id,
                p.name,
                p.version,
                p.files,
                human(p.bytes),
                short_hash(&p.hash)
            )
        }
        Show::PackageDetail => package_detail(&typed(answer)?, tz),
        Show::Sites => site_table(&typed::<Vec<SiteInfo>>(answer)?, tz),
        Show::SiteAdded => {
            let s: SiteInfo = typed(answer)?;
            format!(
                "site {} is now the {} of this site (key {}, fingerprint {})\n",
                s.code,
                s.relation,
                s.key,
                opt(&s.fingerprint)
            )
        }
        Show::SiteDetail => site_detail(&typed(answer)?, tz),
        Show::Addresses => address_table(&typed::<Vec<AddressInfo>>(answer)?),
        Show::AddressAdded => {
            let a: AddressInfo = typed(answer)?;
            format!(
                "{} address to site {} added ({}); see its week with `freight address show {} --kind {}`\n",
                a.kind,
                a.site,
                a.endpoint.as_deref().unwrap_or("parcels on media"),
                a.site,
                a.kind
            )
        }
        Show::AddressDetail => address_detail(&typed(answer)?)?,
        Show::Done => {
            let d: Done = typed(answer)?;
            format!("{}\n", d.done)
        }
        Show::Sends => sends_table(&answer),
    })
}

/// Decodes an answer into the type its view needs.
pub fn typed<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, CliError> {
    serde_json::from_value(v).map_err(|e| mismatch("", &e).into())
}

/// Unix seconds as local date and time, e.g. `2026-03-21 14:05:09`.
pub fn local_time(secs: i64, tz: &TimeZone) -> String {
    match Timestamp::from_second(secs) {
        Ok(t) => tz.to_datetime(t).strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => format!("@{secs}"),
    }
}

fn opt_time(secs: Option<i64>, tz: &TimeZone) -> String {
    secs.map_or_else(|| "-".into(), |s| local_time(s, tz))
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), T::to_string)
}

fn list_or(v: &[String], none: &str) -> String {
    if v.is_empty() {
        none.to_string()
    } else {
        v.join(", ")
    }
}

fn short_hash(h: &str) -> &str {
    &h[..h.len().min(16)]
}

/// Send requests: ID, package, version (and its base), destination, the sites it is for,
/// priority, state, attempts, bytes sent, last error.
fn sends_table(rows: &serde_json::Value) -> String {
    let mut t = Table::new(&[
        "ID",
        "PACKAGE",
        "VERSION",
        "TO",
        "FOR SITES",
        "PRIORITY",
        "STATE",
        "ATTEMPTS",
        "SENT",
        "ERROR",
    ])
    .right(&[0, 2, 7, 8]);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    for r in rows.as_array().map(Vec::as_slice).unwrap_or_default() {
        let version = match r["base_version"].as_u64() {
            Some(b) => format!("{} (from {b})", r["version"]),
            None => r["version"].to_string(),
        };
        let sites: Vec<String> = r["sites"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(text)
            .collect();
        t.row(vec![
            r["id"].to_string(),
            text(&r["package"]),
            version,
            text(&r["dest"]),
            sites.join(","),
            text(&r["priority"]),
            text(&r["state"]),
            r["attempts"].to_string(),
            freight_core::units::human(r["bytes_sent"].as_u64().unwrap_or(0)),
            text(&r["error"]),
        ]);
    }
    t.render_or(
        "no send requests; distribute a package to a site below (`freight distribute --site`)",
    )
}

/// Per-DP status: package, DP (`SITE/DP` for a DP of a site below), state, version, last
/// copied, message.
pub fn status_table(rows: &[PackageStatus], tz: &TimeZone) -> String {
    status_rows(rows, tz)
        .render_or("no package is targeted at any DP; target one with `freight distribute`")
}

/// The table of [`status_table`], for callers with their own hint when it is empty.
fn status_rows(rows: &[PackageStatus], tz: &TimeZone) -> Table {
    let mut t = Table::new(&[
        "PACKAGE",
        "DP",
        "STATE",
        "VERSION",
        "LAST COPIED",
        "MESSAGE",
    ])
    .right(&[3]);
    for s in rows {
        t.row(vec![
            s.package.clone(),
            match &s.site {
                Some(site) => format!("{site}/{}", s.dp),
                None => s.dp.clone(),
            },
            s.state.clone(),
            opt(&s.version),
            opt_time(s.last_copied, tz),
            opt(&s.message),
        ]);
    }
    t
}

/// `freight status` without a package: [`status_table`], then, if there are packages, a blank
/// line and [`summary_table`].
pub fn status_and_summary(rows: &[PackageStatus], pkgs: &[PackageInfo], tz: &TimeZone) -> String {
    let mut out = status_table(rows, tz);
    if !pkgs.is_empty() {
        out.push('\n');
        out.push_str(&summary_table(pkgs));
    }
    out
}

/// The DP count columns of a package ([`counts`] are their cells).
const COUNTS: [&str; 4] = ["TARGETED", "INSTALLED", "RETRYING", "FAILED"];

fn counts(s: &Summary) -> [String; 4] {
    [s.targeted, s.installed, s.retrying, s.failed].map(|n| n.to_string())
}

/// Per-package DP counts: Targeted / Installed / Retrying / Failed.
fn summary_table(pkgs: &[PackageInfo]) -> String {
    let mut t = Table::new(&[&["PACKAGE", "NAME", "VERSION"][..], &COUNTS].concat())
        .right(&[2, 3, 4, 5, 6]);
    for p in pkgs {
        let mut row = vec![p.id.clone(), p.name.clone(), p.version.to_string()];
        row.extend(counts(&p.summary));
        t.row(row);
    }
    t.render()
}

fn dp_table(dps: &[DpInfo]) -> String {
    let mut t = Table::new(&[
        "NAME", "KIND", "ADDRESS", "HTTP", "SITE", "THROTTLE", "SOURCES", "GROUPS",
    ]);
    for d in dps {
        t.row(vec![
            d.name.clone(),
            d.kind.clone(),
            d.address.clone(),
            opt(&d.http),
            d.key_site.clone(),
            d.throttle.clone(),
            list_or(&d.sources, "-"),
            list_or(&d.groups, "-"),
        ]);
    }
    t.render_or("no DPs; add one with `freight dp add`")
}

fn dp_detail(d: &DpDetail, tz: &TimeZone) -> String {
    let p = &d.dp;
    let mut out = key_values(&[
        ("DP", format!("{} ({})", p.name, p.kind)),
        ("address", p.address.clone()),
        ("http", opt(&p.http)),
        (
            "key",
            format!("site {}, fingerprint {}", p.key_site, p.fingerprint),
        ),
        ("throttle", p.throttle.clone()),
        ("sources", list_or(&p.sources, "-")),
        ("groups", list_or(&p.groups, "-")),
    ]);
    out.push('\n');
    out.push_str(&status_rows(&d.packages, tz).render_or("no packages targeted at this DP"));
    out
}

fn site_table(sites: &[SiteInfo], tz: &TimeZone) -> String {
    let mut t = Table::new(&[
        "SITE",
        "RELATION",
        "KEY",
        "FINGERPRINT",
        "ADDRESSES",
        "ADDED",
    ]);
    for s in sites {
        t.row(site_row(s, tz));
    }
    t.render()
}

fn site_row(s: &SiteInfo, tz: &TimeZone) -> Vec<String> {
    let addresses: Vec<String> = s.addresses.iter().map(|k| k.to_string()).collect();
    vec![
        s.code.clone(),
        s.relation.clone(),
        s.key.clone(),
        opt(&s.fingerprint),
        list_or(&addresses, "-"),
        opt_time(s.added, tz),
    ]
}

fn site_detail(d: &SiteDetail, tz: &TimeZone) -> String {
    let s = &d.site;
    let mut out = key_values(&[
        ("site", format!("{} ({})", s.code, s.relation)),
        ("key", s.key.clone()),
        ("fingerprint", opt(&s.fingerprint)),
        ("added", opt_time(s.added, tz)),
    ]);
    out.push('\n');
    out.push_str(&address_table(&d.addresses));
    out
}

fn address_table(addrs: &[AddressInfo]) -> String {
    let mut t = Table::new(&[
        "SITE",
        "KIND",
        "ENDPOINT",
        "RETRIES",
        "RETRY DELAY",
        "SENDS",
        "SCHEDULE",
    ]);
    for a in addrs {
        t.row(vec![
            a.site.clone(),
            a.kind.to_string(),
            opt(&a.endpoint),
            a.retries.to_string(),
            duration_ms(a.retry_delay_ms),
            a.max_sends.to_string(),
            a.schedule.clone(),
        ]);
    }
    t.render_or("no addresses; add one with `freight address add SITE --endpoint HOST:PORT`")
}

fn address_detail(a: &AddressInfo) -> Result<String, CliError> {
    let default = |name: &str, v: String| {
        if a.defaults.iter().any(|d| d == name) {
            format!("{v} (site default)")
        } else {
            v
        }
    };
    let mut out = key_values(&[
        ("address", format!("{} ({})", a.site, a.kind)),
        (
            "endpoint",
            a.endpoint
                .clone()
                .unwrap_or_else(|| "- (parcels on media)".into()),
        ),
        ("retries", default("retries", a.retries.to_string())),
        (
            "retry delay",
            default("retry_delay", duration_ms(a.retry_delay_ms)),
        ),
        (
            "sends at once",
            default("max_sends", a.max_sends.to_string()),
        ),
        ("schedule", a.schedule.clone()),
    ]);
    out.push('\n');
    out.push_str(&week::grid(&a.schedule)?);
    Ok(out)
}

/// Milliseconds as the largest whole unit that writes them exactly: `1m`, `90s`, `1500ms`.
fn duration_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(3_600_000, "h"), (60_000, "m"), (1000, "s"), (1, "ms")];
    match UNITS.iter().find(|(n, _)| ms > 0 && ms.is_multiple_of(*n)) {
        Some((n, unit)) => format!("{}{unit}", ms / n),
        None => format!("{ms}ms"),
    }
}

fn group_table(groups: &[GroupInfo]) -> String {
    let mut t = Table::new(&["GROUP", "MEMBERS"]);
    for g in groups {
        t.row(vec![g.name.clone(), list_or(&g.members, "-")]);
    }
    t.render_or("no DP groups; create one with `freight dpgroup create`")
}

fn package_table(pkgs: &[PackageInfo]) -> String {
    let mut t = Table::new(
        &[
            &["PACKAGE", "NAME", "PRIORITY", "VERSION", "FILES", "SIZE"][..],
            &COUNTS,
            &["SOURCE"],
        ]
        .concat(),
    )
    .right(&[3, 4, 5, 6, 7, 8, 9]);
    for p in pkgs {
        let mut row = vec![
            p.id.clone(),
            p.name.clone(),
            p.priority.to_string(),
            p.version.to_string(),
            p.files.to_string(),
            human(p.bytes),
        ];
        row.extend(counts(&p.summary));
        row.push(p.source.clone());
        t.row(row);
    }
    t.render_or("no packages; create one with `freight package create`")
}

fn package_detail(d: &PackageDetail, tz: &TimeZone) -> String {
    let p = &d.package;
    let s = &p.summary;
    let mut out = key_values(&[
        ("package", format!("{} ({})", p.id, p.name)),
        ("source", p.source.clone()),
        ("priority", p.priority.to_string()),
        ("version", format!("{} (hash {})", p.version, p.hash)),
        ("content", format!("{} files, {}", p.files, human(p.bytes))),
        (
            "DPs",
            format!(
                "{} targeted, {} installed, {} retrying, {} failed",
                s.targeted, s.installed, s.retrying, s.failed
            ),
        ),
    ]);
    out.push('\n');
    let mut t = Table::new(&["VERSION", "CREATED", "FILES", "SIZE", "HASH"]).right(&[0, 2, 3]);
    for v in &d.versions {
        t.row(vec![
            v.version.to_string(),
            local_time(v.created, tz),
            v.files.to_string(),
            human(v.bytes),
            short_hash(&v.hash).to_string(),
        ]);
    }
    out.push_str(&t.render());
    out.push('\n');
    out.push_str(
        &status_rows(&d.status, tz)
            .render_or("not targeted at any DP; target it with `freight distribute`"),
    );
    out
}

/// One status message: seq, time, ID, severity, component and its sentence.
pub fn message_line(m: &StatusMessage, tz: &TimeZone) -> String {
    format!(
        "{:>6}  {}  {:>5}  {:<7}  {:<10}  {}",
        m.seq,
        local_time(m.time, tz),
        m.id,
        m.severity,
        m.component,
        m.text
    )
}

/// The label of a copy's progress bar.
pub fn job_label(j: &JobProgress) -> String {
    format!("{} v{} → {}", j.package, j.version, j.dp)
}

/// What a copy is doing, beside its bar.
pub fn job_state(j: &JobProgress) -> String {
    if j.attempts > 1 {
        format!("{} {} (attempt {})", j.action, j.state, j.attempts)
    } else {
        format!("{} {}", j.action, j.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::tz::Offset;

    fn utc() -> TimeZone {
        TimeZone::UTC
    }

    #[test]
    fn times_are_local() {
        assert_eq!(local_time(0, &utc()), "1970-01-01 00:00:00");
        let cet = TimeZone::fixed(Offset::from_hours(2).unwrap());
        assert_eq!(local_time(1_700_000_000, &cet), "2023-11-15 00:13:20");
        assert_eq!(opt_time(None, &utc()), "-");
    }

    fn status(dp: &str, state: &str, version: Option<u32>, copied: Option<i64>) -> PackageStatus {
        PackageStatus {
            package: "PS100001".into(),
            site: None,
            dp: dp.into(),
            state: state.into(),
            version,
            last_copied: copied,
            message: None,
            last_bytes: None,
        }
    }

    #[test]
    fn status_table_has_one_row_per_dp() {
        let rows = [
            status("dp1", "Installed", Some(2), Some(60)),
            status("branch-7", "Install Pending", None, None),
        ];
        assert_eq!(
            status_table(&rows, &utc()),
            "PACKAGE   DP        STATE            VERSION  LAST COPIED          MESSAGE\n\
             PS100001  dp1       Installed              2  1970-01-01 00:01:00  -\n\
             PS100001  branch-7  Install Pending        -  -                    -\n"
        );
        assert!(status_table(&[], &utc()).starts_with("no package"));
    }

    #[test]
    fn summary_counts_per_package() {
        let p = PackageInfo {
            id: "PS100001".into(),
            name: "tools".into(),
            source: "/src".into(),
            priority: crate::api::Priority::Medium,
            version: 3,
            hash: "ab".repeat(32),
            files: 10,
            bytes: 2048,
            summary: Summary {
                targeted: 4,
                installed: 2,
                retrying: 1,
                failed: 1,
            },
        };
        assert_eq!(
            summary_table(std::slice::from_ref(&p)),
            "PACKAGE   NAME   VERSION  TARGETED  INSTALLED  RETRYING  FAILED\n\
             PS100001  tools        3         4          2         1       1\n"
        );
        let line = render(
            Show::Package("created"),
            serde_json::to_value(&p).unwrap(),
            &utc(),
        )
        .unwrap();
        assert_eq!(
            line,
            "package PS100001 created: tools, version 3, 10 files, 2.0 KiB, hash abababababababab\n"
        );
    }

    #[test]
    fn durations_use_the_largest_exact_unit() {
        assert_eq!(duration_ms(60_000), "1m");
        assert_eq!(duration_ms(90_000), "90s");
        assert_eq!(duration_ms(1500), "1500ms");
        assert_eq!(duration_ms(7_200_000), "2h");
        assert_eq!(duration_ms(0), "0ms");
    }

    #[test]
    fn an_address_shows_its_settings_and_its_week() {
        let a = AddressInfo {
            site: "SS1".into(),
            kind: crate::api::SenderKind::Standard,
            endpoint: Some("10.0.0.5:4433".into()),
            schedule: "Sat-Sun closed".into(),
            retries: 2,
            retry_delay_ms: 60_000,
            max_sends: 5,
            defaults: vec!["retries".into(), "retry_delay".into()],
        };
        let out = render(
            Show::AddressDetail,
            serde_json::to_value(&a).unwrap(),
            &utc(),
        )
        .unwrap();
        assert!(out.contains("retries        2 (site default)"), "{out}");
        assert!(out.contains("retry delay    1m (site default)"), "{out}");
        assert!(out.contains("sends at once  5\n"), "{out}");
        assert!(out.contains("\nSat  -- --"), "{out}");
        assert!(out.contains("\nMon  A. A."), "{out}");
    }

    #[test]
    fn a_mismatched_answer_is_one_line() {
        let e = render(Show::Dps, serde_json::json!({"x": 1}), &utc()).unwrap_err();
        assert!(!e.to_string().contains('\n'));
        assert!(e.to_string().contains("same version as freightd"));
    }

    #[test]
    fn messages_and_jobs_read_as_lines() {
        let m = StatusMessage {
            seq: 42,
            id: 2330,
            severity: "info".into(),
            component: "DistMgr".into(),
            site: "PS1".into(),
            time: 0,
            package: Some("PS100001".into()),
            dp: Some("dp1".into()),
            version: Some(1),
            strings: vec![],
            text: "Package PS100001 is installed on dp1.".into(),
        };
        assert_eq!(
            message_line(&m, &utc()),
            "    42  1970-01-01 00:00:00   2330  info     DistMgr     Package PS100001 is \
             installed on dp1."
        );
        let j = JobProgress {
            package: "PS100001".into(),
            version: 2,
            dp: "dp1".into(),
            action: "install".into(),
            state: "retrying".into(),
            attempts: 3,
            total: 10,
            done: 5,
        };
        assert_eq!(job_label(&j), "PS100001 v2 → dp1");
        assert_eq!(job_state(&j), "install retrying (attempt 3)");
    }
}
