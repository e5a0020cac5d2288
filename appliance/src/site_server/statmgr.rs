//! The status manager: the catalogue of status messages (SPEC §7), and how a message reads as
//! a sentence (the store records messages and reads them back).
//!
//! A message is its ID, attributes (package 400, DP 404, version 410) and insertion strings;
//! the sentence is rendered from the catalogue when read, so stored messages stay data. A
//! component records its messages in the same transaction as the state change they report.
//!
//! IDs with the seeds' meaning: 2300 2301 2311 2329 2330 2342 2357 2376 8200 8210 8211 8212.
//! Freight's own, in the same ranges:
//! ```text
//! 2302 error    DistMgr     package processed with failures on some DPs
//! 2331 info     DistMgr     started removing a package from a DP
//! 2332 info     DistMgr     removed a package from a DP
//! 2345 info     DistMgr     a newer version had already arrived at a DP; the older one was dropped
//! 2380 info     DistMgr     started validating a package on a DP
//! 2384 info     DistMgr     package verified on a DP
//! 2386 error    DistMgr     package failed validation on a DP
//! 2387 error    DistMgr     a DP holds another version than the site expects
//! 8201 warning  PkgXferMgr  a copy to a DP failed; retrying
//! 8202 error    PkgXferMgr  a copy to a DP failed its last attempt
//! 8213 warning  PkgXferMgr  a pull DP could not download from any source; retrying
//! 2334 error    DistMgr     no route to a target site (not a child, and no child reports it)
//! 4401 error    Despooler   refused an instruction (unknown or revoked site, bad signature,
//!                           another destination, a package this site made, another hash)
//! 4402 info     Despooler   dropped an older version: a newer one has already arrived
//! 4403 info     Despooler   removing a package as the parent site asked
//! 4510 info     Sender      sent a package version and its instruction to a site
//! 4511 warning  Sender      a send to a site failed; retrying
//! 4512 error    Sender      a send to a site failed its last attempt
//! 4513 info     Sender      a courier parcel was written for a send request (pending)
//! 4514 info     Sender      the child site confirmed a courier parcel arrived
//! 4515 info     Sender      relayed a package version to a site or DP while it arrived here
//! 4516 warning  Sender      a relay stopped; the Sender or PkgXferMgr sends the rest later
//! 9100 info     audit       an administrator's request on the admin socket (who, what, answer)
//! 9101 warning  audit       a peer's request the authorization table refused
//! ```

/// Who raises a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// Distribution manager.
    DistMgr,
    /// Package transfer manager.
    PkgXferMgr,
    /// The audit trail: admin actions and refused peer requests.
    Audit,
    /// Sends package versions and instructions to child sites.
    Sender,
    /// Acts on instructions from the parent site.
    Despooler,
}

/// The component name of audit messages (`freight messages --audit` shows only these).
pub const AUDIT: &str = "FREIGHT_AUDIT";

impl Component {
    fn name(self) -> &'static str {
        match self {
            Component::DistMgr => "SMS_DISTRIBUTION_MANAGER",
            Component::PkgXferMgr => "SMS_PACKAGE_TRANSFER_MANAGER",
            Component::Audit => AUDIT,
            Component::Sender => "SMS_LAN_SENDER",
            Component::Despooler => "SMS_DESPOOLER",
        }
    }
}

/// One catalogue entry: ID, severity, component, sentence with `%1`.. insertion points.
struct Entry(u32, &'static str, Component, &'static str);

const CATALOGUE: &[Entry] = &[
    Entry(
        2300,
        "info",
        Component::DistMgr,
        "Distribution Manager started processing package %1 (\"%2\").",
    ),
    Entry(
        2301,
        "info",
        Component::DistMgr,
        "Distribution Manager successfully processed package %1 (\"%2\").",
    ),
    Entry(
        2302,
        "error",
        Component::DistMgr,
        "Distribution Manager processed package %1 (\"%2\") with failures on %3 distribution point(s); see their status and redistribute.",
    ),
    Entry(
        2311,
        "info",
        Component::DistMgr,
        "Distribution Manager successfully created or updated package %1, version %2 (\"%3\").",
    ),
    Entry(
        2329,
        "info",
        Component::DistMgr,
        "Distribution Manager copied the content of package %1 version %2 to distribution point %3.",
    ),
    Entry(
        2330,
        "info",
        Component::DistMgr,
        "Distribution Manager successfully distributed package %1 version %2 to distribution point %3.",
    ),
    Entry(
        2331,
        "info",
        Component::DistMgr,
        "Distribution Manager started removing package %1 from distribution point %2.",
    ),
    Entry(
        2332,
        "info",
        Component::DistMgr,
        "Distribution Manager removed package %1 from distribution point %2; %3 of content no other package uses was freed.",
    ),
    Entry(
        2333,
        "info",
        Component::DistMgr,
        "Distribution Manager is sending a %1 of package %2 version %3 to site %4 (for site(s) %5).",
    ),
    Entry(
        2334,
        "error",
        Component::DistMgr,
        "Distribution Manager has no route to site %1 for package %2: it is not a child of this site and no child reports it; add it with `freight site add-child` or wait for its parent's report.",
    ),
    Entry(
        2342,
        "info",
        Component::DistMgr,
        "Distribution Manager is starting to %1 package %2 on distribution point %3.",
    ),
    Entry(
        2345,
        "info",
        Component::DistMgr,
        "A newer version (%4) of package %1 has already arrived at distribution point %3; version %2 was dropped there and the newer version stays installed.",
    ),
    Entry(
        2357,
        "info",
        Component::DistMgr,
        "Distribution Manager created a transfer job for package %1 version %2 to distribution point %3 (%4).",
    ),
    Entry(
        2376,
        "info",
        Component::DistMgr,
        "Distribution Manager created a snapshot of package %1 version %2: %3 files, %4; package hash %5.",
    ),
    Entry(
        2380,
        "info",
        Component::DistMgr,
        "Distribution Manager started validating package %1 version %2 on distribution point %3.",
    ),
    Entry(
        2384,
        "info",
        Component::DistMgr,
        "Package %1 version %2 on distribution point %3 has been verified successfully (%4 chunks re-hashed).",
    ),
    Entry(
        2386,
        "error",
        Component::DistMgr,
        "Package %1 version %2 on distribution point %3 failed validation: %4 corrupt or missing chunk(s), in %5; redistribute the package to this DP to repair it.",
    ),
    Entry(
        2387,
        "error",
        Component::DistMgr,
        "Package %1 on distribution point %2 failed validation: it holds %3, this site expects %4; redistribute the package to this DP.",
    ),
    Entry(
        4400,
        "info",
        Component::Despooler,
        "Despooler received package %1 version %2 from site %3 and stored it (signature checked out OK).",
    ),
    Entry(
        4401,
        "error",
        Component::Despooler,
        "Despooler refused an instruction from site %1: %2.",
    ),
    Entry(
        4402,
        "info",
        Component::Despooler,
        "Despooler dropped package %1 version %2 from site %3: a newer version (%4) has already arrived.",
    ),
    Entry(
        4403,
        "info",
        Component::Despooler,
        "Despooler is removing package %1 from this site as site %2 asked (%3 distribution point(s) here).",
    ),
    Entry(
        4510,
        "info",
        Component::Sender,
        "Sender sent package %1 version %2 to site %3: %4 in %5 s, instruction last.",
    ),
    Entry(
        4511,
        "warning",
        Component::Sender,
        "Sender could not send package %1 version %2 to site %3 (attempt %4 of %5): %6; retrying in %7.",
    ),
    Entry(
        4512,
        "error",
        Component::Sender,
        "Sender gave up sending package %1 version %2 to site %3 after %4 attempt(s): %5; fix the cause and distribute again.",
    ),
    Entry(
        4513,
        "info",
        Component::Sender,
        "Courier Sender wrote the parcel of package %1 version %2 for site %3 to %4; the request is pending until site %3 confirms it.",
    ),
    Entry(
        4514,
        "info",
        Component::Sender,
        "Site %3 confirmed it received the parcel of package %1 version %2.",
    ),
    Entry(
        4515,
        "info",
        Component::Sender,
        "Sender relayed package %1 version %2 to %3 while it arrived from the parent: %4 bytes in %5 s.",
    ),
    Entry(
        4516,
        "warning",
        Component::Sender,
        "Sender stopped relaying package %1 version %2 to %3 after %4 bytes: %5; the rest goes once the version is stored here.",
    ),
    Entry(
        8200,
        "info",
        Component::PkgXferMgr,
        "Package Transfer Manager sent package %1 version %2 to distribution point %3: %4 in %5 s.",
    ),
    Entry(
        8201,
        "warning",
        Component::PkgXferMgr,
        "Package Transfer Manager could not copy package %1 version %2 to distribution point %3 (attempt %4 of %5): %6; retrying in %7.",
    ),
    Entry(
        8202,
        "error",
        Component::PkgXferMgr,
        "Package Transfer Manager gave up copying package %1 version %2 to distribution point %3 after %4 attempt(s): %5; fix the cause and redistribute.",
    ),
    Entry(
        8210,
        "info",
        Component::PkgXferMgr,
        "Package Transfer Manager reported success for package %1 version %2 on distribution point %3 to Distribution Manager.",
    ),
    Entry(
        8211,
        "error",
        Component::PkgXferMgr,
        "Pull distribution point %1 is at capacity (%2 active jobs); package %3 version %4 is retried in %5.",
    ),
    Entry(
        8212,
        "warning",
        Component::PkgXferMgr,
        "No source distribution point of pull distribution point %1 holds package %2 version %3 yet (attempt %4 of %5); retrying in %6.",
    ),
    Entry(
        8213,
        "warning",
        Component::PkgXferMgr,
        "Pull distribution point %1 could not download package %2 version %3 from any source (attempt %4 of %5): %6; retrying in %7.",
    ),
    Entry(
        9100,
        "info",
        Component::Audit,
        "Administrator uid %1 (pid %2) asked %3 %4; answered %5.",
    ),
    Entry(
        9101,
        "warning",
        Component::Audit,
        "Refused site %1 (key %2) from %3: %4.",
    ),
];

fn entry(id: u32) -> &'static Entry {
    CATALOGUE
        .iter()
        .find(|e| e.0 == id)
        .unwrap_or_else(|| panic!("status message {id} is not in the catalogue"))
}

/// The severity (`info`, `warning`, `error`) and component name of message `id`, which must
/// be in the catalogue (a message outside it is a programming error, caught by the tests).
pub fn describe(id: u32) -> (&'static str, &'static str) {
    let e = entry(id);
    (e.1, e.2.name())
}

/// A message to record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Msg {
    /// Message ID; must be in the catalogue.
    pub id: u32,
    /// Package (attribute 400).
    pub package: Option<String>,
    /// DP (attribute 404).
    pub dp: Option<String>,
    /// Version (attribute 410).
    pub version: Option<u32>,
    /// Insertion strings, `%1` first.
    pub strings: Vec<String>,
}

impl Msg {
    /// A message with its insertion strings.
    pub fn new(id: u32, strings: &[&dyn std::fmt::Display]) -> Msg {
        Msg {
            id,
            strings: strings.iter().map(|s| s.to_string()).collect(),
            ..Msg::default()
        }
    }

    /// Sets the package and version attributes.
    pub fn package(mut self, package: &str, version: u32) -> Msg {
        self.package = Some(package.to_string());
        self.version = Some(version);
        self
    }

    /// Sets the DP attribute.
    pub fn dp(mut self, dp: &str) -> Msg {
        self.dp = Some(dp.to_string());
        self
    }
}

/// The sentence of message `id` with its insertion strings.
pub fn render(id: u32, strings: &[String]) -> String {
    let Some(e) = CATALOGUE.iter().find(|e| e.0 == id) else {
        return format!("message {id}: {}", strings.join(", "));
    };
    let mut out = String::new();
    let mut rest = e.3;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let digits: String = rest[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        match digits.parse::<usize>() {
            Ok(n) if n >= 1 => {
                out.push_str(strings.get(n - 1).map_or("?", |s| s.as_str()));
                rest = &rest[i + 1 + digits.len()..];
            }
            _ => {
                out.push('%');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalogue_entry_renders_all_its_insertion_strings() {
        for e in CATALOGUE {
            let n = (1..=9).filter(|i| e.3.contains(&format!("%{i}"))).count();
            let strings: Vec<String> = (1..=n).map(|i| format!("<{i}>")).collect();
            let text = render(e.0, &strings);
            for s in &strings {
                assert!(text.contains(s.as_str()), "{}: {text}", e.0);
            }
            assert!(
                !text.contains('%') && !text.contains('?'),
                "{}: {text}",
                e.0
            );
        }
        let ids: std::collections::HashSet<u32> = CATALOGUE.iter().map(|e| e.0).collect();
        assert_eq!(ids.len(), CATALOGUE.len(), "IDs are unique");
    }

    #[test]
    fn a_message_reads_as_a_sentence() {
        let s = ["PS100001".to_string(), "2".into(), "DP1".into()];
        assert_eq!(
            render(2330, &s),
            "Distribution Manager successfully distributed package PS100001 version 2 to distribution point DP1."
        );
    }
}
