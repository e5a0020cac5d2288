//! The Freight appliance: what `freightd` and the `freight` CLI are made of.
//!
//! By role: [`site_server`] (the site database and the components of the seeds), [`dp`] (a
//! distribution point: commands, pulls, HTTP content), [`daemon`] (`freightd`'s start-up),
//! [`admin`] (the admin API's server and client, contract in [`api`]) and [`cli`] (the
//! `freight` command's verbs). [`content`] and [`home`] are shared by the roles. See
//! `ARCHITECTURE.md` at the repository root.

pub mod admin;
pub mod api;
pub mod cli;
pub mod content;
pub mod daemon;
pub mod dp;
pub mod health;
pub mod home;
pub mod logging;
pub mod model;
pub mod site_server;
pub mod test_pause;
