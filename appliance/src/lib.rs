//! The site server and DP appliance: what `freightd` and the `freight` CLI share.
//!
//! Today this is the site database ([`db`]); the components (DistMgr, PkgXferMgr, status
//! manager) and the daemon build on it. See `ARCHITECTURE.md` at the repository root.

pub mod db;
