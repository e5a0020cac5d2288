//! The site server's commands (`freight dp|dpgroup|package|distribute|redistribute|validate|
//! status|messages|watch`): clients of `freightd`'s admin API on its Unix socket.
//!
//! Each command maps to one [`Call`] (method, path, JSON body) and a view of the answer
//! ([`render::Show`]); `--json` prints the answer as the API sent it.

use crate::admin::client::{AdminClient, DEFAULT_SOCKET, segment, with_query};
use crate::api::{
    AddDp, AddGroup, CreatePackage, Members, PackageInfo, PackageStatus, Priority, SetSchedule,
    StatusMessage, Targets,
};
use crate::cli::error::CliError;
use crate::cli::output::print_json;
use crate::cli::render::{self, Show};
use crate::cli::transfer::parse_secs;
use crate::cli::watch;
use clap::{ArgGroup, Args, Subcommand};
use freight_core::site::PublicIdentity;
use hyper::Method;
use jiff::tz::TimeZone;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `--admin` and `--json`, accepted by every admin command.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// freightd's admin socket.
    #[arg(long, global = true, env = "FREIGHT_ADMIN", value_name = "SOCKET", default_value = DEFAULT_SOCKET)]
    admin: PathBuf,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

/// The admin commands, flattened into `freight`'s top-level commands.
#[derive(Subcommand)]
pub enum AdminCmd {
    /// Distribution points of this site: add, list, show, remove, bandwidth windows.
    Dp(DpArgs),
    /// Named sets of DPs, to target many at once.
    Dpgroup(GroupArgs),
    /// Packages: create from a source folder, update, list, show, remove.
    Package(PackageArgs),
    /// Send a package to DPs and DP groups (only what each DP lacks travels).
    Distribute(DistributeArgs),
    /// Send a package to one DP again in full, to repair it.
    Redistribute(RedistributeArgs),
    /// Have DPs re-hash what they hold of a package and report mismatches.
    Validate(ValidateArgs),
    /// Package status per DP; without a package also the DP counts of every package.
    Status(StatusArgs),
    /// Status messages, oldest first.
    Messages(MessagesArgs),
    /// Live progress bars of running copies, and new status messages as they arrive.
    Watch(WatchArgs),
}

/// Arguments of `freight dp`.
#[derive(Args)]
pub struct DpArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: DpCmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum DpCmd {
    /// Add a DP and trust its key.
    Add {
        /// The DP's name (unique at the site).
        name: String,
        /// The DP's QUIC address.
        #[arg(long, value_name = "HOST:PORT")]
        address: String,
        /// The DP's identity file (`freight site identity export` on the DP).
        #[arg(long, value_name = "FILE")]
        identity: PathBuf,
        /// The DP's HTTP content address, shown to users.
        #[arg(long, value_name = "HOST:PORT")]
        http: Option<String>,
        /// A pull DP: it fetches content from its source DPs itself.
        #[arg(long)]
        pull: bool,
        /// Pull DP: a source DP, best first (repeat, or separate with commas).
        #[arg(
            long = "source",
            value_name = "DP",
            requires = "pull",
            value_delimiter = ','
        )]
        sources: Vec<String>,
        /// Bandwidth windows in the compact form, e.g.
        /// `link 100Mbit/s; Mon-Fri 08:00-18:00 high 2MiB/s` (default: unlimited, always open).
        #[arg(long, value_name = "TEXT")]
        throttle: Option<String>,
    },
    /// List the DPs.
    List,
    /// A DP and the status of every package targeted at it.
    Show {
        /// DP name.
        name: String,
    },
    /// Remove a DP (refused while it holds packages).
    Remove {
        /// DP name.
        name: String,
    },
    /// Set a DP's bandwidth windows.
    Schedule {
        /// DP name.
        name: String,
        /// Bandwidth windows in the compact form.
        #[arg(long, value_name = "TEXT")]
        throttle: String,
    },
}

/// Arguments of `freight dpgroup`.
#[derive(Args)]
pub struct GroupArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: GroupCmd,
}

#[derive(Subcommand, Debug)]
enum GroupCmd {
    /// Create a DP group.
    Create {
        /// Group name.
        name: String,
        /// An initial member (repeat, or separate with commas).
        #[arg(long = "dp", value_name = "DP", value_delimiter = ',')]
        dps: Vec<String>,
    },
    /// Add DPs to a group.
    Add {
        /// Group name.
        name: String,
        /// DP names.
        #[arg(required = true, value_name = "DP")]
        dps: Vec<String>,
    },
    /// Remove one DP from a group.
    Remove {
        /// Group name.
        name: String,
        /// DP name.
        dp: String,
    },
    /// Delete a group (its DPs stay).
    Delete {
        /// Group name.
        name: String,
    },
    /// List the groups and their members.
    List,
}

/// Arguments of `freight package`.
#[derive(Args)]
pub struct PackageArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: PackageCmd,
}

#[derive(Subcommand, Debug)]
enum PackageCmd {
    /// Create a package: snapshot a source folder into the site's library.
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Source folder, as the site server sees it.
        #[arg(long, value_name = "DIR")]
        source: PathBuf,
        /// Priority for bandwidth windows: low, medium (default) or high.
        #[arg(long, value_parser = |s: &str| s.parse::<Priority>())]
        priority: Option<Priority>,
    },
    /// Snapshot the package's source again as a new version; DPs holding it get the changes.
    Update {
        /// Package ID.
        id: String,
    },
    /// List the packages with their DP counts.
    List,
    /// A package, its versions and its status per DP.
    Show {
        /// Package ID.
        id: String,
    },
    /// Remove a package from one DP, or from every DP and the site.
    Remove {
        /// Package ID.
        id: String,
        /// Only from this DP.
        #[arg(long, value_name = "DP")]
        dp: Option<String>,
    },
}

/// Arguments of `freight distribute`.
#[derive(Args)]
#[command(group(ArgGroup::new("targets").required(true).multiple(true).args(["dps", "groups"])))]
pub struct DistributeArgs {
    #[command(flatten)]
    conn: Conn,
    /// Package ID.
    id: String,
    /// A DP (repeat, or separate with commas).
    #[arg(long = "dp", value_name = "DP", value_delimiter = ',')]
    dps: Vec<String>,
    /// A DP group (repeat, or separate with commas).
    #[arg(long = "group", value_name = "GROUP", value_delimiter = ',')]
    groups: Vec<String>,
}

/// Arguments of `freight redistribute`.
#[derive(Args)]
pub struct RedistributeArgs {
    #[command(flatten)]
    conn: Conn,
    /// Package ID.
    id: String,
    /// The DP to repair.
    #[arg(long, value_name = "DP")]
    dp: String,
}

/// Arguments of `freight validate`.
#[derive(Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    conn: Conn,
    /// Package ID.
    id: String,
    /// A DP (repeat, or separate with commas; default: every DP holding the package).
    #[arg(long = "dp", value_name = "DP", value_delimiter = ',')]
    dps: Vec<String>,
}

/// Arguments of `freight status`.
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    conn: Conn,
    /// Only this package.
    id: Option<String>,
}

/// Arguments of `freight messages`.
#[derive(Args)]
pub struct MessagesArgs {
    #[command(flatten)]
    conn: Conn,
    /// Only messages about this package.
    #[arg(long, value_name = "ID")]
    package: Option<String>,
    /// Only messages after this sequence number (the first column).
    #[arg(long, value_name = "N")]
    since: Option<i64>,
}

/// Arguments of `freight watch`.
#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    conn: Conn,
    /// Only this package.
    id: Option<String>,
    /// Exit once no copy is queued, running or retrying and print the final status; exit
    /// status 1 if a DP failed.
    #[arg(long)]
    until_settled: bool,
    /// Seconds between polls.
    #[arg(long, value_name = "SECS", default_value = "0.5", value_parser = parse_secs)]
    interval: Duration,
    /// With --until-settled: give up (exit status 1) after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, requires = "until_settled")]
    timeout: Option<Duration>,
}

/// One API call and how to show its answer.
#[derive(Debug, PartialEq)]
pub(crate) struct Call {
    method: Method,
    /// Below the API prefix, segments and query encoded.
    path: String,
    body: Option<Value>,
    show: Show,
}

impl Call {
    fn new(method: Method, path: String, show: Show) -> Call {
        Call {
            method,
            path,
            body: None,
            show,
        }
    }
    fn body<T: serde::Serialize>(mut self, body: &T) -> Result<Call, CliError> {
        self.body = Some(serde_json::to_value(body).map_err(|e| CliError::Usage(e.to_string()))?);
        Ok(self)
    }
    /// Makes the call; the answer decoded as `T`.
    pub(crate) async fn send<T: DeserializeOwned>(
        &self,
        client: &AdminClient,
    ) -> Result<T, CliError> {
        client
            .send(self.method.clone(), &self.path, self.body.as_ref())
            .await
            .map_err(CliError::from)
    }
}

/// `dp ...` → its call; `read_identity` reads and checks `--identity`.
pub(crate) fn dp_call(
    cmd: DpCmd,
    read_identity: impl FnOnce(&Path) -> Result<String, CliError>,
) -> Result<Call, CliError> {
    Ok(match cmd {
        DpCmd::Add {
            name,
            address,
            identity,
            http,
            pull,
            sources,
            throttle,
        } => {
            if pull && sources.is_empty() {
                return Err(CliError::Usage(format!(
                    "pull DP {name} needs a source; pass --source DP (best first)"
                )));
            }
            let body = AddDp {
                name,
                kind: if pull { "pull" } else { "standard" }.into(),
                address,
                http,
                identity: read_identity(&identity)?,
                sources,
                throttle,
            };
            Call::new(Method::POST, "/dps".into(), Show::DpAdded).body(&body)?
        }
        DpCmd::List => Call::new(Method::GET, "/dps".into(), Show::Dps),
        DpCmd::Show { name } => Call::new(Method::GET, dp_path(&name), Show::DpDetail),
        DpCmd::Remove { name } => Call::new(Method::DELETE, dp_path(&name), Show::Done),
        DpCmd::Schedule { name, throttle } => Call::new(
            Method::PUT,
            format!("{}/schedule", dp_path(&name)),
            Show::DpScheduled,
        )
        .body(&SetSchedule { throttle })?,
    })
}

fn dp_path(name: &str) -> String {
    format!("/dps/{}", segment(name))
}

/// Reads a DP's identity file and checks it before it is sent.
fn read_identity(file: &Path) -> Result<String, CliError> {
    let f = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| {
        CliError::Usage(format!(
            "{f}: cannot read the DP's identity ({e}); write it on the DP with \
             `freight site identity export --out FILE`"
        ))
    })?;
    PublicIdentity::from_text(&text).map_err(|e| CliError::Usage(format!("{f}: {e}")))?;
    Ok(text)
}

fn group_call(cmd: GroupCmd) -> Result<Call, CliError> {
    let path = |name: &str| format!("/dpgroups/{}", segment(name));
    Ok(match cmd {
        GroupCmd::Create { name, dps } => Call::new(Method::POST, "/dpgroups".into(), Show::Group)
            .body(&AddGroup { name, members: dps })?,
        GroupCmd::Add { name, dps } => Call::new(
            Method::POST,
            format!("{}/members", path(&name)),
            Show::Group,
        )
        .body(&Members { dps })?,
        GroupCmd::Remove { name, dp } => Call::new(
            Method::DELETE,
            format!("{}/members/{}", path(&name), segment(&dp)),
            Show::Group,
        ),
        GroupCmd::Delete { name } => Call::new(Method::DELETE, path(&name), Show::Done),
        GroupCmd::List => Call::new(Method::GET, "/dpgroups".into(), Show::Groups),
    })
}

fn package_path(id: &str) -> String {
    format!("/packages/{}", segment(id))
}

fn package_call(cmd: PackageCmd) -> Result<Call, CliError> {
    Ok(match cmd {
        PackageCmd::Create {
            name,
            source,
            priority,
        } => {
            // freightd resolves paths from its own working directory, not ours.
            let abs = std::path::absolute(&source).map_err(|e| {
                CliError::Usage(format!(
                    "{}: cannot make the path absolute ({e})",
                    source.display()
                ))
            })?;
            let source = abs.to_str().map(str::to_string).ok_or_else(|| {
                CliError::Usage(format!(
                    "{}: the source path is not UTF-8; rename the folder",
                    abs.display()
                ))
            })?;
            Call::new(Method::POST, "/packages".into(), Show::Package("created")).body(
                &CreatePackage {
                    name,
                    source,
                    priority,
                },
            )?
        }
        PackageCmd::Update { id } => Call::new(
            Method::POST,
            format!("{}/update", package_path(&id)),
            Show::Package("updated"),
        ),
        PackageCmd::List => Call::new(Method::GET, "/packages".into(), Show::Packages),
        PackageCmd::Show { id } => Call::new(Method::GET, package_path(&id), Show::PackageDetail),
        PackageCmd::Remove { id, dp } => Call::new(
            Method::DELETE,
            with_query(&package_path(&id), &[("dp", dp)]),
            Show::Done,
        ),
    })
}

/// `distribute`, `redistribute`, `validate`: `POST /packages/{id}/{verb}` with the targets.
pub(crate) fn targets_call(
    verb: &str,
    id: &str,
    dps: Vec<String>,
    groups: Vec<String>,
) -> Result<Call, CliError> {
    Call::new(
        Method::POST,
        format!("{}/{verb}", package_path(id)),
        Show::Done,
    )
    .body(&Targets { dps, groups })
}

/// Runs one admin command; `quiet` hides `watch`'s bars.
pub fn run(cmd: AdminCmd, quiet: bool) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)?;
    rt.block_on(run_async(cmd, quiet))
}

async fn run_async(cmd: AdminCmd, quiet: bool) -> Result<(), CliError> {
    let (conn, call) = match cmd {
        AdminCmd::Dp(a) => (a.conn, dp_call(a.cmd, read_identity)?),
        AdminCmd::Dpgroup(a) => (a.conn, group_call(a.cmd)?),
        AdminCmd::Package(a) => (a.conn, package_call(a.cmd)?),
        AdminCmd::Distribute(a) => (a.conn, targets_call("distribute", &a.id, a.dps, a.groups)?),
        AdminCmd::Redistribute(a) => (
            a.conn,
            targets_call("redistribute", &a.id, vec![a.dp], vec![])?,
        ),
        AdminCmd::Validate(a) => (a.conn, targets_call("validate", &a.id, a.dps, vec![])?),
        AdminCmd::Status(a) => return status(a).await,
        AdminCmd::Messages(a) => return messages(a).await,
        AdminCmd::Watch(a) => {
            let client = AdminClient::new(a.conn.admin);
            let opts = watch::WatchOpts {
                package: a.id,
                until_settled: a.until_settled,
                interval: a.interval,
                timeout: a.timeout,
                json: a.conn.json,
                quiet,
                since: None,
            };
            return watch::run(&client, opts).await;
        }
    };
    let answer: Value = call.send(&AdminClient::new(conn.admin)).await?;
    if conn.json {
        print_json(&answer)
    } else {
        print!(
            "{}",
            render::render(call.show, answer, &TimeZone::system())?
        );
        Ok(())
    }
}

async fn status(a: StatusArgs) -> Result<(), CliError> {
    let client = AdminClient::new(a.conn.admin);
    let answer: Value = client
        .get(&with_query("/status", &[("package", a.id.clone())]))
        .await?;
    if a.conn.json {
        return print_json(&answer);
    }
    let rows: Vec<PackageStatus> = render::typed(answer)?;
    let tz = TimeZone::system();
    match &a.id {
        Some(id) if rows.is_empty() => println!(
            "package {id} is not targeted at any DP; target it with `freight distribute {id} --dp DP`"
        ),
        Some(_) => print!("{}", render::status_table(&rows, &tz)),
        None => {
            let pkgs: Vec<PackageInfo> = client.get("/packages").await?;
            print!("{}", render::status_and_summary(&rows, &pkgs, &tz));
        }
    }
    Ok(())
}

async fn messages(a: MessagesArgs) -> Result<(), CliError> {
    let client = AdminClient::new(a.conn.admin);
    let path = with_query(
        "/messages",
        &[
            ("package", a.package),
            ("since", a.since.map(|s| s.to_string())),
        ],
    );
    let answer: Value = client.get(&path).await?;
    if a.conn.json {
        return print_json(&answer);
    }
    let msgs: Vec<StatusMessage> = render::typed(answer)?;
    let tz = TimeZone::system();
    for m in &msgs {
        println!("{}", render::message_line(m, &tz));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    /// Just the admin commands, parsed as `freight` parses them.
    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: AdminCmd,
    }

    fn parse(args: &[&str]) -> AdminCmd {
        T::try_parse_from(std::iter::once("freight").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .cmd
    }

    /// The call `args` makes (dp add reads the identity "ID-TEXT" from any file).
    fn call(args: &[&str]) -> (Conn, Call) {
        match parse(args) {
            AdminCmd::Dp(a) => (a.conn, dp_call(a.cmd, |_| Ok("ID-TEXT".into())).unwrap()),
            AdminCmd::Dpgroup(a) => (a.conn, group_call(a.cmd).unwrap()),
            AdminCmd::Package(a) => (a.conn, package_call(a.cmd).unwrap()),
            AdminCmd::Distribute(a) => (
                a.conn,
                targets_call("distribute", &a.id, a.dps, a.groups).unwrap(),
            ),
            AdminCmd::Redistribute(a) => (
                a.conn,
                targets_call("redistribute", &a.id, vec![a.dp], vec![]).unwrap(),
            ),
            AdminCmd::Validate(a) => (
                a.conn,
                targets_call("validate", &a.id, a.dps, vec![]).unwrap(),
            ),
            _ => panic!("{args:?} is not a single call"),
        }
    }

    fn check(args: &[&str], method: Method, path: &str, body: Option<Value>) {
        let (_, c) = call(args);
        assert_eq!(
            (c.method, c.path.as_str(), c.body),
            (method, path, body),
            "{args:?}"
        );
    }

    #[test]
    fn dp_commands_map_to_their_calls() {
        check(
            &[
                "dp",
                "add",
                "dp1",
                "--address",
                "10.0.0.5:4433",
                "--identity",
                "/x.id",
            ],
            Method::POST,
            "/dps",
            Some(
                json!({"name": "dp1", "kind": "standard", "address": "10.0.0.5:4433",
                "http": null, "identity": "ID-TEXT", "sources": [], "throttle": null}),
            ),
        );
        check(
            &[
                "dp",
                "add",
                "br",
                "--address",
                "h:1",
                "--identity",
                "f",
                "--http",
                "h:80",
                "--pull",
                "--source",
                "dp1",
                "--source",
                "dp2,dp3",
                "--throttle",
                "closed",
            ],
            Method::POST,
            "/dps",
            Some(
                json!({"name": "br", "kind": "pull", "address": "h:1", "http": "h:80",
                "identity": "ID-TEXT", "sources": ["dp1", "dp2", "dp3"], "throttle": "closed"}),
            ),
        );
        check(&["dp", "list"], Method::GET, "/dps", None);
        check(&["dp", "show", "dp 1"], Method::GET, "/dps/dp%201", None);
        check(&["dp", "remove", "dp1"], Method::DELETE, "/dps/dp1", None);
        check(
            &["dp", "schedule", "dp1", "--throttle", "link 1Gbit/s"],
            Method::PUT,
            "/dps/dp1/schedule",
            Some(json!({"throttle": "link 1Gbit/s"})),
        );
        // --source needs --pull; --pull needs a source.
        let add = ["dp", "add", "a", "--address", "h:1", "--identity", "f"];
        let with = |more: &[&'static str]| [&add[..], more].concat();
        assert!(
            T::try_parse_from(std::iter::once("freight").chain(with(&["--source", "b"]))).is_err()
        );
        let AdminCmd::Dp(a) = parse(&with(&["--pull"])) else {
            panic!()
        };
        let e = dp_call(a.cmd, |_| Ok(String::new()))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "pull DP a needs a source; pass --source DP (best first)");
    }

    #[test]
    fn group_commands_map_to_their_calls() {
        check(
            &["dpgroup", "create", "east", "--dp", "a", "--dp", "b"],
            Method::POST,
            "/dpgroups",
            Some(json!({"name": "east", "members": ["a", "b"]})),
        );
        check(
            &["dpgroup", "add", "east", "c", "d"],
            Method::POST,
            "/dpgroups/east/members",
            Some(json!({"dps": ["c", "d"]})),
        );
        check(
            &["dpgroup", "remove", "east", "c"],
            Method::DELETE,
            "/dpgroups/east/members/c",
            None,
        );
        check(
            &["dpgroup", "delete", "east"],
            Method::DELETE,
            "/dpgroups/east",
            None,
        );
        check(&["dpgroup", "list"], Method::GET, "/dpgroups", None);
    }

    #[test]
    fn package_commands_map_to_their_calls() {
        check(
            &[
                "package",
                "create",
                "--name",
                "tools",
                "--source",
                "/srv/tools",
                "--priority",
                "high",
            ],
            Method::POST,
            "/packages",
            Some(json!({"name": "tools", "source": "/srv/tools", "priority": "high"})),
        );
        let (_, c) = call(&["package", "create", "--name", "t", "--source", "rel/dir"]);
        let want = std::env::current_dir().unwrap().join("rel/dir");
        assert_eq!(
            c.body,
            Some(json!({"name": "t", "source": want.to_str().unwrap(), "priority": null}))
        );
        check(
            &["package", "update", "PS100001"],
            Method::POST,
            "/packages/PS100001/update",
            None,
        );
        check(&["package", "list"], Method::GET, "/packages", None);
        check(
            &["package", "show", "PS100001"],
            Method::GET,
            "/packages/PS100001",
            None,
        );
        check(
            &["package", "remove", "PS100001"],
            Method::DELETE,
            "/packages/PS100001",
            None,
        );
        check(
            &["package", "remove", "PS100001", "--dp", "dp1"],
            Method::DELETE,
            "/packages/PS100001?dp=dp1",
            None,
        );
    }

    #[test]
    fn targeting_commands_map_to_their_calls() {
        check(
            &[
                "distribute",
                "PS100001",
                "--dp",
                "a",
                "--group",
                "east,west",
            ],
            Method::POST,
            "/packages/PS100001/distribute",
            Some(json!({"dps": ["a"], "groups": ["east", "west"]})),
        );
        assert!(T::try_parse_from(["freight", "distribute", "PS100001"]).is_err());
        check(
            &["redistribute", "PS100001", "--dp", "a"],
            Method::POST,
            "/packages/PS100001/redistribute",
            Some(json!({"dps": ["a"], "groups": []})),
        );
        assert!(T::try_parse_from(["freight", "redistribute", "PS100001"]).is_err());
        check(
            &["validate", "PS100001"],
            Method::POST,
            "/packages/PS100001/validate",
            Some(json!({"dps": [], "groups": []})),
        );
    }

    #[test]
    fn admin_and_json_are_accepted_anywhere() {
        let (conn, _) = call(&["dp", "list"]);
        assert!(!conn.json);
        let (conn, _) = call(&["dp", "--admin", "/s", "list", "--json"]);
        assert_eq!((conn.admin, conn.json), (PathBuf::from("/s"), true));
        let (conn, _) = call(&["distribute", "P", "--dp", "a", "--admin", "/t"]);
        assert_eq!(conn.admin, PathBuf::from("/t"));
        let AdminCmd::Watch(w) = parse(&["watch", "P", "--until-settled", "--interval", "0.1"])
        else {
            panic!()
        };
        assert_eq!(w.interval, Duration::from_millis(100));
        assert!(T::try_parse_from(["freight", "watch", "--timeout", "5"]).is_err());
    }
}
