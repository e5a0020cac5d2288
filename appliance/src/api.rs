//! The admin API's contract: paths and JSON bodies shared by `freightd` (server) and the
//! `freight` CLI (client). HTTP/1.1 with JSON bodies on the site server's Unix socket.
//!
//! ```text
//! GET    /v1/dps                          → [DpInfo]
//! POST   /v1/dps                AddDp     → DpInfo
//! GET    /v1/dps/{name}                   → DpDetail
//! DELETE /v1/dps/{name}                   → Done           (refused while it holds packages)
//! PUT    /v1/dps/{name}/schedule SetSchedule → DpInfo
//! GET    /v1/dpgroups                     → [GroupInfo]
//! POST   /v1/dpgroups           AddGroup  → GroupInfo
//! DELETE /v1/dpgroups/{name}              → Done
//! POST   /v1/dpgroups/{name}/members  Members → GroupInfo  (add)
//! DELETE /v1/dpgroups/{name}/members/{dp}     → GroupInfo
//! GET    /v1/packages                     → [PackageInfo]
//! POST   /v1/packages           CreatePackage → PackageInfo   (snapshots the source)
//! GET    /v1/packages/{id}                → PackageDetail
//! POST   /v1/packages/{id}/update         → PackageInfo   (new version from the source)
//! DELETE /v1/packages/{id}?dp=NAME        → Done          (remove from one DP, or all)
//! POST   /v1/packages/{id}/distribute  Targets → Done
//! POST   /v1/packages/{id}/redistribute Targets → Done   (exactly one DP)
//! POST   /v1/packages/{id}/validate     Targets → Done   (no DP named: every DP holding it)
//! GET    /v1/status?package=ID            → [PackageStatus]
//! GET    /v1/messages?package=ID&since=N  → [StatusMessage] (since: message sequence number)
//! GET    /v1/progress                     → [JobProgress]  (running copies, for `watch`)
//! GET    /v1/sites                        → [SiteInfo]     (this site, its parent, its children)
//! POST   /v1/sites/children     AddSite   → SiteInfo       (add a child, trust its key as child)
//! PUT    /v1/sites/parent       AddSite   → SiteInfo       (set the parent, trust its key as parent)
//! GET    /v1/sites/{code}                 → SiteDetail
//! DELETE /v1/sites/{code}                 → Done           (a child with addresses is refused)
//! GET    /v1/addresses                    → [AddressInfo]
//! POST   /v1/addresses          AddAddress → AddressInfo
//! GET    /v1/addresses/{site}?kind=K      → AddressInfo    (kind may be left out when the site
//! PUT    /v1/addresses/{site}/schedule?kind=K AddressSchedule → AddressInfo   has one address)
//! DELETE /v1/addresses/{site}?kind=K      → Done
//! ```
//! Errors answer 4xx/5xx with [`ApiError`]: one line naming the object and the fix; every
//! error, including a malformed request, is answered in that JSON form. Request bodies are
//! strict: an unknown field is refused by name, so a typo never becomes a default.

pub use crate::model::SenderKind;
pub use freight_transport::Priority;
use serde::{Deserialize, Serialize};

/// Version prefix of every path.
pub const PREFIX: &str = "/v1";

/// An error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// One line naming the object and the fix.
    pub error: String,
}

/// A success without content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    /// What was done, one line.
    pub done: String,
}

/// `courier create-outgoing` and `courier receive`: the parcel file, an absolute path.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParcelPath {
    /// Absolute path of the parcel file.
    pub path: String,
}

/// `dp add`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDp {
    /// The DP's name (unique at the site).
    pub name: String,
    /// `standard` or `pull`.
    pub kind: String,
    /// The DP's QUIC address (`host:port`).
    pub address: String,
    /// The DP's HTTP content address (`host:port`), shown to users.
    pub http: Option<String>,
    /// The DP's public identity in its text form (`freight site identity export`); imported
    /// into the site's trust store.
    pub identity: String,
    /// Pull DPs: source DP names, best first.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Bandwidth windows in the compact text form (default: unlimited, always open).
    pub throttle: Option<String>,
}

/// `dp schedule`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSchedule {
    /// Bandwidth windows in the compact text form.
    pub throttle: String,
}

/// One DP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DpInfo {
    /// Name.
    pub name: String,
    /// `standard` or `pull`.
    pub kind: String,
    /// QUIC address.
    pub address: String,
    /// HTTP content address, when known.
    pub http: Option<String>,
    /// The site code its key carries.
    pub key_site: String,
    /// Its key's fingerprint.
    pub fingerprint: String,
    /// Bandwidth windows (compact text).
    pub throttle: String,
    /// Pull DPs: sources, best first.
    pub sources: Vec<String>,
    /// Groups it belongs to.
    pub groups: Vec<String>,
}

/// `dp show`: a DP and its packages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpDetail {
    /// The DP.
    pub dp: DpInfo,
    /// Status of every package targeted at it.
    pub packages: Vec<PackageStatus>,
}

/// `dpgroup create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddGroup {
    /// Group name.
    pub name: String,
    /// Initial members.
    #[serde(default)]
    pub members: Vec<String>,
}

/// `dpgroup add`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Members {
    /// DP names.
    pub dps: Vec<String>,
}

/// One DP group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupInfo {
    /// Name.
    pub name: String,
    /// Member DPs.
    pub members: Vec<String>,
}

/// `package create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePackage {
    /// Display name.
    pub name: String,
    /// Source folder (absolute path on the site server).
    pub source: String,
    /// `low`, `medium` (default) or `high`.
    pub priority: Option<Priority>,
}

/// One package.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackageInfo {
    /// Package ID (`PS100001`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Source folder.
    pub source: String,
    /// Priority on bandwidth windows.
    pub priority: Priority,
    /// Newest version.
    pub version: u32,
    /// Hex BLAKE3 of the newest version's manifest (the package hash).
    pub hash: String,
    /// Files in the newest version.
    pub files: u64,
    /// Bytes in the newest version.
    pub bytes: u64,
    /// DP counts.
    pub summary: Summary,
}

/// A package's DP counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// DPs targeted (not removed).
    pub targeted: u32,
    /// Installed at the newest version.
    pub installed: u32,
    /// Install pending or retrying.
    pub retrying: u32,
    /// Failed.
    pub failed: u32,
}

/// `package show`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackageDetail {
    /// The package.
    pub package: PackageInfo,
    /// Its versions, newest last.
    pub versions: Vec<VersionInfo>,
    /// Status per DP.
    pub status: Vec<PackageStatus>,
}

/// One stored version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionInfo {
    /// Version number.
    pub version: u32,
    /// Hex manifest hash.
    pub hash: String,
    /// Files.
    pub files: u64,
    /// Bytes.
    pub bytes: u64,
    /// Unix seconds.
    pub created: i64,
}

/// `distribute`, `redistribute`, `validate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// DP names.
    #[serde(default)]
    pub dps: Vec<String>,
    /// DP group names (distribute only).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Sites below this one (distribute only): every DP there gets the package, which travels
    /// to the site through the Sender.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<String>,
}

/// A package's status on one DP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackageStatus {
    /// Package ID.
    pub package: String,
    /// The DP's site when it is a site below this one (as its reports give it); none for
    /// this site's own DPs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// DP name.
    pub dp: String,
    /// `Install Pending`, `Retrying`, `Installed`, `Failed`, `Removal Pending`, `Removed`.
    pub state: String,
    /// Version the DP holds (verified), if any.
    pub version: Option<u32>,
    /// Unix seconds of the last completed copy.
    pub last_copied: Option<i64>,
    /// The last message about it, one line.
    pub message: Option<String>,
    /// Stored bytes the last finished copy sent (what the DP lacked).
    #[serde(default)]
    pub last_bytes: Option<u64>,
}

/// A status message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusMessage {
    /// Sequence number (for `--since`).
    pub seq: i64,
    /// Message ID (SPEC §7).
    pub id: u32,
    /// `info`, `warning` or `error`.
    pub severity: String,
    /// Component that raised it.
    pub component: String,
    /// Site code.
    pub site: String,
    /// Unix seconds.
    pub time: i64,
    /// Package ID (attribute 400).
    pub package: Option<String>,
    /// DP (attribute 404).
    pub dp: Option<String>,
    /// Version (attribute 410).
    pub version: Option<u32>,
    /// Insertion strings.
    pub strings: Vec<String>,
    /// The message rendered as a sentence.
    pub text: String,
}

/// A copy in progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobProgress {
    /// Package ID.
    pub package: String,
    /// Version.
    pub version: u32,
    /// DP name.
    pub dp: String,
    /// `install`, `redistribute`, `remove`, `validate`.
    pub action: String,
    /// `requested` (DistMgr has not made the job yet), `queued`, `running`, `retrying`.
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Bytes to send in this attempt (what the DP lacks), once known.
    pub total: u64,
    /// Bytes sent so far in this attempt.
    pub done: u64,
}

/// `site add-child` and `site set-parent`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddSite {
    /// The site's code.
    pub code: String,
    /// Its public identity in text form (`freight site identity export` on it); imported into
    /// the trust store. Without it, the key the trust store already holds for `code` is used.
    pub identity: Option<String>,
    /// The parent's QUIC endpoint (`HOST:PORT`), where this site reports status (parent only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// A site this site knows: itself, its parent or a child.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SiteInfo {
    /// Site code.
    pub code: String,
    /// `this site`, `parent` or `child`.
    pub relation: String,
    /// The fingerprint of the key it was configured with (none for this site: its own key).
    pub fingerprint: Option<String>,
    /// That key in the trust store now: `trusted`, `revoked`, `replaced` (another key is
    /// trusted for the site) or `missing`; `own key` for this site.
    pub key: String,
    /// Unix seconds it was added.
    pub added: Option<i64>,
    /// The sender kinds of its addresses.
    pub addresses: Vec<SenderKind>,
}

/// `site show`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteDetail {
    /// The site.
    pub site: SiteInfo,
    /// Its addresses.
    pub addresses: Vec<AddressInfo>,
}

/// `address add`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddAddress {
    /// The child site it sends to.
    pub site: String,
    /// Its sender (default standard).
    #[serde(default = "standard_sender")]
    pub kind: SenderKind,
    /// The child's QUIC endpoint, `host:port` (standard addresses only).
    pub endpoint: Option<String>,
    /// Its bandwidth windows (default: unlimited, always open).
    #[serde(default)]
    pub schedule: AddressSchedule,
    /// Retries of a failed send (default: the site's `sender_retries`).
    pub retries: Option<u32>,
    /// Wait between retries, a duration such as `1m` (default: `sender_retry_delay`).
    pub retry_delay: Option<String>,
    /// Sends at once to this site (default: `sender_sends_per_site`).
    pub max_sends: Option<u32>,
}

fn standard_sender() -> SenderKind {
    SenderKind::Standard
}

/// An address's bandwidth windows, in one of the two written forms (at most one given; none
/// means unlimited, always open).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressSchedule {
    /// The compact text form (`Mon-Fri 08:00-18:00 high 2MiB/s; Sat-Sun closed`).
    pub text: Option<String>,
    /// The TOML form (a file's contents).
    pub toml: Option<String>,
}

/// An address: how this site sends to a child.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AddressInfo {
    /// The child site.
    pub site: String,
    /// Its sender.
    pub kind: SenderKind,
    /// The child's QUIC endpoint (standard addresses).
    pub endpoint: Option<String>,
    /// Bandwidth windows, canonical compact text.
    pub schedule: String,
    /// Retries of a failed send.
    pub retries: u32,
    /// Wait between retries, milliseconds.
    pub retry_delay_ms: u64,
    /// Sends at once to this site.
    pub max_sends: u32,
    /// The settings that follow the site's defaults (`retries`, `retry_delay`, `max_sends`).
    pub defaults: Vec<String>,
}
