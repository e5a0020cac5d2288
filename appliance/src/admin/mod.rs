//! The admin API: the server `freightd` runs on its site server's Unix socket ([`server`]),
//! and the client the `freight` CLI uses ([`client`]). Their contract (paths and JSON bodies)
//! is [`crate::api`].

pub mod client;
pub mod server;
