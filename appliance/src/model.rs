//! The appliance's vocabulary: job states, actions, DP kinds and a package's state on a DP,
//! each a closed set of words with one spelling (in the database, the config, on the wire).
//! The priority is the transport's [`freight_transport::Priority`].

use std::fmt;
use std::str::FromStr;

/// Declares an enum stored as one of a fixed set of words.
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $var:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $var),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The word stored in the database and used on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<$name, String> {
                match s {
                    $($text => Ok($name::$var),)+
                    _ => Err(format!(
                        "{s:?} is not a {}; use one of: {}",
                        stringify!($name),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

    };
}

text_enum! {
    /// Where a distribution job stands. Queued, running and retrying jobs are *live*: at most
    /// one live job exists per package and DP.
    JobState {
        /// Waiting for its turn (or for its DP route's window).
        Queued = "queued",
        /// Taken by PkgXferMgr; its attempt is counted.
        Running = "running",
        /// An attempt failed; the next one is due at `next_attempt`.
        Retrying = "retrying",
        /// Finished successfully.
        Done = "done",
        /// Failed its last attempt.
        Failed = "failed",
    }
}

impl JobState {
    /// Queued, running or retrying.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            JobState::Queued | JobState::Running | JobState::Retrying
        )
    }
}

text_enum! {
    /// What a distribution job does to a DP (SPEC §3).
    Action {
        /// Send what the DP lacks of a version, then have it host that version.
        Install = "install",
        /// Repair the DP's copy: re-send what fails verification there (and whatever is
        /// missing) and install it anew; the DP serves its copy throughout.
        Redistribute = "redistribute",
        /// Drop the package from the DP.
        Remove = "remove",
        /// Have the DP re-hash what it holds.
        Validate = "validate",
    }
}

impl Action {
    /// Whether the job moves content (and so waits for its route's window).
    pub fn copies(self) -> bool {
        matches!(self, Action::Install | Action::Redistribute)
    }
}

text_enum! {
    /// A DP's kind.
    DpKind {
        /// The site server pushes content to it.
        Standard = "standard",
        /// It fetches content from its ranked source DPs itself.
        Pull = "pull",
    }
}

text_enum! {
    /// How a site sends to a child site: the sender of an address (SPEC §1, §4).
    SenderKind {
        /// Over the network: QUIC to the child's endpoint.
        Standard = "standard",
        /// On media: parcels an administrator carries (`freight courier`).
        Courier = "courier",
    }
}

text_enum! {
    /// A package's state on one DP (SPEC §7).
    DpState {
        /// A copy is planned or running.
        InstallPending = "install_pending",
        /// A copy failed and waits for its next attempt.
        Retrying = "retrying",
        /// The DP hosts a verified copy.
        Installed = "installed",
        /// The last attempt failed, or validation found damage.
        Failed = "failed",
        /// A removal is planned or running.
        RemovalPending = "removal_pending",
        /// The DP no longer holds the package.
        Removed = "removed",
    }
}

impl DpState {
    /// The label users see.
    pub fn label(self) -> &'static str {
        match self {
            DpState::InstallPending => "Install Pending",
            DpState::Retrying => "Retrying",
            DpState::Installed => "Installed",
            DpState::Failed => "Failed",
            DpState::RemovalPending => "Removal Pending",
            DpState::Removed => "Removed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_reads_back_from_its_word_and_unknown_words_are_refused() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), *s);
        }
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>().unwrap(), *a);
        }
        for k in DpKind::ALL {
            assert_eq!(k.as_str().parse::<DpKind>().unwrap(), *k);
        }
        for d in DpState::ALL {
            assert_eq!(d.as_str().parse::<DpState>().unwrap(), *d);
        }
        for k in SenderKind::ALL {
            assert_eq!(k.as_str().parse::<SenderKind>().unwrap(), *k);
        }
        let e = "branch".parse::<DpKind>().unwrap_err();
        assert!(e.contains("standard, pull"), "{e}");
        let live: Vec<_> = JobState::ALL.iter().filter(|s| s.is_live()).collect();
        assert_eq!(live.len(), 3);
    }
}
