//! Authorization: the one table that says what a peer may do, by the roles its key was
//! trusted for (SPEC §8, DESIGN "Authorization"). A pinned key says *who* a peer is; its roles
//! in the trust store ([`freight_core::Role`]) say *what* it may ask. Every inbound
//! connection and every request is checked here before anything is read or written, and
//! anything the table does not allow is refused with [`Refused`], which names the peer, its
//! key's fingerprint, what it asked and how to allow it if it should be.
//!
//! | request | allowed roles |
//! |---|---|
//! | connect at all | any role |
//! | push a package version into this host's library, unasked | site server (to its DPs), parent (to its child sites) |
//! | push a version this host asked for on its own connection | DP (a pull DP's source) |
//! | manage a DP's packages (install, remove, forget, validate, pull) | site server |
//! | read content from a DP (a pull DP's `PushMe`) | pull DP |
//! | report package status | child site, agent |
//! | send a signed instruction | parent |
//!
//! What is deliberately absent: a DP never writes into its site server's library, a pull DP
//! never commands its source, and a child never sends content or instructions up.
//!
//! Authorization by route: on a site server, `parent` and `child` hold only for the keys its
//! site database configures as its parent and its children (`freight site set-parent`,
//! `add-child`; [`crate::trust::Relations`]), so content and instructions come only from the
//! configured parent and status only from configured children, whatever roles a hand-edited
//! trust store gives.

use freight_core::{PublicIdentity, Role, Roles};
use std::fmt;

/// What a peer asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Request {
    /// Open a connection at all.
    Connect,
    /// Push a package version into this host's library, unasked.
    Push,
    /// Push a version this host asked for, on this host's own connection.
    RequestedPush,
    /// Manage this DP's packages (install, remove, forget, validate, pull, pull status).
    ManageDp,
    /// Read a package from this DP (a pull DP asking its source to push it).
    ReadContent,
    /// Report package status.
    ReportStatus,
    /// Send a signed instruction.
    SendInstruction,
}

impl Request {
    /// Every request kind.
    pub const ALL: [Request; 7] = [
        Request::Connect,
        Request::Push,
        Request::RequestedPush,
        Request::ManageDp,
        Request::ReadContent,
        Request::ReportStatus,
        Request::SendInstruction,
    ];

    /// The roles that may make this request: the authorization table.
    pub fn allowed(self) -> &'static [Role] {
        match self {
            Request::Connect => &Role::ALL,
            Request::Push => &[Role::SiteServer, Role::Parent],
            Request::RequestedPush => &[Role::Dp],
            Request::ManageDp => &[Role::SiteServer],
            Request::ReadContent => &[Role::PullDp],
            Request::ReportStatus => &[Role::Child, Role::Agent],
            Request::SendInstruction => &[Role::Parent],
        }
    }

    /// What the request is, for messages: "push content into this host's library".
    pub fn describe(self) -> &'static str {
        match self {
            Request::Connect => "connect",
            Request::Push => "push content into this host's library",
            Request::RequestedPush => "push content it was asked for",
            Request::ManageDp => "manage this DP's packages",
            Request::ReadContent => "read packages from this DP",
            Request::ReportStatus => "report package status",
            Request::SendInstruction => "send instructions",
        }
    }
}

/// A refused request: one line naming the peer, its key, what it asked and the remedy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The peer as authenticated.
    pub peer: PublicIdentity,
    /// The roles its key holds here.
    pub roles: Roles,
    /// What it asked.
    pub request: Request,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let allowed = self.request.allowed();
        let may: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        // On a site server the hierarchy's roles come from its database, not from a role
        // added by hand: say so where they are what the request needs.
        let by_route = if allowed.contains(&Role::Parent) || allowed.contains(&Role::Child) {
            "; a parent or child site is configured at a site server with `freight site set-parent` or `add-child`"
        } else {
            ""
        };
        write!(
            f,
            "site {} (key {}) may not {}: it is trusted as {}; only {} may (if it should, `freight site identity role {} --add ROLE` on this host{by_route})",
            self.peer.code,
            self.peer.fingerprint(),
            self.request.describe(),
            self.roles,
            may.join(" or "),
            self.peer.code,
        )
    }
}

impl std::error::Error for Refused {}

/// Checks `request` from `peer`, whose key holds `roles` here. A refusal is logged with the
/// peer's site code and fingerprint.
pub fn check(peer: &PublicIdentity, roles: Roles, request: Request) -> Result<(), Refused> {
    if request.allowed().iter().any(|r| roles.contains(*r)) {
        return Ok(());
    }
    let refused = Refused {
        peer: *peer,
        roles,
        request,
    };
    tracing::warn!(
        peer = %peer.code,
        fingerprint = %peer.fingerprint(),
        request = ?request,
        roles = %roles,
        "request refused by the authorization table"
    );
    Err(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use freight_core::SiteCode;

    fn peer() -> PublicIdentity {
        PublicIdentity {
            code: SiteCode::parse("DP1").unwrap(),
            key: [7; 32],
        }
    }

    #[test]
    fn the_table_allows_exactly_what_it_lists() {
        let expect: &[(Request, &[Role])] = &[
            (Request::Push, &[Role::SiteServer, Role::Parent]),
            (Request::RequestedPush, &[Role::Dp]),
            (Request::ManageDp, &[Role::SiteServer]),
            (Request::ReadContent, &[Role::PullDp]),
            (Request::ReportStatus, &[Role::Child, Role::Agent]),
            (Request::SendInstruction, &[Role::Parent]),
        ];
        for (req, allowed) in expect {
            for role in Role::ALL {
                let ok = check(&peer(), Roles::of(role), *req).is_ok();
                assert_eq!(ok, allowed.contains(&role), "{role} {req:?}");
            }
        }
        for role in Role::ALL {
            assert!(check(&peer(), Roles::of(role), Request::Connect).is_ok());
        }
        for req in Request::ALL {
            assert!(check(&peer(), Roles::NONE, req).is_err(), "{req:?}");
        }
    }

    #[test]
    fn a_dp_may_not_push_into_its_site_server_nor_a_pull_dp_command_its_source() {
        let e = check(&peer(), Roles::of(Role::Dp), Request::Push).unwrap_err();
        let line = e.to_string();
        assert!(line.starts_with("site DP1 (key "), "{line}");
        assert!(
            line.contains("may not push content into this host's library"),
            "{line}"
        );
        assert!(line.contains("trusted as dp"), "{line}");
        assert!(!line.contains('\n'));
        assert!(check(&peer(), Roles::of(Role::PullDp), Request::ManageDp).is_err());
        assert!(check(&peer(), Roles::of(Role::PullDp), Request::ReadContent).is_ok());
        let both = Roles::of(Role::PullDp).with(Role::SiteServer);
        assert!(check(&peer(), both, Request::ManageDp).is_ok());
    }
}
