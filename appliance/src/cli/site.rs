//! `freight site ...`: this site's identity and the trust store of other sites.

use crate::cli::error::CliError;
use crate::cli::output::print_json;
use crate::home::Home;
use clap::{Args, Subcommand};
use freight_core::site::{PublicIdentity, Role, SiteCode};
use std::path::PathBuf;

/// Arguments of `freight site`.
#[derive(Args)]
pub struct SiteArgs {
    /// The site folder (code, key, trust store).
    #[arg(long, env = "FREIGHT_SITE", global = true)]
    pub site: Option<PathBuf>,
    #[command(subcommand)]
    cmd: SiteCmd,
}

#[derive(Subcommand)]
enum SiteCmd {
    /// Create a site folder with a new signing key.
    Init {
        /// Site code: 3 upper-case letters or digits, e.g. CAS or PS1.
        #[arg(long)]
        code: String,
    },
    /// Export, import, list or revoke site identities.
    #[command(subcommand)]
    Identity(IdentityCmd),
}

#[derive(Subcommand)]
enum IdentityCmd {
    /// Print (or write) this site's public identity for other sites to import.
    Export {
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Trust another site's identity file, in a role: what that key may do here.
    Import {
        /// The identity file.
        file: PathBuf,
        /// What the key is trusted for: site-server (on a DP: its site server), dp (a DP of
        /// this site, or a pull DP's source), pull-dp (may read from this DP), parent, child,
        /// agent.
        #[arg(long, value_parser = |s: &str| s.parse::<Role>())]
        role: Role,
    },
    /// Add or take away a role of a trusted site's key (a key left with no role is no longer
    /// trusted).
    Role {
        /// Site code.
        code: String,
        /// A role to add.
        #[arg(long, value_parser = |s: &str| s.parse::<Role>(), conflicts_with = "remove")]
        add: Option<Role>,
        /// A role to take away.
        #[arg(long, value_parser = |s: &str| s.parse::<Role>())]
        remove: Option<Role>,
    },
    /// List trusted sites.
    List {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop trusting a site's key.
    Revoke {
        /// Site code.
        code: String,
    },
}

/// The `--site` folder, or a one-line error saying how to give it.
pub fn site_dir(site: Option<PathBuf>) -> Result<PathBuf, CliError> {
    site.ok_or_else(|| CliError::Usage("no site given; pass --site DIR or set FREIGHT_SITE".into()))
}

/// Runs one `freight site` command.
pub fn run(a: SiteArgs) -> Result<(), CliError> {
    let dir = site_dir(a.site)?;
    match a.cmd {
        SiteCmd::Init { code } => {
            let home = Home::init(&dir, SiteCode::parse(&code)?)?;
            let id = home.key.identity();
            println!(
                "site {} created in {}; key fingerprint {}",
                home.code,
                dir.display(),
                id.fingerprint()
            );
        }
        SiteCmd::Identity(cmd) => {
            let home = Home::open(&dir)?;
            match cmd {
                IdentityCmd::Export { out } => {
                    let text = home.key.identity().to_text();
                    match out {
                        Some(p) => {
                            freight_core::library::write_atomic(&p, text.as_bytes())?;
                            println!("wrote identity of site {} to {}", home.code, p.display());
                        }
                        None => print!("{text}"),
                    }
                }
                IdentityCmd::Import { file, role } => {
                    let text = std::fs::read_to_string(&file).map_err(|e| {
                        CliError::Usage(format!(
                            "{}: cannot read identity file: {e}",
                            file.display()
                        ))
                    })?;
                    let id = PublicIdentity::from_text(&text)?;
                    home.trust.import(&id, role)?;
                    println!(
                        "trusting site {} with key fingerprint {} as {}",
                        id.code,
                        id.fingerprint(),
                        home.trust.roles(id.code)?
                    );
                }
                IdentityCmd::List { json } => {
                    let list = home.trust.list()?;
                    if json {
                        let v: Vec<_> = list
                            .iter()
                            .map(|e| {
                                serde_json::json!({
                                    "site": e.identity.code.to_string(),
                                    "fingerprint": e.identity.fingerprint(),
                                    "revoked": e.revoked,
                                    "roles": e.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                                })
                            })
                            .collect();
                        print_json(&v)?;
                    } else {
                        println!("{:<5} {:<50} {:<8} roles", "site", "fingerprint", "status");
                        for e in list {
                            println!(
                                "{:<5} {:<50} {:<8} {}",
                                e.identity.code.to_string(),
                                e.identity.fingerprint(),
                                if e.revoked { "revoked" } else { "trusted" },
                                if e.revoked {
                                    "-".to_string()
                                } else {
                                    e.roles.to_string()
                                }
                            );
                        }
                    }
                }
                IdentityCmd::Role { code, add, remove } => {
                    let code = SiteCode::parse(&code)?;
                    let roles = match (add, remove) {
                        (Some(r), _) => home.trust.add_role(code, r)?,
                        (None, Some(r)) => home.trust.remove_role(code, r)?,
                        (None, None) => home.trust.roles(code)?,
                    };
                    if roles.is_empty() {
                        println!("site {code} is no longer trusted (no role left)");
                    } else {
                        println!("site {code} is trusted as {roles}");
                    }
                }
                IdentityCmd::Revoke { code } => {
                    let code = SiteCode::parse(&code)?;
                    home.trust.revoke(code)?;
                    println!("revoked the key of site {code}");
                }
            }
        }
    }
    Ok(())
}
