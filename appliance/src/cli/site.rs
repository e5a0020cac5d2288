//! `freight site ...`: this site's identity and the trust store of other sites (offline, on
//! the site folder), and its place in the hierarchy (through the site server's admin API):
//! `add-child`, `set-parent`, `list`, `show`, `remove`.

use crate::admin::client::segment;
use crate::api::AddSite;
use crate::cli::call::{self, Call, Conn};
use crate::cli::error::CliError;
use crate::cli::output::print_json;
use crate::cli::render::Show;
use crate::home::Home;
use crate::site_server::hierarchy::MAX_IDENTITY;
use clap::{Args, Subcommand};
use freight_core::site::{PublicIdentity, Role, SiteCode};
use hyper::Method;
use std::io::Read;
use std::path::{Path, PathBuf};

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
    #[command(flatten)]
    Hierarchy(HierarchyCmd),
}

/// The hierarchy verbs: calls of the site server's admin API.
#[derive(Subcommand, Debug)]
pub(crate) enum HierarchyCmd {
    /// Add a child site at this site server and trust its key as `child` (content and
    /// instructions go down to it; its status is accepted).
    AddChild {
        #[command(flatten)]
        conn: Conn,
        /// The child's site code.
        code: String,
        /// The child's identity file (`freight site identity export` on the child); without
        /// it, the key this site's trust store already holds for CODE.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Set this site's parent and trust its key as `parent` (content and instructions are
    /// accepted from it alone).
    SetParent {
        #[command(flatten)]
        conn: Conn,
        /// The parent's site code.
        code: String,
        /// The parent's identity file (`freight site identity export` on the parent); without
        /// it, the key this site's trust store already holds for CODE.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// The parent's QUIC endpoint (`HOST:PORT`), where this site reports status.
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<String>,
    },
    /// This site, its parent and its children, with their keys' state.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// One site and its addresses.
    Show {
        #[command(flatten)]
        conn: Conn,
        /// Site code.
        code: String,
    },
    /// Forget the parent or a child; its key loses that role (a child that still has
    /// addresses is refused: remove them first).
    Remove {
        #[command(flatten)]
        conn: Conn,
        /// Site code.
        code: String,
    },
}

/// A hierarchy verb → its connection options and call; `read_identity` reads `--identity`.
pub(crate) fn hierarchy_call(
    cmd: HierarchyCmd,
    read_identity: impl FnOnce(&Path) -> Result<String, CliError>,
) -> Result<(Conn, Call), CliError> {
    Ok(match cmd {
        HierarchyCmd::AddChild {
            conn,
            code,
            identity,
        } => (
            conn,
            site_call(
                Method::POST,
                "/sites/children",
                code,
                identity,
                None,
                read_identity,
            )?,
        ),
        HierarchyCmd::SetParent {
            conn,
            code,
            identity,
            address,
        } => (
            conn,
            site_call(
                Method::PUT,
                "/sites/parent",
                code,
                identity,
                address,
                read_identity,
            )?,
        ),
        HierarchyCmd::List { conn } => (conn, Call::new(Method::GET, "/sites".into(), Show::Sites)),
        HierarchyCmd::Show { conn, code } => (
            conn,
            Call::new(
                Method::GET,
                format!("/sites/{}", segment(&code)),
                Show::SiteDetail,
            ),
        ),
        HierarchyCmd::Remove { conn, code } => (
            conn,
            Call::new(
                Method::DELETE,
                format!("/sites/{}", segment(&code)),
                Show::Done,
            ),
        ),
    })
}

/// Reads another site's identity file and checks it before it is sent; a file longer than
/// any identity is refused before it is read whole.
pub(crate) fn read_site_identity(file: &Path) -> Result<String, CliError> {
    let f = file.display();
    let remedy = "write it on that site with `freight site identity export --out FILE`";
    let bad = |e: std::io::Error| {
        CliError::Usage(format!(
            "{f}: cannot read the site's identity ({e}); {remedy}"
        ))
    };
    let mut text = String::new();
    std::fs::File::open(file)
        .map_err(bad)?
        .take(MAX_IDENTITY as u64 + 1)
        .read_to_string(&mut text)
        .map_err(bad)?;
    if text.len() > MAX_IDENTITY {
        return Err(CliError::Usage(format!(
            "{f}: more than {MAX_IDENTITY} bytes, not a site identity; {remedy}"
        )));
    }
    PublicIdentity::from_text(&text).map_err(|e| CliError::Usage(format!("{f}: {e}")))?;
    Ok(text)
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
    match a.cmd {
        SiteCmd::Hierarchy(cmd) => {
            let (conn, call) = hierarchy_call(cmd, read_site_identity)?;
            return call::run_call(conn, call);
        }
        SiteCmd::Init { code } => {
            let dir = site_dir(a.site)?;
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
            let home = Home::open(&site_dir(a.site)?)?;
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

/// The call naming a child or the parent: the site's code and, when given, its identity file's
/// text.
fn site_call(
    method: Method,
    path: &str,
    code: String,
    identity: Option<PathBuf>,
    address: Option<String>,
    read_identity: impl FnOnce(&Path) -> Result<String, CliError>,
) -> Result<Call, CliError> {
    let body = AddSite {
        code,
        identity: identity.as_deref().map(read_identity).transpose()?,
        address,
    };
    Call::new(method, path.into(), Show::SiteAdded).body(&body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        site: SiteArgs,
    }

    /// The call of a hierarchy verb (`--identity` reads as "ID-TEXT").
    fn call(args: &[&str]) -> (Conn, Call) {
        let t = T::try_parse_from(std::iter::once("freight").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let SiteCmd::Hierarchy(cmd) = t.site.cmd else {
            panic!("{args:?} is not a hierarchy verb")
        };
        hierarchy_call(cmd, |_| Ok("ID-TEXT".into())).unwrap()
    }

    #[test]
    fn hierarchy_verbs_are_admin_calls_beside_the_identity_verbs() {
        let (conn, c) = call(&["add-child", "SS1", "--identity", "/ss1.id", "--admin", "/s"]);
        assert_eq!(conn.admin, PathBuf::from("/s"));
        assert_eq!(
            c,
            Call::new(Method::POST, "/sites/children".into(), Show::SiteAdded)
                .body(&json!({"code": "SS1", "identity": "ID-TEXT"}))
                .unwrap()
        );
        let (_, c) = call(&["set-parent", "CAS"]);
        assert_eq!(
            c,
            Call::new(Method::PUT, "/sites/parent".into(), Show::SiteAdded)
                .body(&json!({"code": "CAS", "identity": null}))
                .unwrap()
        );
        let (conn, c) = call(&["list", "--json"]);
        assert!(conn.json);
        assert_eq!(c, Call::new(Method::GET, "/sites".into(), Show::Sites));
        let (_, c) = call(&["show", "SS1"]);
        assert_eq!(
            c,
            Call::new(Method::GET, "/sites/SS1".into(), Show::SiteDetail)
        );
        let (_, c) = call(&["remove", "SS1"]);
        assert_eq!(
            c,
            Call::new(Method::DELETE, "/sites/SS1".into(), Show::Done)
        );
        // The identity verbs are still there.
        let t =
            T::try_parse_from(["freight", "--site", "/h", "identity", "list", "--json"]).unwrap();
        assert!(matches!(
            t.site.cmd,
            SiteCmd::Identity(IdentityCmd::List { json: true })
        ));
    }

    #[test]
    fn an_identity_file_is_read_only_up_to_its_limit_and_checked() {
        let t = tempfile::tempdir().unwrap();
        let big = t.path().join("big.id");
        std::fs::write(&big, vec![b'x'; 1 << 20]).unwrap();
        let e = read_site_identity(&big).unwrap_err().to_string();
        assert!(
            e.contains("more than 4096 bytes, not a site identity"),
            "{e}"
        );
        let e = read_site_identity(&t.path().join("none.id"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the site's identity"), "{e}");
        let key = freight_core::SiteKey::load_or_create(
            &t.path().join("k"),
            SiteCode::parse("SS1").unwrap(),
        )
        .unwrap();
        let good = t.path().join("ss1.id");
        std::fs::write(&good, key.identity().to_text()).unwrap();
        assert_eq!(read_site_identity(&good).unwrap(), key.identity().to_text());
    }
}
