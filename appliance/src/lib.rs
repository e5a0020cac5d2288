//! The site server and DP appliance: what `freightd` and the `freight` CLI share.
//!
//! The site database ([`db`]), the daemon and its components, the admin API and its client,
//! and the helpers both binaries use (site folders, output, progress bars). See
//! `ARCHITECTURE.md` at the repository root.

pub mod admin;
pub mod admin_client;
pub mod api;
pub mod config;
pub mod daemon;
pub mod db;
pub mod distmgr;
pub mod dp;
pub mod dp_http;
pub mod dp_proto;
pub mod error;
pub mod logging;
pub mod output;
pub mod pkgxfer;
pub mod progress_bar;
pub mod site;
pub mod site_home;
pub mod statmgr;
